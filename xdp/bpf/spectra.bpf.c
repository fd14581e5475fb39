/* spectra.bpf.c - XDP fast path of the Cloud Spectra Gateway (DESIGN.md section 2).
 *
 * xdp_gateway runs on both the inside and the outside interface, one stage after the
 * other, each a helper that returns a verdict reason or GW_NEXT:
 *   1. gw_parse: Ethernet (+ one 802.1Q/802.1ad tag), IPv4; anything not understood
 *      is XDP_PASS with a named reason, never dropped;
 *   2. gw_lookup: TCP/UDP/ICMP echo key, flow-table hit of an established,
 *      kernel-admitted flow; miss, FIN/RST, closing flow: XDP_PASS to the kernel
 *      (after step 3);
 *   3. gw_deny: stateless deny list -> XDP_DROP, for IPv4 packets with a sane header
 *      (tagged or not) arriving on the inside (or GWLB) interface and not addressed
 *      to the gateway itself: forwarded inside -> outside traffic, the meaning of the
 *      nftables deny rules; skipped for a flow hit that passed it under the current
 *      deny-list epoch (flow_value.deny_epoch); a denied packet is counted per rule
 *      and, at most the agent's rate, sampled into deny_samples (the firewall log);
 *   4. gw_rewrite: addresses and ports exactly as conntrack NAT would, TTL, MACs;
 *      then redirect.
 * Every path ends at `out:`, where the reason is counted.
 * GWLB two-arm (DESIGN.md section 2): xdp_gwlb tail calls this program with the
 * decapsulated inner packet (ingress_ifindex = the GWLB interface), so the forward
 * direction is step 2-4 unchanged; a return entry flagged FLOW_F_GWLB is reverse-NATed
 * and re-encapsulated with the GENEVE header the GWLB programs stored for the flow
 * (read through gwlb_flows_link), the outer header built as tc_gwlb_encap builds it,
 * then redirected to the GWLB interface.  No usable header: XDP_PASS untouched.
 * Kernel conntrack stays the source of truth; this only accelerates its decisions.
 *
 * xdp_pass_peer: XDP_PASS on veth peers (a native redirect into a veth needs an XDP
 * program on its peer).  xdp_drop_all: XDP_DROP, for perf sinks.
 */
#include <uapi/linux/bpf.h>
#include <linux/in.h>

#include "spectra/compiler.h"
#include "spectra/parsing.h"
#include "spectra/csum.h"
#include "spectra/gwlb_encap.h" /* the outer header tc_gwlb_encap builds too */
#include "reasons.h"
#include "maps.h"

/* Outer IPv4/UDP + GENEVE header must fit the XDP headroom (256, XDP_PACKET_HEADROOM):
 * a longer stored header leaves the reply on the kernel path (tc re-encapsulates). */
#define GWLB_XDP_MAX_HDR (XDP_PACKET_HEADROOM - OUTER_IPV4_UDP_LEN)

/* TCP and UDP both start with source and destination port. */
struct l4_ports {
	__be16 be_sport;
	__be16 be_dport;
};

/* 1 if v != 0, else 0, without a branch: v | -v has its top bit set exactly when v is
 * nonzero (the barrier keeps clang from turning it back into a compare and branch). */
static __always_inline __u64 nonzero(__u64 v)
{
	__u64 t = v | (0 - v);

	barrier_var(t);
	return t >> 63;
}

/* Bit index of the lowest set bit; mask must be nonzero (BPF has no ctz).  Branch-free
 * on purpose: with one branch per bit the verifier would follow 64 paths (one per
 * constant result) for every call, and the deny loop calls it per rule word. */
static __always_inline __u32 lowest_bit_index(__u64 mask)
{
	__u64 bit = mask & (0 - mask);

	return (nonzero(bit & 0xffffffff00000000ULL) << 5) |
	       (nonzero(bit & 0xffff0000ffff0000ULL) << 4) |
	       (nonzero(bit & 0xff00ff00ff00ff00ULL) << 3) |
	       (nonzero(bit & 0xf0f0f0f0f0f0f0f0ULL) << 2) |
	       (nonzero(bit & 0xccccccccccccccccULL) << 1) |
	       nonzero(bit & 0xaaaaaaaaaaaaaaaaULL);
}

