/* maps.h - every map of the Spectra XDP data plane, its key/value layout and purpose.
 *
 * xdp/maps.py mirrors each struct with ctypes; tests/bpf/test_layout.py compares the
 * sizes and offsets against this file compiled by bcc.  Tunables are `#ifndef`
 * defaults; xdp.loader.BuildOptions passes them as -D flags.
 */
#ifndef SPECTRA_MAPS_H
#define SPECTRA_MAPS_H

#include "spectra/gwlb_types.h" /* the GWLB flow state read by the GWLB return */

/* ---- tunables ------------------------------------------------------------------ */

/* One entry per direction of an offloaded flow: 2 x 131072 connections by default,
 * ~11 MB of map memory; the agent sizes it from instance memory. */
#ifndef FLOW_TABLE_SIZE
#define FLOW_TABLE_SIZE 262144
#endif

/* Deny rules per generation, a multiple of 64: rule r is bit r % 64 of word r / 64.
 * At most 64 words (the per-protocol word bitmap is one __u64): 4096 rules. */
#ifndef MAX_DENY_RULES
#define MAX_DENY_RULES 4096
#endif
#if MAX_DENY_RULES % 64 != 0 || MAX_DENY_RULES < 64 || MAX_DENY_RULES > 4096
#error "MAX_DENY_RULES: expected a multiple of 64 in 64..4096"
#endif
#define DENY_WORDS (MAX_DENY_RULES / 64)

/* Addresses of the gateway itself: a packet to one of them is not forwarded, so the
 * deny list (forwarded inside -> outside traffic only) does not apply to it. */
#ifndef LOCAL_ADDRS_SIZE
#define LOCAL_ADDRS_SIZE 1024
#endif

/* Distinct CIDRs per side, both generations (the one being written and the active
 * one): 131072 each by default, room for a 100,000-CIDR IP set.  LPM tries allocate
 * per entry (BPF_F_NO_PREALLOC), so the bound costs nothing until used. */
#ifndef DENY_LPM_SIZE
#define DENY_LPM_SIZE 262144
#endif

/* Port ranges are expanded to one entry per (proto, port); two generations live
 * while a rule set is replaced, so this is twice the per-generation budget. */
#ifndef DENY_PORT_TABLE_SIZE
#define DENY_PORT_TABLE_SIZE 65536
#endif

/* tx_ports is an array DEVMAP indexed by ifindex (bcc 0.26 has no DEVMAP_HASH), so
 * every egress ifindex must be below this. */
#ifndef TX_PORTS_SIZE
#define TX_PORTS_SIZE 4096
#endif

#define DENY_GENERATIONS 2
#define DENY_PROTO_SLOTS 256 /* one per IP protocol number */

/* ---- flow table ---------------------------------------------------------------- */

/* Flow key, one per direction, as the packet arrives on `ifindex`.
 * ICMP echo (request and reply alike): be_sport = echo identifier, be_dport = 0, the
 * way Linux conntrack keeps the id in the tuple's source slot for both directions and
 * NAT rewrites it like a source port (nf_nat_proto.c icmp_manip_pkt). */
struct flow_key {
	__u32 ifindex;    /* ingress ifindex */
	__be32 be_saddr;
	__be32 be_daddr;
	__be16 be_sport;
	__be16 be_dport;
	__u8 proto;       /* IPPROTO_TCP / IPPROTO_UDP / IPPROTO_ICMP */
	__u8 pad[3];      /* always zero: part of the hashed key */
};

#define FLOW_F_CLOSING (1U << 0) /* FIN/RST seen: every packet goes to the kernel */
#define FLOW_F_GWLB (1U << 1)    /* two-arm GWLB return: re-encapsulate after the rewrite */
/* Hairpin leg (both ends inside, destination NAT): the deny list judges the translated
 * destination, as the forward chain sees it after the prerouting NAT. */
#define FLOW_F_DENY_TRANSLATED (1U << 2)

