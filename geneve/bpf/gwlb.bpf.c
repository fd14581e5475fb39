/* gwlb.bpf.c - GENEVE decap / re-encap for AWS Gateway Load Balancer mode
 * (RFC 8926; AWS GWLB contract in DESIGN.md section 2).
 *
 * xdp_gwlb, on the GWLB-facing interface:
 *   UDP/6081 from the GWLB -> validate (version, Opt Len, options: all three
 *   class-0x0108 TLVs, no unknown critical option), remember the byte-exact GENEVE
 *   header under the inner flow's symmetric key, then either
 *     - replace the outer Ethernet/IPv4/UDP/GENEVE by an Ethernet header and XDP_PASS
 *       the inner packet to the kernel path (two-arm NAT, one-arm via the kernel), or
 *     - with GWLB_F_REFLECT, swap the outer addresses and XDP_TX (one-arm reflect);
 *   anything else -> XDP_PASS untouched (ARP, health checks).
 *   A decapsulated inner IPv4 packet is then tail called into the instance's fast
 *   path (gwlb_fastpath slot 0: xdp_gateway, linked by geneve.Gwlb.link_fastpath), so
 *   an offloaded two-arm flow is NATed and redirected without the kernel; with no
 *   program linked the tail call falls through to XDP_PASS.
 * tc_gwlb_decap, at clsact ingress: the same classification and stored header, the
 *   outer headers popped with bpf_skb_adjust_room; used where XDP cannot attach.
 * tc_gwlb_encap, at clsact egress of the same interface:
 *   an inner packet the kernel routes back toward the GWLB -> look up the stored
 *   header (same direction first, then the opposite) and prepend outer IPv4/UDP
 *   (addresses swapped, source port kept, destination 6081) and the identical header;
 *   no header -> drop (the appliance never originates flows into the GWLB), except
 *   the appliance's own packets (IPv4 source = gwlb_config.be_local_addr; IPv6
 *   link-local source or multicast destination).
 * One exit path per program; every verdict counted under a named reason.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <linux/in.h>
#include <linux/ipv6.h>

#include "spectra/compiler.h"
#include "spectra/parsing.h"
#include "spectra/gwlb_encap.h"
#include "gwlb_maps.h"

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif
/* uapi bpf.h (Linux >= 6.3) values; bcc's bundled bpf.h predates them (enum members,
 * so no #ifndef on the real names). */
#define GWLB_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define GWLB_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)

static __always_inline void count(__u32 reason, __u64 bytes)
{
	struct gwlb_counter *cnt = gwlb_stats.lookup(&reason);

	if (cnt) {
		cnt->packets += 1;
		cnt->bytes += bytes;
	}
}

/* Fill the symmetric key of the inner packet at `l3` (an IPv4 or IPv6 header).
 * Returns 0, or -1 when the inner IP header does not fit. */
static __always_inline int inner_key(void *l3, void *data_end, int is_v6, struct gwlb_key *key)
{
	__be16 be_sport = 0, be_dport = 0;
	int proto_ports = 1;
	void *l4;
	__u8 proto;
	__u16 *w;

	if (is_v6) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		proto = ip6->nexthdr;
		__builtin_memcpy(key->addr_lo, &ip6->saddr, 16);
		__builtin_memcpy(key->addr_hi, &ip6->daddr, 16);
		l4 = ip6 + 1;
		key->family = 6;
	} else {
		struct iphdr *iph = l3;

		if ((void *)(iph + 1) > data_end || iph->ihl < 5)
			return -1;
		proto = iph->protocol;
		__builtin_memcpy(key->addr_lo, &iph->saddr, 4);
		__builtin_memcpy(key->addr_hi, &iph->daddr, 4);
		l4 = l3 + iph->ihl * 4;
		if (bpf_ntohs(iph->frag_off) & IP_OFFSET)
			proto_ports = 0; /* non-first fragment: no ports */
		key->family = 4;
	}
	if (!proto_ports) {
		/* no ports */
	} else if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		w = l4;
		if ((void *)(w + 2) <= data_end) {
			be_sport = w[0];
			be_dport = w[1];
		}
	} else if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		__u8 *icmp = l4;

		if ((void *)(icmp + 8) <= data_end &&
		    ((proto == IPPROTO_ICMP && (icmp[0] == 8 || icmp[0] == 0)) ||
		     (proto == IPPROTO_ICMPV6 && (icmp[0] == 128 || icmp[0] == 129)))) {
			be_sport = *(__be16 *)(icmp + 4);
			be_dport = be_sport;
		}
	}
	key->proto = proto;
	gwlb_key_order(key, be_sport, be_dport);
	return 0;
}

