"""Two rooms: :mod:`perf.lab`, the network-namespace lab (the development environment
and the benchmarks' testbed), and the rest of ``perf``, the benchmark suite
(``python -m perf``, the suites registered in :mod:`perf.suites`)."""
