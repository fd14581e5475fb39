/* reasons.h - every verdict of xdp_gateway, one named reason each.
 *
 * The value is the index into the per-CPU `stats` map.  xdp/reasons.py mirrors this
 * enum exactly (tests/bpf/test_reasons.py parses this file), so append new reasons
 * before STAT__MAX and never renumber.
 */
#ifndef SPECTRA_REASONS_H
#define SPECTRA_REASONS_H

enum stat_reason {
	STAT_PASS_NOT_IPV4 = 0,     /* ARP, IPv6, anything that is not IPv4 */
	STAT_PASS_TRUNCATED = 1,    /* a header runs past the end of the frame */
	STAT_PASS_MALFORMED = 2,    /* IPv4 version/ihl/tot_len inconsistent */
	STAT_PASS_IP_OPTIONS = 3,   /* ihl != 5: the kernel handles options */
	STAT_PASS_FRAGMENT = 4,     /* MF set or fragment offset != 0 */
	STAT_PASS_TTL = 5,          /* TTL <= 1: the kernel sends time exceeded */
	STAT_PASS_PROTO = 6,        /* L4 protocol other than TCP, UDP, ICMP */
	STAT_PASS_ICMP_ERROR = 7,   /* ICMP error quoting a header: conntrack translates it */
	STAT_PASS_ICMP_OTHER = 8,   /* ICMP that is neither echo nor error */
	STAT_PASS_VLAN = 9,         /* 802.1Q/802.1ad tagged: deny list only, no fast path */
	STAT_PASS_NO_FLOW = 10,     /* flow table miss: kernel slow path */
	STAT_PASS_FLOW_CLOSING = 11, /* flow already handed back to the kernel */
	STAT_PASS_TCP_FIN_RST = 12, /* FIN/RST on an offloaded flow: marks it closing */
	STAT_PASS_TCP_SYN = 13,     /* SYN on an offloaded tuple: the kernel decides reuse */
	STAT_DROP_DENY = 14,        /* stateless deny list hit */
	STAT_REDIRECT = 15,         /* fast path: translated and redirected */
	STAT_REDIRECT_ERROR = 16,   /* egress ifindex missing from tx_ports: passed untouched */
	STAT_PASS_IP_CSUM = 17,     /* bad IPv4 header checksum on a flow hit: the kernel drops it */
	STAT_PASS_GWLB_NO_HEADER = 18, /* GWLB return without a usable stored header: untouched */
	STAT_REDIRECT_GWLB = 19,    /* GWLB return: reverse NAT, re-encapsulated, redirected */
	STAT_DROP_GWLB_ENCAP = 20,  /* GWLB return: no room for the outer headers after NAT */
	STAT__MAX = 21,
};

#endif /* SPECTRA_REASONS_H */