/* The first rule (lowest id, document order) of the active generation matching the
 * packet, as rule id + 1; 0 when none does.  Rules are evaluated 64 at a time (a word):
 * per word the AND of its per-field masks, the words in order, only those holding a
 * rule for this protocol (deny_proto's bitmap, zero for most traffic and for all of it
 * when the list is empty, which skips every LPM walk). */
static __always_inline __u32 deny_lookup(__be32 be_saddr, __be32 be_daddr, __u8 proto,
					 int has_port, __be16 be_dport, __u8 gen)
{
	struct deny_lpm_key lpm = {};
	struct deny_port_key pkey = {};
	__u32 slot, word, i;
	__u64 words, mask, port_mask;
	__u64 *m;

	slot = gen * DENY_PROTO_SLOTS + proto;
	m = deny_proto.lookup(&slot);
	if (!m)
		return 0;
	words = *m;

	lpm.prefixlen = 16 + 32;
	lpm.gen = gen;
	pkey.gen = gen;
	pkey.proto = proto;
	pkey.be_port = be_dport;
	for (i = 0; i < DENY_WORDS && words; i++) {
		word = lowest_bit_index(words);
		words &= words - 1;
		slot = (gen * DENY_WORDS + word) * DENY_PROTO_SLOTS + proto;
		m = deny_rule_proto.lookup(&slot);
		if (!m || !*m)
			continue;
		mask = *m;

		lpm.word = word;
		__builtin_memcpy(lpm.addr, &be_saddr, 4);
		m = deny_src.lookup(&lpm);
		if (!m)
			continue;
		mask &= *m;
		if (!mask)
			continue;

		__builtin_memcpy(lpm.addr, &be_daddr, 4);
		m = deny_dst.lookup(&lpm);
		if (!m)
			continue;
		mask &= *m;
		if (!mask)
			continue;

		m = deny_port_any.lookup(&slot);
		port_mask = m ? *m : 0;
		if (has_port) {
			pkey.word = word;
			m = deny_port.lookup(&pkey);
			if (m)
				port_mask |= *m;
		}
		mask &= port_mask;
		if (mask)
			return word * 64 + lowest_bit_index(mask) + 1;
	}
	return 0;
}

/* Not forwarded by the kernel, so outside the deny list's meaning: the gateway's own
 * addresses, limited broadcast and multicast (the forward hook never sees them). */
static __always_inline int to_the_gateway(__be32 be_daddr)
{
	__u8 first = ((__u8 *)&be_daddr)[0];

	if (be_daddr == 0xffffffff || (first & 0xf0) == 0xe0)
		return 1;
	return local_addrs.lookup(&be_daddr) != NULL;
}

/* The usable stored GENEVE header for the GWLB return entry `fv` (the translated
 * tuple is the inner flow server -> workload), looked up as tc_gwlb_encap does: this
 * direction first, then the opposite.  NULL when no GWLB programs are linked, no header
 * is stored, it idled out, or it is too long for the XDP headroom. */
static __always_inline struct gwlb_value *gwlb_stored_header(const struct flow_value *fv,
							     __u8 proto)
{
	struct gwlb_key key = {};
	struct gwlb_config *cfg;
	struct gwlb_value *v;
	void *flows_map, *config_map;
	__u32 zero = 0;
	__be16 be_dport = proto == IPPROTO_ICMP ? fv->be_new_sport : fv->be_new_dport;

	flows_map = gwlb_flows_link.lookup(&zero);
	config_map = gwlb_config_link.lookup(&zero);
	if (!flows_map || !config_map)
		return NULL;
	cfg = bpf_map_lookup_elem(config_map, &zero);
	if (!cfg)
		return NULL;
	gwlb_key_v4(&key, proto, fv->be_new_saddr, fv->be_new_daddr, fv->be_new_sport, be_dport);
	v = bpf_map_lookup_elem(flows_map, &key);
	if (!v) {
		key.dir ^= 1;
		v = bpf_map_lookup_elem(flows_map, &key);
	}
	if (!v)
		return NULL;
	if (gwlb_header_expired(cfg, v, bpf_ktime_get_ns()))
		return NULL; /* tc_gwlb_encap drops and forgets it */
	if (v->hdr_len < GENEVE_BASE_LEN || v->hdr_len > GWLB_XDP_MAX_HDR)
		return NULL;
	return v;
}

/* Put Ethernet (MACs of `fv`), outer IPv4/UDP and the stored GENEVE header `v` in front
 * of the translated inner IPv4 packet of `inner_len` bytes (Ethernet padding trimmed,
 * as the kernel path would).  Returns 0, or -1 with the packet unusable. */
