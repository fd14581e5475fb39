/* parsing.h - bounds-checked header parsers over a cursor (xdp-tutorial contract).
 *
 * Every parser has the signature
 *     int parse_X(struct hdr_cursor *nh, void *data_end, struct X **out)
 * and returns the next protocol (host order for L2/L3 helpers that return an
 * EtherType: network order, see each helper) or -1 when the header does not fit.
 * On success the cursor is advanced past the header and *out points at it; on
 * failure neither the cursor nor *out is touched.  Bounds idiom: `if (h + 1 > data_end)`.
 * Parsers never move the packet head, so `data`/`data_end` stay valid for the whole
 * program; a helper that calls bpf_xdp_adjust_head() must re-read both afterwards.
 */
#ifndef SPECTRA_PARSING_H
#define SPECTRA_PARSING_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/icmp.h>

#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

#define IP_MF 0x2000     /* "more fragments" flag, host order */
#define IP_OFFSET 0x1FFF /* fragment offset mask, host order */

struct hdr_cursor {
	void *pos;
};

/* IEEE 802.1Q tag as it follows the MAC addresses (TCI + encapsulated EtherType). */
struct vlan_hdr {
	__be16 be_tci;
	__be16 be_encap_proto;
};

static __always_inline int proto_is_vlan(__be16 be_proto)
{
	return be_proto == bpf_htons(ETH_P_8021Q) || be_proto == bpf_htons(ETH_P_8021AD);
}

/* Returns the EtherType in network order. VLAN tags are left to parse_vlanhdr. */
static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end,
					struct ethhdr **ethhdr)
{
	struct ethhdr *eth = nh->pos;

	if (eth + 1 > data_end)
		return -1;
	nh->pos = eth + 1;
	*ethhdr = eth;
	return eth->h_proto;
}

/* Returns the encapsulated EtherType in network order. */
static __always_inline int parse_vlanhdr(struct hdr_cursor *nh, void *data_end,
					 struct vlan_hdr **vlanhdr)
{
	struct vlan_hdr *vlh = nh->pos;

	if (vlh + 1 > data_end)
		return -1;
	nh->pos = vlh + 1;
	*vlanhdr = vlh;
	return vlh->be_encap_proto;
}

/* Returns the IP protocol. Fails when the fixed header or ihl*4 bytes do not fit, or
 * ihl < 5; the caller tells these apart (ihl < 5 is malformed, not truncated). */
static __always_inline int parse_iphdr(struct hdr_cursor *nh, void *data_end,
				       struct iphdr **iphdr)
{
	struct iphdr *iph = nh->pos;
	int hdrsize;

	if (iph + 1 > data_end)
		return -1;
	hdrsize = iph->ihl * 4;
	if (hdrsize < (int)sizeof(*iph))
		return -1;
	if (nh->pos + hdrsize > data_end)
		return -1;
	nh->pos += hdrsize;
	*iphdr = iph;
	return iph->protocol;
}

/* Returns the data offset in bytes. Fails when doff*4 bytes (at least 20) do not fit. */
static __always_inline int parse_tcphdr(struct hdr_cursor *nh, void *data_end,
					struct tcphdr **tcphdr)
{
	struct tcphdr *th = nh->pos;
	int hdrsize;

	if (th + 1 > data_end)
		return -1;
	hdrsize = th->doff * 4;
	if (hdrsize < (int)sizeof(*th))
		return -1;
	if (nh->pos + hdrsize > data_end)
		return -1;
	nh->pos += hdrsize;
	*tcphdr = th;
	return hdrsize;
}

/* Returns the UDP length field (host order). */
static __always_inline int parse_udphdr(struct hdr_cursor *nh, void *data_end,
					struct udphdr **udphdr)
{
	struct udphdr *uh = nh->pos;

	if (uh + 1 > data_end)
		return -1;
	nh->pos = uh + 1;
	*udphdr = uh;
	return bpf_ntohs(uh->len);
}

/* Returns the ICMP type. */
static __always_inline int parse_icmphdr(struct hdr_cursor *nh, void *data_end,
					 struct icmphdr **icmphdr)
{
	struct icmphdr *icmph = nh->pos;

	if (icmph + 1 > data_end)
		return -1;
	nh->pos = icmph + 1;
	*icmphdr = icmph;
	return icmph->type;
}

static __always_inline int icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_SOURCE_QUENCH ||
	       type == ICMP_REDIRECT || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB;
}

#endif /* SPECTRA_PARSING_H */