/* Remember `hdr_len` bytes of GENEVE header at `gh` (offset `off` in the frame) for
 * `key`; unchanged headers only refresh last_seen.  `ctx` is an xdp_md (`is_xdp`) or
 * an __sk_buff: the header is copied with the matching load_bytes helper (constant
 * after inlining, so each program keeps one).  Returns 0 or -1. */
static __always_inline int store_header(void *ctx, int is_xdp, void *data_end,
					struct gwlb_key *key, void *gh, __u32 off,
					__u32 hdr_len, struct iphdr *iph, struct udphdr *uh)
{
	struct gwlb_value *v, *s;
	__u32 zero = 0, i, same;
	__u64 now = bpf_ktime_get_ns(), len;

	v = gwlb_flows.lookup(key);
	if (v && v->hdr_len == hdr_len && v->be_gwlb_addr == iph->saddr &&
	    v->be_local_addr == iph->daddr && v->be_sport == uh->source) {
		same = 1;
		for (i = 0; i < GENEVE_MAX_HDR / 4; i++) {
			__u32 *pw = gh + i * 4;

			if (i * 4 >= hdr_len)
				break;
			if ((void *)(pw + 1) > data_end) {
				same = 0;
				break;
			}
			if (*pw != *(__u32 *)&v->hdr[i * 4]) {
				same = 0;
				break;
			}
		}
		if (same) {
			v->last_seen_ns = now;
			return 0;
		}
	}
	s = gwlb_scratch.lookup(&zero);
	if (!s)
		return -1;
	len = hdr_len;
	/* Two checks on the same register (see tc_gwlb_encap): the verifier must see
	 * both bounds of `len` at the helper call. */
	barrier_var(len);
	if (len > GENEVE_MAX_HDR)
		return -1;
	barrier_var(len);
	if (len < GENEVE_BASE_LEN)
		return -1;
	if (is_xdp ? bpf_xdp_load_bytes(ctx, off, s->hdr, len)
		   : bpf_skb_load_bytes(ctx, off, s->hdr, len))
		return -1;
	s->last_seen_ns = now;
	s->be_gwlb_addr = iph->saddr;
	s->be_local_addr = iph->daddr;
	s->be_sport = uh->source;
	s->hdr_len = hdr_len;
	s->pad = 0;
	return gwlb_flows.update(key, s) ? -1 : 0;
}

/* What gwlb_classify learns about a valid GWLB packet. */
struct gwlb_pkt {
	struct iphdr *iph;
	struct udphdr *uh;
	struct genevehdr *gh;
	void *inner;
	__u32 hdr_len;        /* GENEVE header incl. options */
	__be16 be_inner_proto;
	int is_v6;
	struct gwlb_key key;
};

/* With GWLB_F_SOURCES, GENEVE is taken only from the configured GWLB subnets. */
static __always_inline int gwlb_source_allowed(__be32 be_saddr)
{
	struct gwlb_source_key key = { .prefixlen = 32, .be_addr = be_saddr };
	struct gwlb_config *cfg;
	__u32 zero = 0;

	cfg = gwlb_config.lookup(&zero);
	if (!cfg || !(cfg->flags & GWLB_F_SOURCES))
		return 1;
	return gwlb_sources.lookup(&key) != NULL;
}

/* Classify the Ethernet frame at [data, data_end) the same way at XDP and at tc:
 * GWLB_PASS_NOT_GENEVE (not UDP/6081: leave it alone), a GWLB_DROP_* reason, or
 * GWLB_DECAP / GWLB_DECAP_IPV6 with `p` filled in. */
