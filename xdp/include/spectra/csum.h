/* csum.h - incremental Internet checksum updates (RFC 1624, eqn. 3).
 *
 *     HC' = ~(~HC + ~m + m')
 *
 * computed in 32 bits and folded with end-around carry.  Ones' complement sums are
 * byte-order independent, so old/new values are passed exactly as they sit in the
 * packet (network order) and never swapped.  Eqn. 3 never yields 0xffff (-0) for a
 * nonzero sum, matching a from-scratch computation.
 */
#ifndef SPECTRA_CSUM_H
#define SPECTRA_CSUM_H

static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* Replace a 16-bit word `be_old` by `be_new` under checksum *sum. */
static __always_inline void csum_update16(__sum16 *sum, __be16 be_old, __be16 be_new)
{
	__u32 acc = (__u16)~*sum;

	acc += (__u16)~be_old;
	acc += be_new;
	*sum = ~csum_fold32(acc);
}

/* Replace a 32-bit field (an IPv4 address) under checksum *sum. */
static __always_inline void csum_update32(__sum16 *sum, __be32 be_old, __be32 be_new)
{
	__u32 acc = (__u16)~*sum;

	acc += (__u16)~(be_old & 0xffff);
	acc += (__u16)~(be_old >> 16);
	acc += be_new & 0xffff;
	acc += be_new >> 16;
	*sum = ~csum_fold32(acc);
}

/* The same for several fields at once (RFC 1624 eqn. 3 with one ~m + m' term per
 * field, one fold at the end): csum_apply(sum, csum_delta32(a, a') + csum_delta16(b, b'))
 * equals csum_update32 then csum_update16.  Up to 16 terms fit the 32-bit sum. */
static __always_inline __u32 csum_delta32(__be32 be_old, __be32 be_new)
{
	return (__u32)(__u16)~(be_old & 0xffff) + (__u16)~(be_old >> 16) + (be_new & 0xffff) +
	       (be_new >> 16);
}

static __always_inline __u32 csum_delta16(__be16 be_old, __be16 be_new)
{
	return (__u32)(__u16)~be_old + be_new;
}

static __always_inline void csum_apply(__sum16 *sum, __u32 delta)
{
	*sum = ~csum_fold32((__u32)(__u16)~*sum + delta);
}

/* Folded ones' complement sum of an option-less IPv4 header (20 bytes, already
 * bounds-checked), check field included. */
static __always_inline __u16 ipv4_hdr_sum(const struct iphdr *iph)
{
	const __u16 *word = (const __u16 *)iph;
	__u32 acc = 0;
	int i;

#pragma unroll
	for (i = 0; i < (int)(sizeof(*iph) / 2); i++)
		acc += word[i];
	return csum_fold32(acc);
}

/* True when the header checksum is right (the header sums to 0xffff).  The fast path
 * forwards only such headers: a router must not repair a corrupted header. */
static __always_inline int ipv4_hdr_csum_ok(const struct iphdr *iph)
{
	return ipv4_hdr_sum(iph) == 0xffff;
}

#endif /* SPECTRA_CSUM_H */
