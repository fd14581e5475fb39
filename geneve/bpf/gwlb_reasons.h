/* gwlb_reasons.h - every verdict of the GWLB programs (xdp_gwlb / tc_gwlb_decap,
 * tc_gwlb_encap), one
 * named reason each (the decap reasons marked xdp are counted by tc_gwlb_decap too).  The value is the index into the per-CPU `gwlb_stats` map;
 * geneve/reasons.py mirrors this enum (tests/unit/geneve/test_reasons.py parses this
 * file), so append new reasons before GWLB_STAT__MAX and never renumber.
 */
#ifndef SPECTRA_GWLB_REASONS_H
#define SPECTRA_GWLB_REASONS_H

enum gwlb_reason {
	GWLB_PASS_NOT_GENEVE = 0,      /* xdp: ARP, health checks, anything not UDP/6081 */
	GWLB_DECAP = 1,                /* xdp: inner IPv4 decapsulated to the kernel path */
	GWLB_DECAP_IPV6 = 2,           /* xdp: inner IPv6 decapsulated to the kernel path */
	GWLB_REFLECT = 3,              /* xdp: one-arm reflect, outer swapped, XDP_TX */
	GWLB_DROP_TRUNCATED = 4,       /* xdp: GENEVE header, options or inner header cut */
	GWLB_DROP_BAD_VERSION = 5,     /* xdp: GENEVE version != 0 */
	GWLB_DROP_MALFORMED = 6,       /* xdp: option past Opt Len, wrong AWS option size */
	GWLB_DROP_MISSING_OPTION = 7,  /* xdp: one of the class-0x0108 types 1/2/3 absent */
	GWLB_DROP_CRITICAL_OPTION = 8, /* xdp: critical option not understood (RFC 8926 3.5) */
	GWLB_DROP_OAM = 9,             /* xdp: O bit (control message), never forwarded */
	GWLB_DROP_BAD_PROTO = 10,      /* xdp: inner protocol neither IPv4 nor IPv6 */
	GWLB_DROP_OUTER_FRAGMENT = 11, /* xdp: fragmented outer UDP/6081 (GWLB never does) */
	GWLB_STORE_ERROR = 12,         /* xdp: flow-state update failed; packet still passed */
	GWLB_ENCAP = 13,               /* tc: re-encapsulated with the stored header */
	GWLB_ENCAP_PASS_LOCAL = 14,    /* tc: appliance's own packet (health check reply) */
	GWLB_ENCAP_PASS_OTHER = 15,    /* tc: not IP, or already GENEVE */
	GWLB_DROP_NO_FLOW = 16,        /* tc: no stored header: never originate into GWLB */
	GWLB_DROP_FLOW_EXPIRED = 17,   /* tc: stored header idle longer than the timeout */
	GWLB_DROP_ENCAP_ERROR = 18,    /* tc: bpf_skb_adjust_room/store failed */
	GWLB_DROP_DECAP_ERROR = 19,    /* tc ingress: bpf_skb_adjust_room/store failed */
	GWLB_DROP_SOURCE = 20,         /* xdp: outer source not in gwlb.allowed_sources */
	GWLB_STAT__MAX = 21,
};

#endif /* SPECTRA_GWLB_REASONS_H */
