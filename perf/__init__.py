"""The network-namespace lab and the performance suite."""