static __always_inline __u32 gwlb_classify(void *data, void *data_end, struct gwlb_pkt *p)
{
	struct hdr_cursor nh = { .pos = data };
	struct ethhdr *eth;
	struct iphdr *iph;
	struct udphdr *uh;
	struct genevehdr *gh;
	struct geneve_opt *opt;
	__u32 opt_len, off, olen, i, have = 0;
	void *inner;

	if (parse_ethhdr(&nh, data_end, &eth) != bpf_htons(ETH_P_IP))
		return GWLB_PASS_NOT_GENEVE;
	if (parse_iphdr(&nh, data_end, &iph) != IPPROTO_UDP)
		return GWLB_PASS_NOT_GENEVE;
	if (bpf_ntohs(iph->frag_off) & IP_OFFSET)
		return GWLB_PASS_NOT_GENEVE; /* a non-first fragment: no UDP header */
	if (parse_udphdr(&nh, data_end, &uh) < 0 || uh->dest != bpf_htons(GENEVE_UDP_PORT))
		return GWLB_PASS_NOT_GENEVE;
	if (bpf_ntohs(iph->frag_off) & IP_MF)
		return GWLB_DROP_OUTER_FRAGMENT;
	if (!gwlb_source_allowed(iph->saddr))
		return GWLB_DROP_SOURCE;

	gh = nh.pos;
	if ((void *)(gh + 1) > data_end)
		return GWLB_DROP_TRUNCATED;
	if (gh->ver_optlen >> 6)
		return GWLB_DROP_BAD_VERSION;
	opt_len = (gh->ver_optlen & 0x3f) * 4;
	inner = (void *)(gh + 1) + opt_len;
	if (inner > data_end)
		return GWLB_DROP_TRUNCATED;
	if (gh->flags & GENEVE_F_OAM)
		return GWLB_DROP_OAM;
	if (gh->be_proto != bpf_htons(GENEVE_PROTO_IPV4) &&
	    gh->be_proto != bpf_htons(GENEVE_PROTO_IPV6))
		return GWLB_DROP_BAD_PROTO;

	/* Walk the options (GWLB sends 3; more than GWLB_MAX_OPTS is malformed here). */
	off = 0;
	for (i = 0; i < GWLB_MAX_OPTS; i++) {
		if (off >= opt_len)
			break;
		opt = (void *)(gh + 1) + off;
		if ((void *)(opt + 1) > data_end || off + sizeof(*opt) > opt_len)
			return GWLB_DROP_MALFORMED;
		olen = (opt->length & 0x1f) * 4;
		if (off + sizeof(*opt) + olen > opt_len)
			return GWLB_DROP_MALFORMED;
		if (opt->be_class == bpf_htons(AWS_OPT_CLASS) &&
		    opt->type >= AWS_OPT_ENDPOINT_ID && opt->type <= AWS_OPT_FLOW_COOKIE) {
			if (olen != (opt->type == AWS_OPT_FLOW_COOKIE ? AWS_OPT_FLOW_COOKIE_LEN
								     : AWS_OPT_ENDPOINT_ID_LEN))
				return GWLB_DROP_MALFORMED;
			have |= 1U << opt->type;
		} else if (opt->type & GENEVE_CRITICAL_TYPE) {
			return GWLB_DROP_CRITICAL_OPTION;
		}
		off += sizeof(*opt) + olen;
	}
	if (off < opt_len)
		return GWLB_DROP_MALFORMED; /* more options than GWLB_MAX_OPTS */
	if (have != AWS_OPT_ALL)
		return GWLB_DROP_MISSING_OPTION;

	p->is_v6 = gh->be_proto == bpf_htons(GENEVE_PROTO_IPV6);
	if (inner_key(inner, data_end, p->is_v6, &p->key) < 0)
		return GWLB_DROP_TRUNCATED;
	p->iph = iph;
	p->uh = uh;
	p->gh = gh;
	p->inner = inner;
	p->hdr_len = sizeof(*gh) + opt_len;
	p->be_inner_proto = gh->be_proto;
	return p->is_v6 ? GWLB_DECAP_IPV6 : GWLB_DECAP;
}

static __always_inline int gwlb_reflect_enabled(void)
{
	__u32 zero = 0;
	struct gwlb_config *cfg = gwlb_config.lookup(&zero);

	return cfg && (cfg->flags & GWLB_F_REFLECT);
}

/* One-arm reflect: outer MACs and IPv4 addresses swapped in place.  A swap keeps the
 * IPv4 and UDP checksums (same words, same sums). */
static __always_inline void swap_outer(struct ethhdr *eth, struct iphdr *iph)
{
	__u8 mac[ETH_ALEN];
	__be32 be_addr;

	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	be_addr = iph->saddr;
	iph->saddr = iph->daddr;
	iph->daddr = be_addr;
}

