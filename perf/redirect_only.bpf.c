/* xdp_redirect_only: the floor of any XDP forwarder, for the dataplane benchmark only.
 *
 * Sets the MACs and redirects every frame through a one-entry devmap, the mechanism
 * xdp_gateway uses: no parsing, no deny list, no flow lookup, no NAT, no counters.
 * The fast path's cost above this is what the product's program adds; the rest is
 * the redirect itself (devmap bulk queue, veth ring, waking the peer).  Compiled by
 * perf/bpf.py with bcc; SRC_MAC and DST_MAC come as -D byte lists.
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>

BPF_DEVMAP(redirect_port, 1);

int xdp_redirect_only(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = (void *)(long)ctx->data;
	const unsigned char src[ETH_ALEN] = { SRC_MAC };
	const unsigned char dst[ETH_ALEN] = { DST_MAC };

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	__builtin_memcpy(eth->h_source, src, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
	return redirect_port.redirect_map(0, XDP_PASS);
}