struct flow_value {
	__be32 be_new_saddr;
	__be32 be_new_daddr;
	__be16 be_new_sport;  /* ICMP echo: the new identifier */
	__be16 be_new_dport;  /* ICMP echo: unused, 0 */
	__u32 egress_ifindex; /* key of tx_ports */
	__u8 src_mac[6];
	__u8 dst_mac[6];
	__u32 flags;          /* FLOW_F_* */
	__u32 deny_epoch;     /* spectra_config.deny_gen this flow last passed the deny list
			       * under (written by the program; 0 from userspace) */
	__u32 reserved;       /* always zero */
	__u64 packets;        /* fast-path packets, atomic add */
	__u64 bytes;          /* fast-path bytes (whole frame), atomic add */
	__u64 last_seen_ns;   /* bpf_ktime_get_coarse_ns() of the last packet */
};

/* Offloaded flows; common LRU shared by all CPUs so a full table evicts the coldest
 * flow (which then simply takes the kernel path again). */
BPF_TABLE("lru_hash", struct flow_key, struct flow_value, flows, FLOW_TABLE_SIZE);

/* Egress ports for bpf_redirect_map: ifindex -> ifindex. */
BPF_DEVMAP(tx_ports, TX_PORTS_SIZE);

/* ---- counters ------------------------------------------------------------------- */

struct counter {
	__u64 packets;
	__u64 bytes;
};

/* The fast path's clock, per CPU: CLOCK_MONOTONIC_COARSE (bpf_ktime_get_coarse_ns) as
 * read at jiffy `jiffies`.  That helper is a call that reads the timekeeper under its
 * seqcount (~30 ns a packet in BPF_PROG_TEST_RUN here, an eighth of the redirect path),
 * while bpf_jiffies64 is inlined by the JIT into one load; the coarse clock advances at
 * the tick, as jiffies do, so re-reading it only when jiffies moved gives the same
 * value, at most one tick late.  Private to the program (not pinned). */
struct clock_cache {
	__u64 jiffies;
	__u64 coarse_ns;
};

BPF_PERCPU_ARRAY(clock_cache, struct clock_cache, 1);

/* Per-reason packet/byte counters, indexed by enum stat_reason. */
BPF_PERCPU_ARRAY(stats, struct counter, STAT__MAX);

/* Per deny rule drops, indexed by generation * MAX_DENY_RULES + rule id (the first
 * matching rule in document order is the one counted). */
BPF_PERCPU_ARRAY(deny_stats, struct counter, DENY_GENERATIONS * MAX_DENY_RULES);

/* ---- stateless deny list ---------------------------------------------------------- */

struct spectra_config {
	__u32 deny_gen;     /* deny-list epoch, +1 per replace; the active generation is
			     * deny_gen & 1 (one u32: a reader never sees a torn pair) */
	__u32 gwlb_ifindex; /* linked two-arm GWLB interface, 0 = none (read by the agent) */
	__u32 inside_ifindex; /* the deny list applies to packets arriving here (and on the
			       * GWLB interface); 0 = nowhere */
	__u32 deny_rules;   /* rules in the active generation (read by the agent) */
};

/* Single slot: the active generation, flipped by userspace after writing the other. */
BPF_ARRAY(config, struct spectra_config, 1);

/* LPM key: generation and rule word are matched data, so prefixlen = 16 + CIDR bits. */
struct deny_lpm_key {
	__u32 prefixlen;
	__u8 gen;
	__u8 word;    /* rules word * 64 .. word * 64 + 63 */
	__u8 addr[4]; /* network order */
} __attribute__((packed));

/* (gen, word, CIDR) -> mask of the word's rules whose CIDR contains it.  LPM returns
 * only the longest match, so userspace folds the bits of every shorter containing
 * prefix into each entry. */
BPF_LPM_TRIE(deny_src, struct deny_lpm_key, __u64, DENY_LPM_SIZE);
BPF_LPM_TRIE(deny_dst, struct deny_lpm_key, __u64, DENY_LPM_SIZE);

/* gen * 256 + IP protocol -> bitmap of the words holding a rule for that protocol or
 * any protocol (0 for most traffic: no LPM walk at all). */
BPF_ARRAY(deny_proto, __u64, DENY_GENERATIONS * DENY_PROTO_SLOTS);