static __always_inline int gwlb_reencap(struct xdp_md *ctx, const struct flow_value *fv,
					struct gwlb_value *v, __u32 inner_len)
{
	struct outer_v4_udp outer = {};
	struct ethhdr *eth;
	void *data, *data_end;
	__u64 hdr_len = v->hdr_len; /* 64-bit: a 32-bit copy would lose the verifier's bounds */
	int pad;

	barrier_var(hdr_len);
	if (hdr_len > GWLB_XDP_MAX_HDR)
		return -1;
	barrier_var(hdr_len);
	if (hdr_len < GENEVE_BASE_LEN)
		return -1;
	pad = (int)(ctx->data_end - ctx->data) - (int)sizeof(struct ethhdr) - (int)inner_len;
	if (pad > 0 && bpf_xdp_adjust_tail(ctx, -pad))
		return -1;
	if (bpf_xdp_adjust_head(ctx, -(int)(OUTER_IPV4_UDP_LEN + hdr_len)))
		return -1;
	/* adjust_head invalidated every packet pointer: re-read data/data_end. */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) + sizeof(outer) > data_end)
		return -1;
	gwlb_outer_v4(&outer, v, hdr_len, inner_len);
	__builtin_memcpy(eth->h_dest, fv->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fv->src_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	__builtin_memcpy(eth + 1, &outer, sizeof(outer));
	return bpf_xdp_store_bytes(ctx, sizeof(*eth) + sizeof(outer), v->hdr, hdr_len) ? -1 : 0;
}

/* bpf_ktime_get_coarse_ns(), read once per jiffy per CPU (see struct clock_cache). */
static __always_inline __u64 coarse_now_ns(void)
{
	struct clock_cache *cc;
	__u32 zero = 0;
	__u64 now = bpf_jiffies64();

	cc = clock_cache.lookup(&zero);
	if (!cc)
		return bpf_ktime_get_coarse_ns();
	if (cc->jiffies != now) {
		cc->coarse_ns = bpf_ktime_get_coarse_ns();
		cc->jiffies = now;
	}
	return cc->coarse_ns;
}

/* What xdp_gateway learned of one frame; the stages below fill it in order. */
struct gw_pkt {
	struct ethhdr *eth;
	struct iphdr *iph;
	struct tcphdr *th;     /* at most one of th, uh, icmph is set (by gw_lookup) */
	struct udphdr *uh;
	struct icmphdr *icmph;
	__u32 ip_tot_len;      /* host order, checked against the frame */
	__u16 frag;            /* frag_off, host order */
	__u8 ip_proto;
	__u8 vlan_tagged;
};

/* A stage's result when it reached no verdict: the next stage runs.  Never counted
 * (STAT__MAX is past the last stats slot). */
#define GW_NEXT STAT__MAX

/* Parse: Ethernet, one optional 802.1Q/802.1ad tag, a sane IPv4 header that fits the
 * frame.  GW_NEXT with `p` filled in, or the pass reason. */
static __always_inline __u32 gw_parse(struct hdr_cursor *nh, void *data_end, struct gw_pkt *p)
{
	struct vlan_hdr *vlh;
	struct iphdr *iph;
	int eth_type, ip_proto;

	eth_type = parse_ethhdr(nh, data_end, &p->eth);
	if (eth_type < 0)
		return STAT_PASS_TRUNCATED;
	if (proto_is_vlan(eth_type)) {
		eth_type = parse_vlanhdr(nh, data_end, &vlh);
		if (eth_type < 0)
			return STAT_PASS_TRUNCATED;
		p->vlan_tagged = 1;
	}
	if (eth_type != bpf_htons(ETH_P_IP))
		return STAT_PASS_NOT_IPV4;

	iph = nh->pos; /* peeked only to classify a failure below */
	ip_proto = parse_iphdr(nh, data_end, &iph);
	if (ip_proto < 0) {
		if ((void *)(iph + 1) <= data_end && iph->ihl < 5)
			return STAT_PASS_MALFORMED;
		return STAT_PASS_TRUNCATED;
	}
	p->ip_tot_len = bpf_ntohs(iph->tot_len);
	if (iph->version != 4 || p->ip_tot_len < (__u32)iph->ihl * 4)
		return STAT_PASS_MALFORMED;
	if ((void *)iph + p->ip_tot_len > data_end)
		return STAT_PASS_TRUNCATED;
	p->iph = iph;
	p->ip_proto = ip_proto;
	p->frag = bpf_ntohs(iph->frag_off);
	return GW_NEXT;
}

