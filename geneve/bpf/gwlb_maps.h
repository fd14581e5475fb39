/* gwlb_maps.h - every map of the GWLB programs, its layout and purpose.
 *
 * geneve/maps.py mirrors each struct with ctypes (tests/bpf/geneve/test_layout.py
 * checks sizes); geneve/flowkey.py models struct gwlb_key byte for byte.  Tunables
 * are `#ifndef` defaults; geneve.GwlbBuild passes them as -D flags.
 */
#ifndef SPECTRA_GWLB_MAPS_H
#define SPECTRA_GWLB_MAPS_H

#include "geneve.h"
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

/* Symmetric inner 5-tuple (geneve/flowkey.py): the (address, port) endpoints ordered
 * lo < hi by (address bytes, port); dir = 1 when the packet was sent by `hi`.  IPv4
 * addresses use the first 4 bytes of the 16.  ICMP echo: identifier in both ports. */
struct gwlb_key {
	__u8 family;       /* 4 or 6 */
	__u8 proto;
	__u8 dir;          /* sender of the header-carrying packet: 0 = lo, 1 = hi */
	__u8 pad;          /* always zero: part of the hashed key */
	__be16 be_port_lo;
	__be16 be_port_hi;
	__u8 addr_lo[16];
	__u8 addr_hi[16];
};

/* The byte-exact GENEVE header and the outer fields a reply needs. */
struct gwlb_value {
	__u64 last_seen_ns;  /* bpf_ktime_get_ns() of the last packet that carried it */
	__be32 be_gwlb_addr; /* outer source as received: the reply's destination */
	__be32 be_local_addr;/* outer destination as received: the reply's source */
	__be16 be_sport;     /* GWLB's UDP source port: the reply keeps it */
	__u16 hdr_len;       /* bytes of hdr in use, 8..GENEVE_MAX_HDR */
	__u32 pad;
	__u8 hdr[GENEVE_MAX_HDR];
};

#define GWLB_F_REFLECT (1U << 0) /* one-arm: XDP_TX every valid packet back to GWLB */

struct gwlb_config {
	__u64 idle_timeout_ns; /* a stored header older than this is not used (0 = 350 s) */
	__be32 be_local_addr;  /* our address on the GWLB interface: tc passes our own packets */
	__u32 flags;           /* GWLB_F_* */
};

struct gwlb_counter {
	__u64 packets;
	__u64 bytes;
};

BPF_TABLE("lru_hash", struct gwlb_key, struct gwlb_value, gwlb_flows, GWLB_FLOW_TABLE_SIZE);
/* Per-reason packets/bytes (index: enum gwlb_reason). */
BPF_PERCPU_ARRAY(gwlb_stats, struct gwlb_counter, GWLB_STAT__MAX);
/* Slot 0: the instance's struct gwlb_config, written by geneve.Gwlb. */
BPF_ARRAY(gwlb_config, struct gwlb_config, 1);
/* Per-CPU scratch to build a gwlb_value (too large for the BPF stack). */
BPF_PERCPU_ARRAY(gwlb_scratch, struct gwlb_value, 1);

#endif /* SPECTRA_GWLB_MAPS_H */
