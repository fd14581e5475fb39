/* XDP_PASS for the lab's veth peers (workload and internet ends of gateway links).
 *
 * A native XDP_REDIRECT into a veth only delivers when the peer end has an XDP
 * program; real NICs need nothing like it. Compiled with clang and attached by
 * iproute2, so the lab does not need bcc.
 */
#include <linux/bpf.h>

__attribute__((section("xdp"), used)) int xdp_peer_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] __attribute__((section("license"), used)) = "GPL";
