/* geneve.h - GENEVE wire format (RFC 8926 section 3.4, 3.5) and the AWS Gateway Load
 * Balancer option registry (class 0x0108; types 1/2/3 = endpoint id 8 B, attachment id
 * 8 B, flow cookie 4 B; https://docs.aws.amazon.com/elasticloadbalancing/latest/gateway/).
 * geneve/aws.py mirrors the registry; tests/unit/geneve/test_reasons.py compares them.
 */
#ifndef SPECTRA_GENEVE_H
#define SPECTRA_GENEVE_H

#define GENEVE_UDP_PORT 6081
#define GENEVE_BASE_LEN 8
#define GENEVE_MAX_OPT_LEN 252        /* 6-bit Opt Len in 4-byte words */
#define GENEVE_MAX_OPTS (GENEVE_MAX_OPT_LEN / 4) /* every option is >= 4 bytes */
#define GENEVE_MAX_HDR (GENEVE_BASE_LEN + GENEVE_MAX_OPT_LEN)
#define GENEVE_CRITICAL_TYPE 0x80

#define GENEVE_PROTO_IPV4 0x0800
#define GENEVE_PROTO_IPV6 0x86DD

#define AWS_OPT_CLASS 0x0108
#define AWS_OPT_ENDPOINT_ID 1
#define AWS_OPT_ENDPOINT_ID_LEN 8
#define AWS_OPT_ATTACHMENT_ID 2
#define AWS_OPT_ATTACHMENT_ID_LEN 8
#define AWS_OPT_FLOW_COOKIE 3
#define AWS_OPT_FLOW_COOKIE_LEN 4
#define AWS_OPT_ALL ((1U << AWS_OPT_ENDPOINT_ID) | (1U << AWS_OPT_ATTACHMENT_ID) | \
		     (1U << AWS_OPT_FLOW_COOKIE))

/* Fixed part of the header (RFC 8926 3.4). */
struct genevehdr {
	__u8 ver_optlen;   /* Ver (2 bits) | Opt Len in 4-byte words (6 bits) */
	__u8 flags;        /* O (0x80) | C (0x40) | reserved */
	__be16 be_proto;   /* Protocol Type: an EtherType */
	__u8 vni[3];
	__u8 reserved;
} __attribute__((packed));

/* One option header (RFC 8926 3.5); data follows, length * 4 bytes. */
struct geneve_opt {
	__be16 be_class;
	__u8 type;         /* bit 7: critical */
	__u8 length;       /* R R R | length in 4-byte words (5 bits) */
} __attribute__((packed));

#define GENEVE_F_OAM 0x80

#endif /* SPECTRA_GENEVE_H */
