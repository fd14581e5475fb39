"""BPF tier: the XDP programs run through BPF_PROG_TEST_RUN (root, bcc)."""