/* (gen * DENY_WORDS + word) * 256 + IP protocol -> mask of the word's rules for that
 * protocol or any protocol. */
BPF_ARRAY(deny_rule_proto, __u64, DENY_GENERATIONS * DENY_WORDS * DENY_PROTO_SLOTS);

/* Same index -> mask of the word's rules that do not constrain the port. */
BPF_ARRAY(deny_port_any, __u64, DENY_GENERATIONS * DENY_WORDS * DENY_PROTO_SLOTS);

struct deny_port_key {
	__u8 gen;
	__u8 proto;     /* IPPROTO_TCP or IPPROTO_UDP only */
	__be16 be_port; /* destination port */
	__u8 word;
	__u8 pad[3];    /* always zero: part of the hashed key */
};

/* (gen, proto, destination port, word) -> mask of the word's rules whose port range
 * holds it. */
BPF_TABLE("hash", struct deny_port_key, __u64, deny_port, DENY_PORT_TABLE_SIZE);

/* The gateway's own IPv4 addresses (network order -> 1), kept current by the agent. */
BPF_TABLE("hash", __be32, __u8, local_addrs, LOCAL_ADDRS_SIZE);

/* ---- deny drop samples (the firewall log's XDP records) ---------------------------- */

/* Pages of the sample ring buffer (a power of two): 16 x 4 KiB hold ~2,000 samples,
 * a second of the default rate on 20 CPUs, between two reads of the agent. */
#ifndef DENY_SAMPLE_PAGES
#define DENY_SAMPLE_PAGES 16
#endif

/* One denied packet, as gw_deny saw it; the agent names the rule (rules.entries[i]). */
struct deny_sample {
	__u32 rule;       /* rule id in the generation it matched (0-based, document order
			   * of the deny rules) */
	__u32 deny_gen;   /* the deny-list epoch it matched under */
	__be32 be_saddr;
	__be32 be_daddr;
	__be16 be_sport;  /* TCP/UDP ports, 0 when not visible (a later fragment); */
	__be16 be_dport;  /* ICMP: be_sport holds type and code, be_dport 0 */
	__u8 proto;
	__u8 pad[3];      /* always zero */
	__u32 pkt_len;    /* frame bytes */
};

BPF_RINGBUF_OUTPUT(deny_samples, DENY_SAMPLE_PAGES);

/* Slot 0: samples per second per CPU the agent asks for (0 = none, the default). */
BPF_ARRAY(deny_sample_rate, __u32, 1);

/* Per-CPU token bucket of one-second windows, and what became of each denied packet
 * while sampling is on (read by the agent: nothing is dropped from the log uncounted). */
struct sample_budget {
	__u64 window_ns;  /* coarse clock at the start of the current window */
	__u64 sampled;    /* submitted to deny_samples */
	__u64 suppressed; /* over the rate: counters only */
	__u64 ring_full;  /* the agent read too slowly: counters only */
	__u32 used;       /* samples in the current window */
	__u32 pad;
};

BPF_PERCPU_ARRAY(deny_sample_budget, struct sample_budget, 1);

/* ---- GWLB two-arm link ------------------------------------------------------------ */

/* The GWLB programs' gwlb_flows and gwlb_config (geneve/bpf/gwlb_maps.h), slot 0 each,
 * put here by geneve.Gwlb.link_fastpath: a FLOW_F_GWLB return entry re-encapsulates
 * with the stored header.  Empty = no GWLB fast path (such entries go to the kernel).
 * The templates only give the verifier the inner layout (a hash's size may differ). */
BPF_TABLE("lru_hash", struct gwlb_key, struct gwlb_value, gwlb_flows_tmpl, 1);
BPF_ARRAY(gwlb_config_tmpl, struct gwlb_config, 1);
BPF_ARRAY_OF_MAPS(gwlb_flows_link, "gwlb_flows_tmpl", 1);
BPF_ARRAY_OF_MAPS(gwlb_config_link, "gwlb_config_tmpl", 1);

#endif /* SPECTRA_MAPS_H */
