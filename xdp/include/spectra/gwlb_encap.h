/* gwlb_encap.h - pure builder of the outer IPv4/UDP header a reply to the GWLB carries
 * (RFC 8926 section 3.3; AWS GWLB contract in DESIGN.md section 2: the stored GENEVE
 * header byte for byte, outer addresses swapped, the GWLB's source port kept,
 * destination port 6081).  Used by tc_gwlb_encap (gwlb.bpf.c) and by the fast path's
 * GWLB return in xdp_gateway, so both put the same bytes on the wire.
 */
#ifndef SPECTRA_GWLB_ENCAP_H
#define SPECTRA_GWLB_ENCAP_H

#include <linux/in.h>
#include "csum.h"
#include "gwlb_types.h"

#define OUTER_IPV4_UDP_LEN (sizeof(struct iphdr) + sizeof(struct udphdr))

/* Outer IPv4 + UDP in front of the GENEVE header. */
struct outer_v4_udp {
	struct iphdr ip;
	struct udphdr udp;
} __attribute__((packed));


/* Fill `o` (zeroed by the caller) for `hdr_len` bytes of GENEVE header from `v` and an
 * inner packet of `inner_len` bytes: ID 0, DF clear, TTL 64, UDP checksum 0. */
static __always_inline void gwlb_outer_v4(struct outer_v4_udp *o, const struct gwlb_value *v,
					  __u32 hdr_len, __u32 inner_len)
{
	o->ip.version = 4;
	o->ip.ihl = 5;
	o->ip.ttl = 64;
	o->ip.protocol = IPPROTO_UDP;
	o->ip.tot_len = bpf_htons(OUTER_IPV4_UDP_LEN + hdr_len + inner_len);
	o->ip.saddr = v->be_local_addr;
	o->ip.daddr = v->be_gwlb_addr;
	o->ip.check = ~ipv4_hdr_sum(&o->ip) & 0xffff; /* check is 0 while summing */
	o->udp.source = v->be_sport;
	o->udp.dest = bpf_htons(GENEVE_UDP_PORT);
	o->udp.len = bpf_htons(sizeof(struct udphdr) + hdr_len + inner_len);
	o->udp.check = 0; /* allowed over IPv4 (RFC 8926 3.3) */
}

#endif /* SPECTRA_GWLB_ENCAP_H */
