/* gwlb_types.h - the GWLB flow state layout and its pure key builder, shared by the
 * GWLB programs (gwlb.bpf.c) and the fast path's GWLB return (xdp/bpf/spectra.bpf.c,
 * which reads these maps through its gwlb_*_link maps).
 *
 * geneve/maps.py mirrors each struct with ctypes; geneve/flowkey.py models struct
 * gwlb_key byte for byte.  No maps here: including this file declares none.
 */
#ifndef SPECTRA_GWLB_TYPES_H
#define SPECTRA_GWLB_TYPES_H

#include "geneve.h"

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
#define GWLB_F_SOURCES (1U << 1) /* GENEVE only from outer sources in gwlb_sources */
#define GWLB_DEFAULT_IDLE_NS (350ULL * 1000000000ULL)

struct gwlb_config {
	__u64 idle_timeout_ns; /* a stored header older than this is not used (0 = 350 s) */
	__be32 be_local_addr;  /* our address on the GWLB interface: tc passes our own packets */
	__u32 flags;           /* GWLB_F_* */
};

static __always_inline __u64 gwlb_idle_ns(const struct gwlb_config *cfg)
{
	return cfg->idle_timeout_ns ? cfg->idle_timeout_ns : GWLB_DEFAULT_IDLE_NS;
}

/* The stored header `v` idled longer than the configured timeout by `now_ns`
 * (bpf_ktime_get_ns()).  Another CPU may have refreshed last_seen after this one read
 * the clock: a last_seen newer than `now_ns` is fresh, not an unsigned wrap. */
static __always_inline int gwlb_header_expired(const struct gwlb_config *cfg,
					       const struct gwlb_value *v, __u64 now_ns)
{
	__u64 last_ns = v->last_seen_ns;

	return now_ns > last_ns && now_ns - last_ns > gwlb_idle_ns(cfg);
}

/* `key` holds the sender's address in addr_lo and the receiver's in addr_hi: order the
 * endpoints by (address bytes, port) as geneve/flowkey.py does, setting dir. */
static __always_inline void gwlb_key_order(struct gwlb_key *key, __be16 be_sport,
					   __be16 be_dport)
{
	__u32 *lo = (__u32 *)key->addr_lo, *hi = (__u32 *)key->addr_hi, tmp;
	int i, cmp = 0;

	key->pad = 0;
	key->be_port_lo = be_sport;
	key->be_port_hi = be_dport;
	key->dir = 0;
#pragma unroll
	for (i = 0; i < 4; i++) {
		if (!cmp && lo[i] != hi[i])
			cmp = bpf_ntohl(lo[i]) < bpf_ntohl(hi[i]) ? -1 : 1;
	}
	if (!cmp && be_sport != be_dport)
		cmp = bpf_ntohs(be_sport) < bpf_ntohs(be_dport) ? -1 : 1;
	if (cmp > 0) {
		key->dir = 1;
		key->be_port_lo = be_dport;
		key->be_port_hi = be_sport;
#pragma unroll
		for (i = 0; i < 4; i++) {
			tmp = lo[i];
			lo[i] = hi[i];
			hi[i] = tmp;
		}
	}
}

/* The key of an IPv4 packet sender -> receiver; `key` must be zeroed by the caller.
 * ICMP echo: pass the identifier as both ports. */
static __always_inline void gwlb_key_v4(struct gwlb_key *key, __u8 proto, __be32 be_saddr,
					__be32 be_daddr, __be16 be_sport, __be16 be_dport)
{
	key->family = 4;
	key->proto = proto;
	__builtin_memcpy(key->addr_lo, &be_saddr, 4);
	__builtin_memcpy(key->addr_hi, &be_daddr, 4);
	gwlb_key_order(key, be_sport, be_dport);
}

#endif /* SPECTRA_GWLB_TYPES_H */