int xdp_gwlb(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	__u64 pkt_len = data_end - data;
	struct gwlb_pkt p = {};
	struct ethhdr *eth = data;
	__u8 mac_dst[ETH_ALEN], mac_src[ETH_ALEN];
	__u32 reason;
	int action = XDP_PASS, delta;

	reason = gwlb_classify(data, data_end, &p);
	if (reason == GWLB_PASS_NOT_GENEVE)
		goto out;
	if (reason != GWLB_DECAP && reason != GWLB_DECAP_IPV6) {
		action = XDP_DROP;
		goto out;
	}
	if ((void *)(eth + 1) > data_end) { /* checked by gwlb_classify; for the verifier */
		action = XDP_DROP;
		reason = GWLB_DROP_TRUNCATED;
		goto out;
	}
	if (gwlb_reflect_enabled()) {
		swap_outer(eth, p.iph);
		action = XDP_TX;
		reason = GWLB_REFLECT;
		goto out;
	}
	if (store_header(ctx, 1, data_end, &p.key, p.gh, (void *)p.gh - data, p.hdr_len, p.iph,
			 p.uh) < 0)
		count(GWLB_STORE_ERROR, pkt_len); /* reply will count GWLB_DROP_NO_FLOW */

	/* Strip everything before the inner packet but room for a new Ethernet header. */
	__builtin_memcpy(mac_dst, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(mac_src, eth->h_source, ETH_ALEN);
	delta = (int)(p.inner - data) - (int)sizeof(struct ethhdr);
	if (bpf_xdp_adjust_head(ctx, delta)) {
		action = XDP_DROP;
		reason = GWLB_DROP_TRUNCATED;
		goto out;
	}
	/* adjust_head invalidated every packet pointer: re-read data/data_end. */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end) {
		action = XDP_DROP;
		reason = GWLB_DROP_TRUNCATED;
		goto out;
	}
	__builtin_memcpy(eth->h_dest, mac_dst, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac_src, ETH_ALEN);
	eth->h_proto = p.be_inner_proto;

out:
	count(reason, pkt_len);
	if (reason == GWLB_DECAP)
		gwlb_fastpath.call(ctx, 0); /* returns only when no fast path is linked */
	return action;
}

/* tc_gwlb_decap: xdp_gwlb at clsact ingress, for interfaces where XDP cannot attach
 * (MTU above the driver's native-XDP limit, frames needing xdp.frags) or when the
 * configuration forces tc.  Same classification, same stored header, same counters;
 * the outer IPv4/UDP/GENEVE is popped with bpf_skb_adjust_room, which also sets
 * skb->protocol for an inner IPv6 packet. */
int tc_gwlb_decap(struct __sk_buff *skb)
{
	void *data_end, *data;
	__u64 pkt_len = skb->len;
	struct gwlb_pkt p = {};
	struct ethhdr *eth;
	__u32 reason, pull;
	__u64 flags;
	int action = TC_ACT_OK;
	__s32 shrink;

	/* Direct access covers the linear part only: make the headers linear. */
	pull = skb->len < GWLB_TC_PULL_LEN ? skb->len : GWLB_TC_PULL_LEN;
	bpf_skb_pull_data(skb, pull);
	/* pull_data invalidated every packet pointer: read data/data_end now. */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;

	reason = gwlb_classify(data, data_end, &p);
	if (reason == GWLB_PASS_NOT_GENEVE)
		goto out;
	if (reason != GWLB_DECAP && reason != GWLB_DECAP_IPV6) {
		action = TC_ACT_SHOT;
		goto out;
	}
	if ((void *)(eth + 1) > data_end) { /* checked by gwlb_classify; for the verifier */
		action = TC_ACT_SHOT;
		reason = GWLB_DROP_TRUNCATED;
		goto out;
	}
	if (gwlb_reflect_enabled()) {
		swap_outer(eth, p.iph);
		action = bpf_redirect(skb->ifindex, 0);
		reason = GWLB_REFLECT;
		goto out;
	}
	if (store_header(skb, 0, data_end, &p.key, p.gh, (void *)p.gh - data, p.hdr_len, p.iph,
			 p.uh) < 0)
		count(GWLB_STORE_ERROR, pkt_len);

	shrink = (__s32)(p.inner - data) - (__s32)sizeof(struct ethhdr);
	flags = p.is_v6 ? GWLB_ADJ_ROOM_DECAP_L3_IPV6 : GWLB_ADJ_ROOM_DECAP_L3_IPV4;
	if (bpf_skb_adjust_room(skb, -shrink, BPF_ADJ_ROOM_MAC, flags) ||
	    bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &p.be_inner_proto, 2, 0)) {
		action = TC_ACT_SHOT;
		reason = GWLB_DROP_DECAP_ERROR;
		goto out;
	}

out:
	count(reason, pkt_len);
	return action;
}

