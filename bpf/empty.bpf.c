// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The empty XDP program: the harness cost of BPF_PROG_TEST_RUN, measured the
 * same way as klais_xdp by `klais xdp bench` so its figures are net of it. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("xdp")
int klais_xdp_empty(struct xdp_md *ctx)
{
	return XDP_PASS;
}