/* A sample of a denied packet for the firewall log, at most the agent's rate per CPU
 * and second (a token bucket refilled per one-second window of the coarse clock); only
 * denied packets get here, and with the rate at 0 it costs one array lookup. */
static __always_inline void deny_sample(const struct gw_pkt *p, const struct l4_ports *ports,
					 void *data_end, __u32 rule, __u32 epoch, __u64 pkt_len)
{
	struct sample_budget *b;
	struct deny_sample *s;
	__u32 zero = 0, *rate;
	__u64 now;

	rate = deny_sample_rate.lookup(&zero);
	if (!rate || !*rate)
		return;
	b = deny_sample_budget.lookup(&zero);
	if (!b)
		return;
	now = coarse_now_ns();
	if (now - b->window_ns >= 1000000000ULL) {
		b->window_ns = now;
		b->used = 0;
	}
	if (b->used >= *rate) {
		b->suppressed += 1;
		return;
	}
	s = deny_samples.ringbuf_reserve(sizeof(*s));
	if (!s) {
		b->ring_full += 1;
		return;
	}
	b->used += 1;
	b->sampled += 1;
	s->rule = rule;
	s->deny_gen = epoch;
	s->be_saddr = p->iph->saddr;
	s->be_daddr = p->iph->daddr;
	s->be_sport = 0;
	s->be_dport = 0;
	if (!(p->frag & IP_OFFSET) && (void *)(ports + 1) <= data_end) {
		if (p->ip_proto == IPPROTO_TCP || p->ip_proto == IPPROTO_UDP) {
			s->be_sport = ports->be_sport;
			s->be_dport = ports->be_dport;
		} else if (p->ip_proto == IPPROTO_ICMP) {
			s->be_sport = ports->be_sport; /* type, code */
		}
	}
	s->proto = p->ip_proto;
	s->pad[0] = s->pad[1] = s->pad[2] = 0;
	s->pkt_len = pkt_len;
	deny_samples.ringbuf_submit(s, 0);
}

/* Deny: the stateless deny list, for IPv4 packets (tagged or not) the kernel would
 * forward from the inside (the caller checked the ingress interface): the meaning of
 * the nftables deny rules, which sit in the forward chain.  Ports exist only in the
 * first fragment of TCP/UDP; without them only rules that do not constrain the port
 * can match.  STAT_DROP_DENY (the first matching rule's counter bumped) or GW_NEXT.
 * `l4` is where the transport header starts. */
static __always_inline __u32 gw_deny(const struct gw_pkt *p, void *l4, void *data_end,
				     __u64 pkt_len, __u32 epoch, const struct flow_value *fv)
{
	struct l4_ports *ports = l4;
	struct counter *cnt;
	__be32 be_daddr = p->iph->daddr;
	__be16 be_dport = 0;
	__u32 gen = epoch & 1, rule, rule_slot;
	int has_port = 0;

	if (!(p->frag & IP_OFFSET) &&
	    (p->ip_proto == IPPROTO_TCP || p->ip_proto == IPPROTO_UDP) &&
	    (void *)(ports + 1) <= data_end) {
		be_dport = ports->be_dport;
		has_port = 1;
	}
	/* A hairpin leg's packet is addressed to the gateway; the forward chain judges it
	 * after the prerouting NAT, toward the translated destination. */
	if (fv && (fv->flags & FLOW_F_DENY_TRANSLATED)) {
		be_daddr = fv->be_new_daddr;
		if (has_port)
			be_dport = fv->be_new_dport;
	}
	rule = deny_lookup(p->iph->saddr, be_daddr, p->ip_proto, has_port, be_dport, gen);
	if (!rule)
		return GW_NEXT;
	/* Checked only for a match: what is not denied never pays for it. */
	if (to_the_gateway(be_daddr))
		return GW_NEXT;
	rule_slot = gen * MAX_DENY_RULES + rule - 1;
	cnt = deny_stats.lookup(&rule_slot);
	if (cnt) {
		cnt->packets += 1;
		cnt->bytes += pkt_len;
	}
	deny_sample(p, ports, data_end, rule - 1, epoch, pkt_len);
	return STAT_DROP_DENY;
}

