/* gwlb_maps.h - every map of the GWLB programs, its layout and purpose.
 *
 * geneve/maps.py mirrors each struct with ctypes (tests/bpf/geneve/test_layout.py
 * checks sizes); the flow-state structs are in spectra/gwlb_types.h (xdp/include).
 * Tunables are `#ifndef` defaults; geneve.GwlbBuild passes them as -D flags.
 */
#ifndef SPECTRA_GWLB_MAPS_H
#define SPECTRA_GWLB_MAPS_H

#include "spectra/gwlb_types.h"
#include "gwlb_reasons.h"

/* Inner flows with a remembered header.  ~300 B per entry: 65536 entries ~ 20 MB. */
#ifndef GWLB_FLOW_TABLE_SIZE
#define GWLB_FLOW_TABLE_SIZE 65536
#endif

/* Options walked per packet; a header with more is dropped as malformed.  GWLB sends
 * 3.  The verifier walks every iteration with every option outcome: 16 exceeds its
 * budget, 8 leaves room for extra TLVs (geneve.dataplane.MAX_OPTIONS mirrors it). */
#ifndef GWLB_MAX_OPTS
#define GWLB_MAX_OPTS 8
#endif

/* Bytes tc_gwlb_decap makes linear before parsing: Ethernet + IPv4 + UDP + the
 * largest GENEVE header (260) + room for the inner IPv6 + L4 ports (>= 14+20+8+260+44). */
#ifndef GWLB_TC_PULL_LEN
#define GWLB_TC_PULL_LEN 384
#endif

struct gwlb_counter {
	__u64 packets;
	__u64 bytes;
};

BPF_TABLE("lru_hash", struct gwlb_key, struct gwlb_value, gwlb_flows, GWLB_FLOW_TABLE_SIZE);
/* Per-reason packets/bytes (index: enum gwlb_reason). */
BPF_PERCPU_ARRAY(gwlb_stats, struct gwlb_counter, GWLB_STAT__MAX);
/* gwlb.allowed_sources: the GWLB endpoint subnets GENEVE may come from, enforced
 * while gwlb_config.flags has GWLB_F_SOURCES (an empty list allows any source). */
#ifndef GWLB_MAX_SOURCES
#define GWLB_MAX_SOURCES 64
#endif
struct gwlb_source_key {
	__u32 prefixlen;
	__be32 be_addr;
};
BPF_LPM_TRIE(gwlb_sources, struct gwlb_source_key, __u8, GWLB_MAX_SOURCES);

/* Slot 0: the instance's struct gwlb_config, written by geneve.Gwlb. */
BPF_ARRAY(gwlb_config, struct gwlb_config, 1);
/* Slot 0: xdp_gateway of the instance's fast path (geneve.Gwlb.link_fastpath), tail
 * called with the decapsulated inner IPv4 packet; empty = the kernel path only. */
BPF_PROG_ARRAY(gwlb_fastpath, 1);
/* Per-CPU scratch to build a gwlb_value (too large for the BPF stack). */
BPF_PERCPU_ARRAY(gwlb_scratch, struct gwlb_value, 1);

#endif /* SPECTRA_GWLB_MAPS_H */