int tc_gwlb_encap(struct __sk_buff *skb)
{
	void *data_end = (void *)(long)skb->data_end;
	void *data = (void *)(long)skb->data;
	__u64 pkt_len = skb->len;
	struct hdr_cursor nh = { .pos = data };
	__u32 reason = GWLB_ENCAP_PASS_OTHER, zero = 0, inner_len, flags;
	__u64 hdr_len; /* 64-bit: a 32-bit copy would lose the verifier's bounds */
	int action = TC_ACT_OK, eth_type, is_v6, ip_proto;
	struct ethhdr *eth;
	struct iphdr *iph = NULL;
	struct udphdr *uh;
	struct gwlb_key key = {};
	struct gwlb_value *v;
	struct gwlb_config *cfg;
	struct outer_v4_udp outer = {};
	__be16 be_eth_ip = bpf_htons(ETH_P_IP);

	eth_type = parse_ethhdr(&nh, data_end, &eth);
	if (eth_type == bpf_htons(ETH_P_IP)) {
		is_v6 = 0;
		iph = nh.pos;
		ip_proto = parse_iphdr(&nh, data_end, &iph);
		if (ip_proto == IPPROTO_UDP && parse_udphdr(&nh, data_end, &uh) >= 0 &&
		    (uh->dest == bpf_htons(GENEVE_UDP_PORT) ||
		     uh->source == bpf_htons(GENEVE_UDP_PORT)))
			goto out; /* already GENEVE */
	} else if (eth_type == bpf_htons(ETH_P_IPV6)) {
		is_v6 = 1;
	} else {
		goto out;
	}
	if (inner_key(data + sizeof(struct ethhdr), data_end, is_v6, &key) < 0)
		goto out;
	cfg = gwlb_config.lookup(&zero);
	if (!cfg)
		goto out;

	v = gwlb_flows.lookup(&key);
	if (!v) {
		key.dir ^= 1;
		v = gwlb_flows.lookup(&key);
	}
	if (!v) {
		/* The appliance's own packets: IPv4 from its GWLB-side address (health check
		 * replies), IPv6 link-local or multicast (neighbour discovery, MLD). */
		iph = data + sizeof(struct ethhdr);
		if (!is_v6 && (void *)(iph + 1) <= data_end && iph->saddr == cfg->be_local_addr) {
			reason = GWLB_ENCAP_PASS_LOCAL;
			goto out;
		}
		if (is_v6) {
			struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);

			if ((void *)(ip6 + 1) <= data_end &&
			    ((ip6->saddr.s6_addr[0] == 0xfe && (ip6->saddr.s6_addr[1] & 0xc0) == 0x80) ||
			     ip6->daddr.s6_addr[0] == 0xff)) {
				reason = GWLB_ENCAP_PASS_LOCAL;
				goto out;
			}
		}
		action = TC_ACT_SHOT;
		reason = GWLB_DROP_NO_FLOW;
		goto out;
	}
	if (gwlb_header_expired(cfg, v, bpf_ktime_get_ns())) {
		gwlb_flows.delete(&key);
		action = TC_ACT_SHOT;
		reason = GWLB_DROP_FLOW_EXPIRED;
		goto out;
	}

	hdr_len = v->hdr_len;
	/* Two separate checks on the same register: clang would merge them into one
	 * range test on a copy, and the verifier must see the bound on `hdr_len`. */
	barrier_var(hdr_len);
	if (hdr_len > GENEVE_MAX_HDR) {
		action = TC_ACT_SHOT;
		reason = GWLB_DROP_ENCAP_ERROR;
		goto out;
	}
	barrier_var(hdr_len);
	if (hdr_len < GENEVE_BASE_LEN) {
		action = TC_ACT_SHOT;
		reason = GWLB_DROP_ENCAP_ERROR;
		goto out;
	}
	inner_len = skb->len - sizeof(struct ethhdr);
	gwlb_outer_v4(&outer, v, hdr_len, inner_len);

	flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP;
	if (hdr_len <= 255)
		flags |= BPF_F_ADJ_ROOM_ENCAP_L2(hdr_len);
	if (bpf_skb_adjust_room(skb, OUTER_IPV4_UDP_LEN + hdr_len, BPF_ADJ_ROOM_MAC, flags) ||
	    bpf_skb_store_bytes(skb, sizeof(struct ethhdr), &outer, sizeof(outer), 0) ||
	    bpf_skb_store_bytes(skb, sizeof(struct ethhdr) + sizeof(outer), v->hdr, hdr_len, 0) ||
	    bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &be_eth_ip, 2, 0)) {
		action = TC_ACT_SHOT;
		reason = GWLB_DROP_ENCAP_ERROR;
		goto out;
	}
	reason = GWLB_ENCAP;

out:
	count(reason, pkt_len);
	return action;
}

int xdp_gwlb_pass_peer(struct xdp_md *ctx)
{
	return XDP_PASS;
}