/* Lookup: what the fast path can translate (untagged, no IP options, not a fragment,
 * TTL left, TCP/UDP/ICMP echo) keyed as it arrived on `ifindex`, then the flow table
 * and the state of the hit.  GW_NEXT with *fv_out (and *gv_out for a GWLB return) set,
 * or the pass reason. */
static __always_inline __u32 gw_lookup(struct hdr_cursor *nh, void *data_end, __u32 ifindex,
				       struct gw_pkt *p, struct flow_value **fv_out,
				       struct gwlb_value **gv_out)
{
	struct flow_key key = {};
	struct flow_value *fv;
	struct gwlb_value *gv;
	struct iphdr *iph = p->iph;

	if (p->vlan_tagged)
		return STAT_PASS_VLAN;
	if (iph->ihl != 5)
		return STAT_PASS_IP_OPTIONS;
	if (p->frag & (IP_MF | IP_OFFSET))
		return STAT_PASS_FRAGMENT;
	if (iph->ttl <= 1)
		return STAT_PASS_TTL;

	key.ifindex = ifindex;
	key.be_saddr = iph->saddr;
	key.be_daddr = iph->daddr;
	key.proto = p->ip_proto;
	if (p->ip_proto == IPPROTO_TCP) {
		if (parse_tcphdr(nh, data_end, &p->th) < 0)
			return STAT_PASS_TRUNCATED;
		key.be_sport = p->th->source;
		key.be_dport = p->th->dest;
	} else if (p->ip_proto == IPPROTO_UDP) {
		if (parse_udphdr(nh, data_end, &p->uh) < 0)
			return STAT_PASS_TRUNCATED;
		key.be_sport = p->uh->source;
		key.be_dport = p->uh->dest;
	} else if (p->ip_proto == IPPROTO_ICMP) {
		if (parse_icmphdr(nh, data_end, &p->icmph) < 0)
			return STAT_PASS_TRUNCATED;
		if (icmp_is_error(p->icmph->type))
			return STAT_PASS_ICMP_ERROR;
		if (p->icmph->type != ICMP_ECHO && p->icmph->type != ICMP_ECHOREPLY)
			return STAT_PASS_ICMP_OTHER;
		key.be_sport = p->icmph->un.echo.id; /* see struct flow_key */
	} else {
		return STAT_PASS_PROTO;
	}

	fv = flows.lookup(&key);
	if (!fv)
		return STAT_PASS_NO_FLOW;
	if (fv->flags & FLOW_F_CLOSING)
		return STAT_PASS_FLOW_CLOSING;
	if (!ipv4_hdr_csum_ok(iph))
		return STAT_PASS_IP_CSUM;
	if (p->th) {
		if (p->th->fin || p->th->rst) {
			/* Racing CPUs set the same bit; plain store is enough. */
			fv->flags |= FLOW_F_CLOSING;
			return STAT_PASS_TCP_FIN_RST;
		}
		if (p->th->syn)
			return STAT_PASS_TCP_SYN;
	}
	if (fv->flags & FLOW_F_GWLB) {
		gv = gwlb_stored_header(fv, p->ip_proto);
		if (!gv)
			return STAT_PASS_GWLB_NO_HEADER;
		*gv_out = gv;
	}
	*fv_out = fv;
	return GW_NEXT;
}

/* Rewrite: addresses and ports exactly as conntrack NAT would (`fv`), with incremental
 * checksums, TTL decremented, MACs of the next hop.  The address change enters both the
 * IPv4 and the TCP/UDP checksum (pseudo-header), so its delta is summed once and each
 * checksum is folded once. */
static __always_inline void gw_rewrite(struct gw_pkt *p, const struct flow_value *fv)
{
	struct iphdr *iph = p->iph;
	struct tcphdr *th = p->th;
	struct udphdr *uh = p->uh;
	struct icmphdr *icmph = p->icmph;
	__u16 be_old_word, be_new_word;
	__u32 addrs;

	addrs = csum_delta32(iph->saddr, fv->be_new_saddr) +
		csum_delta32(iph->daddr, fv->be_new_daddr);
	if (th) {
		csum_apply(&th->check, addrs + csum_delta16(th->source, fv->be_new_sport) +
					       csum_delta16(th->dest, fv->be_new_dport));
		th->source = fv->be_new_sport;
		th->dest = fv->be_new_dport;
	} else if (uh) {
		if (uh->check) { /* 0 = no checksum (RFC 768): stays 0 */
			csum_apply(&uh->check, addrs + csum_delta16(uh->source, fv->be_new_sport) +
						       csum_delta16(uh->dest, fv->be_new_dport));
			if (!uh->check)
				uh->check = 0xffff;
		}
		uh->source = fv->be_new_sport;
		uh->dest = fv->be_new_dport;
	} else if (icmph) {
		csum_update16(&icmph->checksum, icmph->un.echo.id, fv->be_new_sport);
		icmph->un.echo.id = fv->be_new_sport;
	}

	/* TTL shares a 16-bit checksum word with the protocol byte. */
	be_old_word = *(__u16 *)&iph->ttl;
	iph->ttl -= 1;
	be_new_word = *(__u16 *)&iph->ttl;
	csum_apply(&iph->check, addrs + csum_delta16(be_old_word, be_new_word));
	iph->saddr = fv->be_new_saddr;
	iph->daddr = fv->be_new_daddr;

	__builtin_memcpy(p->eth->h_source, fv->src_mac, ETH_ALEN);
	__builtin_memcpy(p->eth->h_dest, fv->dst_mac, ETH_ALEN);
}

int xdp_gateway(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	__u64 pkt_len = data_end - data;
	struct hdr_cursor nh = { .pos = data };
	struct gw_pkt p = {};
	struct flow_value *fv = NULL;
	struct gwlb_value *gv = NULL; /* stored GENEVE header of a GWLB return */
	struct spectra_config *cfg;
	struct counter *cnt;
	int action = XDP_PASS, deny_here = 0;
	__u32 reason, lookup, epoch = 0, zero = 0, ifindex = ctx->ingress_ifindex;
	void *l4;

	reason = gw_parse(&nh, data_end, &p);
	if (reason != GW_NEXT)
		goto out;

	/* Deny, unless this is an offloaded flow that already passed the deny list of the
	 * current epoch (its addresses, protocol and port are the same on every packet).
	 * The flow lookup comes first so the hit can skip the LPM walks; its pass
	 * reasons apply only after the deny list has had its say. */
	l4 = nh.pos;
	cfg = config.lookup(&zero);
	if (cfg) {
		epoch = cfg->deny_gen;
		deny_here = ifindex == cfg->inside_ifindex ||
			    (cfg->gwlb_ifindex && ifindex == cfg->gwlb_ifindex);
	}
	lookup = gw_lookup(&nh, data_end, ifindex, &p, &fv, &gv);
	if (lookup != GW_NEXT || fv->deny_epoch != epoch) {
		reason = deny_here ? gw_deny(&p, l4, data_end, pkt_len, epoch,
					     lookup == GW_NEXT ? fv : NULL)
				   : GW_NEXT;
		if (reason != GW_NEXT) {
			action = XDP_DROP;
			goto out;
		}
		if (lookup == GW_NEXT)
			fv->deny_epoch = epoch; /* racing CPUs store the same value */
	}
	reason = lookup;
	if (reason != GW_NEXT)
		goto out;

	/* Select the egress port before touching the packet: a missing tx_ports entry
	 * returns XDP_PASS (the flags' action bits) and the frame goes up unmodified. */
	action = tx_ports.redirect_map(fv->egress_ifindex, XDP_PASS);
	if (action != XDP_REDIRECT) {
		action = XDP_PASS;
		reason = STAT_REDIRECT_ERROR;
		goto out;
	}

	gw_rewrite(&p, fv);
	__sync_fetch_and_add(&fv->packets, 1);
	__sync_fetch_and_add(&fv->bytes, pkt_len);
	/* CLOCK_MONOTONIC at tick resolution: enough for idle expiry. */
	fv->last_seen_ns = coarse_now_ns();
	reason = STAT_REDIRECT;
	if (gv) {
		if (gwlb_reencap(ctx, fv, gv, p.ip_tot_len) < 0) {
			action = XDP_DROP;
			reason = STAT_DROP_GWLB_ENCAP;
			goto out;
		}
		reason = STAT_REDIRECT_GWLB;
	}

out:
	cnt = stats.lookup(&reason);
	if (cnt) {
		cnt->packets += 1;
		cnt->bytes += pkt_len;
	}
	return action;
}

int xdp_pass_peer(struct xdp_md *ctx)
{
	return XDP_PASS;
}

int xdp_drop_all(struct xdp_md *ctx)
{
	return XDP_DROP;
}
