// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * klais XDP filter (DESIGN.md section 4).
 *
 * Parses Ethernet (up to two VLAN tags, 802.1Q / 802.1ad), IPv4 (with options)
 * or IPv6, and UDP. Only UDP datagrams to a configured klais port are klais
 * traffic; everything else leaves with XDP_PASS, untouched (ARP, SSH, the
 * operator's own session). For klais traffic, in this order:
 *   too short -> drop; bad magic -> drop; deny list -> drop;
 *   per-device token bucket over rate -> drop; global budget -> drop;
 *   else redirect to the AF_XDP socket of the receive queue, or pass to the
 *   kernel UDP path when no socket is bound there.
 * Every exit goes through record(): every verdict has a per-CPU counter.
 *
 * Token buckets are GCRA (one 64-bit "theoretical arrival time" per bucket):
 * - per device, shared by all CPUs and updated with compare-and-swap, so two
 *   CPUs can never both spend one token. RSS keeps one device's packets on
 *   one queue, so a per-CPU share of its rate would starve it; the CAS line
 *   is touched only by the CPUs that device's packets actually reach.
 * - the global budget, split evenly per CPU (no shared cache line per packet
 *   at line rate; the cost is that a CPU may refuse while another has slack).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "klais.h"
#include "klais_wire.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Load-time settings (rodata), set by the loader before load. */
const volatile __u16 klais_ports[KLAIS_MAX_PORTS] = {}; /* host byte order; 0 = unused slot */
const volatile __u32 enforce = 1;			 /* 0: count would-be drops but let them through */
const volatile __u32 events_enabled = 1;		 /* sampled events to the ring buffer */
const volatile __u32 reset_window = 4;			 /* a sequence at or below this, going back, is a reset */
const volatile __u32 bucket_set_mask = (1 << 18) - 1;	 /* sets in `buckets` minus one (a power of two) */
/*
 * Where a redirected frame's mark goes: 0 = the XDP metadata area in front of
 * the frame (bpf_xdp_adjust_meta); 1 = an 8-byte prefix pushed in front of
 * EVERY redirected frame (bpf_xdp_adjust_head), for kernels that refuse
 * bpf_xdp_adjust_meta in XDP programs. User space probes the kernel and sets
 * it; the verifier never sees the branch not taken (rodata is constant).
 */
const volatile __u32 mark_prefix = 0;

/* Never read: they put the verdict and event types into BTF so the skeleton's
 * `types` module carries them to Rust (no hand-kept copy). */
const volatile enum klais_verdict klais_verdict_type = KLAIS_V__COUNT;
const volatile enum klais_event_kind klais_event_kind_type = KLAIS_EV_NEW_DEVICE;
const volatile struct klais_event klais_event_type = {};
/* Exported for the skeleton's types (never read). */
const volatile struct klais_model klais_model_type = {};
const volatile struct klais_model_ctl klais_model_ctl_type = {};
const volatile struct klais_model_scratch klais_model_scratch_type = {};
const volatile struct klais_flow klais_flow_type = {};
const volatile struct klais_xdp_meta klais_xdp_meta_type = {};
const volatile enum klais_model_action klais_model_action_type = KLAIS_ACT_PASS;

/* Every map, its purpose and its writer. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct klais_counters);
} counters SEC(".maps"); /* per-verdict packet counters; written here, read by `klais xdp stats` */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct klais_settings);
} settings SEC(".maps"); /* run-time rates and budgets; written by the loader / control core */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 18);
	__type(key, __u32);
	__type(value, struct klais_bucket_set);
} buckets SEC(".maps"); /* per-device GCRA state, 4-way sets indexed by FNV-1a 64 of the id; written here */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct klais_policy);
} policy SEC(".maps"); /* deny list and rate overrides per device; written by operators / control core */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} cpu_tat SEC(".maps"); /* per-CPU GCRA state: [0] global budget, [1] event cap; written here */

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, KLAIS_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps"); /* AF_XDP socket per receive queue; written by the shards */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps"); /* sampled device events; read by the control core */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, __u64);
	__type(value, struct klais_flow);
} flows SEC(".maps"); /* per-device classifier features; written here (size set by the loader) */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct klais_model);
} model SEC(".maps"); /* two model slots; written by `klais model load` / the loader */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct klais_model_ctl);
} model_ctl SEC(".maps"); /* classifier on/off and the active slot */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct klais_model_scratch);
} model_scratch SEC(".maps"); /* classifier working memory; last packet's values */

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define IP_MF_ 0x2000
#define IP_OFFSET_ 0x1FFF

static __always_inline int record(struct klais_counters *c, enum klais_verdict v, int action)
{
	if (c)
		c->packets[v]++;
	return action;
}

/* A drop verdict, or a pass when enforcement is off (counted either way). */
static __always_inline int drop(struct klais_counters *c, enum klais_verdict v)
{
	return record(c, v, enforce ? XDP_DROP : XDP_PASS);
}

/* GCRA on a per-CPU slot: no other CPU touches it, no atomics needed. */
static __always_inline int cpu_take(__u32 slot, __u64 now, __u64 interval, __u64 tolerance)
{
	__u64 *tat = bpf_map_lookup_elem(&cpu_tat, &slot);
	__u64 t;

	if (!tat)
		return 0;
	t = *tat > now ? *tat : now;
	if (t - now > tolerance)
		return 0;
	*tat = t + interval;
	return 1;
}

/* GCRA on a shared device bucket with compare-and-swap. Gives up (refuses)
 * after a few lost races rather than risk minting a token. */
static __always_inline int device_take(struct klais_bucket *b, __u64 now, __u64 interval,
				       __u64 tolerance, struct klais_counters *c)
{
	int i;

#pragma unroll
	for (i = 0; i < 4; i++) {
		__u64 old = *(volatile __u64 *)&b->tat;
		__u64 t = old > now ? old : now;

		if (t - now > tolerance)
			return 0;
		if (__sync_val_compare_and_swap(&b->tat, old, t + interval) == old)
			return 1;
		if (c)
			c->bucket_retries++;
	}
	return 0;
}

static __always_inline void emit(struct klais_counters *c, __u64 hash, const __u8 *id,
				 __u32 kind, __u32 seq, const struct klais_settings *s)
{
	struct klais_event *e;
	__u64 now;

	if (!events_enabled)
		return;
	now = bpf_ktime_get_ns();
	if (!cpu_take(1, now, s->events_interval_ns, s->events_tolerance_ns)) {
		if (c)
			c->events_capped++;
		return;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		if (c)
			c->events_lost++;
		return;
	}
	e->ts_ns = now;
	e->device_hash = hash;
	__builtin_memcpy(e->device_id, id, KLAIS_DEVICE_ID_LEN);
	e->kind = kind;
	e->seq = seq;
	bpf_ringbuf_submit(e, 0);
	if (c)
		c->events_sent++;
}

static __always_inline int is_klais_port(__u16 port)
{
	int i;

#pragma unroll
	for (i = 0; i < KLAIS_MAX_PORTS; i++) {
		if (klais_ports[i] && klais_ports[i] == port)
			return 1;
	}
	return 0;
}

/* log2(v) in Q16 for v >= 1: integer part from the top bit, 16 bits of fraction. */
static __always_inline __s64 log2_fixed(__u32 v)
{
	__u32 msb = 0, t = v, frac;

	if (!v)
		return 0;
	if (t >= (1U << 16)) {
		t >>= 16;
		msb += 16;
	}
	if (t >= (1U << 8)) {
		t >>= 8;
		msb += 8;
	}
	if (t >= (1U << 4)) {
		t >>= 4;
		msb += 4;
	}
	if (t >= (1U << 2)) {
		t >>= 2;
		msb += 2;
	}
	if (t >= 2)
		msb += 1;
	if (msb >= 16)
		frac = (v >> (msb - 16)) & 0xffff;
	else
		frac = (v << (16 - msb)) & 0xffff;
	return ((__s64)msb << 16) | frac;
}

static __always_inline __s64 ema(__s64 avg, __s64 x)
{
	return avg + ((x - avg) >> KLAIS_EMA_SHIFT);
}

static __always_inline __s64 sabs(__s64 v)
{
	return v < 0 ? -v : v;
}

/* Updates (or creates) the flow and writes its features into sc->x. */
static __always_inline void flow_features(__u64 hash, __u64 now, __u32 len, __u32 seq,
					  struct klais_model_scratch *sc)
{
	struct klais_flow *f = bpf_map_lookup_elem(&flows, &hash);
	struct klais_flow fresh;
	__s64 x1 = (__s64)len << 16, x3 = 0, x5 = 0, x6 = KLAIS_LOG_IVAL_MAX;

	if (!f) {
		if (!sc->last_new_ns) {
			sc->ema_new_lival = KLAIS_LOG_IVAL_MAX;
		} else {
			__u64 ndt = now > sc->last_new_ns ? (now - sc->last_new_ns) / 1000 : 0;
			__s64 l;

			if (ndt > (1U << 27))
				ndt = 1U << 27;
			l = log2_fixed((__u32)ndt + 1);
			if (l > KLAIS_LOG_IVAL_MAX)
				l = KLAIS_LOG_IVAL_MAX;
			sc->ema_new_lival = ema(sc->ema_new_lival, l);
		}
		sc->last_new_ns = now;
		fresh.last_ns = now;
		fresh.last_seq = seq;
		fresh.num = 1;
		fresh.ema_len = x1;
		fresh.ema_back = 0;
		fresh.ema_lival = KLAIS_LOG_IVAL_MAX;
		bpf_map_update_elem(&flows, &hash, &fresh, BPF_ANY);
		f = &fresh;
	} else {
		__u64 dt = now > f->last_ns ? (now - f->last_ns) / 1000 : 0;
		__s32 d;

		if (dt > (1U << 27))
			dt = 1U << 27;
		x6 = log2_fixed((__u32)dt + 1);
		if (x6 > KLAIS_LOG_IVAL_MAX)
			x6 = KLAIS_LOG_IVAL_MAX;
		d = (__s32)(seq - f->last_seq);
		if (d > KLAIS_DSEQ_MAX)
			d = KLAIS_DSEQ_MAX;
		if (d < -KLAIS_DSEQ_MAX)
			d = -KLAIS_DSEQ_MAX;
		x5 = d <= 0 ? (1LL << 16) : 0;
		x3 = (__s64)d << 16;
		if (f->num < KLAIS_FLOW_NUM_MAX)
			f->num++;
		f->ema_len = ema(f->ema_len, x1);
		f->ema_back = ema(f->ema_back, x5);
		f->ema_lival = ema(f->ema_lival, x6);
		f->last_ns = now;
		f->last_seq = seq;
	}
	sc->x[0] = x1;
	sc->x[1] = (__s64)(seq < 65535 ? seq : 65535) << 16;
	sc->x[2] = x3;
	sc->x[3] = (__s64)f->num << 16;
	sc->x[4] = x5;
	sc->x[5] = x6;
	sc->x[6] = f->ema_len;
	sc->x[7] = f->ema_back;
	sc->x[8] = f->ema_lival;
	sc->x[9] = sabs(x1 - f->ema_len);
	sc->x[10] = sc->ema_new_lival;
	sc->x[11] = sabs(x6 - f->ema_lival);
}

static __always_inline __s64 quant_in(__s64 v, __s64 sig)
{
	__s64 q = (v * sig + (1LL << 31)) >> 32;

	if (q > 127)
		q = 127;
	if (q < -127)
		q = -127;
	return q;
}

/* Integer-only inference (see src/model/classifier.rs); returns the class. */
static __always_inline __u32 classify(const struct klais_model *m, struct klais_model_scratch *sc)
{
	int i, j;
	__u32 best = 0;
	__s64 qsum = 0;

#pragma unroll
	for (i = 0; i < KLAIS_MODEL_IN; i++) {
		__s64 v = sc->x[i], lo = m->norm_min[i], hi = m->norm_max[i];

		if (v < lo)
			v = lo;
		if (v > hi)
			v = hi;
		sc->n[i] = (__s64)(((__u64)(v - lo) * m->norm_recip[i]) >> 32);
		sc->q[i] = quant_in(sc->n[i], m->in_scale[0]);
		qsum += sc->q[i];
	}
	qsum <<= 7;
#pragma unroll
	for (j = 0; j < KLAIS_MODEL_H; j++) {
		__s64 acc = -qsum, y;

#pragma unroll
		for (i = 0; i < KLAIS_MODEL_IN; i++)
			acc += sc->q[i] * m->w1[j][i];
		y = ((acc * m->deq1[j] + (1LL << 15)) >> 16) + m->b1[j];
		sc->h1[j] = y < 0 ? 0 : y;
	}
	qsum = 0;
#pragma unroll
	for (i = 0; i < KLAIS_MODEL_H; i++) {
		sc->q[i] = quant_in(sc->h1[i], m->in_scale[1]);
		qsum += sc->q[i];
	}
	qsum <<= 7;
#pragma unroll
	for (j = 0; j < KLAIS_MODEL_H; j++) {
		__s64 acc = -qsum, y;

#pragma unroll
		for (i = 0; i < KLAIS_MODEL_H; i++)
			acc += sc->q[i] * m->w2[j][i];
		y = ((acc * m->deq2[j] + (1LL << 15)) >> 16) + m->b2[j];
		sc->h2[j] = y < 0 ? 0 : y;
	}
	qsum = 0;
#pragma unroll
	for (i = 0; i < KLAIS_MODEL_H; i++) {
		sc->q[i] = quant_in(sc->h2[i], m->in_scale[2]);
		qsum += sc->q[i];
	}
	qsum <<= 7;
#pragma unroll
	for (j = 0; j < KLAIS_MODEL_OUT; j++) {
		__s64 acc = -qsum;

#pragma unroll
		for (i = 0; i < KLAIS_MODEL_H; i++)
			acc += sc->q[i] * m->w3[j][i];
		sc->out[j] = ((acc * m->deq3[j] + (1LL << 15)) >> 16) + m->b3[j];
	}
#pragma unroll
	for (j = 1; j < KLAIS_MODEL_OUT; j++) {
		if (sc->out[j] > sc->out[best])
			best = j;
	}
	return best;
}

SEC("xdp")
int klais_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct klais_counters *c = bpf_map_lookup_elem(&counters, &zero);
	struct ethhdr *eth = data;
	struct udphdr *udp;
	__u8 *payload;
	__u16 proto;
	__u32 off, ulen;
	int i;

	if ((void *)(eth + 1) > data_end)
		return record(c, KLAIS_V_TRUNCATED, XDP_PASS);
	proto = eth->h_proto;
	off = sizeof(*eth);

#pragma unroll
	for (i = 0; i < 2; i++) {
		if (proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_)) {
			struct vlan_hdr *vh = data + off;

			if ((void *)(vh + 1) > data_end)
				return record(c, KLAIS_V_TRUNCATED, XDP_PASS);
			proto = vh->proto;
			off += sizeof(*vh);
		}
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + off;
		__u32 ihl;

		if ((void *)(ip + 1) > data_end)
			return record(c, KLAIS_V_TRUNCATED, XDP_PASS);
		if (ip->protocol != IPPROTO_UDP)
			return record(c, KLAIS_V_NOT_KLAIS, XDP_PASS);
		/* Later fragments carry no UDP header; the kernel reassembles. */
		if (ip->frag_off & bpf_htons(IP_MF_ | IP_OFFSET_))
			return record(c, KLAIS_V_NOT_KLAIS, XDP_PASS);
		ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip))
			return record(c, KLAIS_V_TRUNCATED, XDP_PASS);
		off += ihl;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > data_end)
			return record(c, KLAIS_V_TRUNCATED, XDP_PASS);
		/* Extension headers are not followed: such datagrams take the kernel path. */
		if (ip6->nexthdr != IPPROTO_UDP)
			return record(c, KLAIS_V_NOT_KLAIS, XDP_PASS);
		off += sizeof(*ip6);
	} else {
		return record(c, KLAIS_V_NOT_KLAIS, XDP_PASS);
	}

	/* Bound the offset for the verifier: two VLAN tags + IPv4 with options is at most 86. */
	if (off > 14 + 8 + 60)
		return record(c, KLAIS_V_TRUNCATED, XDP_PASS);
	udp = data + off;
	if ((void *)(udp + 1) > data_end)
		return record(c, KLAIS_V_TRUNCATED, XDP_PASS);
	if (!is_klais_port(bpf_ntohs(udp->dest)))
		return record(c, KLAIS_V_NOT_KLAIS, XDP_PASS);

	ulen = bpf_ntohs(udp->len);
	if (ulen < sizeof(*udp) + KLAIS_HEADER_LEN)
		return drop(c, KLAIS_V_TOO_SHORT);
	payload = (__u8 *)(udp + 1);
	if ((void *)(payload + KLAIS_HEADER_LEN) > data_end)
		return record(c, KLAIS_V_TRUNCATED, XDP_PASS);
	/* v1 and v2 share the id and sequence offsets; v2's flags and MAC are
	 * checked by the shard (it holds the keys). */
	if (payload[0] != (KLAIS_MAGIC_V1 >> 8) ||
	    (payload[1] != (KLAIS_MAGIC_V1 & 0xff) && payload[1] != (KLAIS_MAGIC_V2 & 0xff)))
		return drop(c, KLAIS_V_BAD_MAGIC);

	__u8 id[KLAIS_DEVICE_ID_LEN];
	__builtin_memcpy(id, payload + 2, KLAIS_DEVICE_ID_LEN);
	__u32 seq = ((__u32)payload[18] << 24) | ((__u32)payload[19] << 16) |
		    ((__u32)payload[20] << 8) | (__u32)payload[21];
	__u64 hash = klais_device_hash(id);

	struct klais_settings *s = bpf_map_lookup_elem(&settings, &zero);
	if (!s)
		return record(c, KLAIS_V_PASS, XDP_PASS);
	__u64 interval = s->device_interval_ns, tolerance = s->device_tolerance_ns;
	if (s->policy_entries) {
		struct klais_policy *pol = bpf_map_lookup_elem(&policy, &hash);

		if (pol) {
			if (pol->flags & KLAIS_POLICY_DENY)
				return drop(c, KLAIS_V_DENIED);
			if (pol->flags & KLAIS_POLICY_OVERRIDE) {
				interval = pol->interval_ns;
				tolerance = pol->tolerance_ns;
			}
		}
	}
	/*
	 * The cheap coarse clock when every bucket in play tolerates a tick of
	 * jitter (see klais_settings.coarse_tick_ns), else the precise one.
	 */
	__u64 now;
	{
		__u64 tick = s->coarse_tick_ns;

		if (tick && (!interval || tolerance >= tick) &&
		    (!s->global_interval_ns || s->global_tolerance_ns >= tick))
			now = bpf_ktime_get_coarse_ns();
		else
			now = bpf_ktime_get_ns();
	}

	/* The classifier, when on: features, inference, the class's action. */
	__u32 mark_class = 0xff, classified = 0;
	{
		struct klais_model_ctl *mc = bpf_map_lookup_elem(&model_ctl, &zero);

		if (mc && mc->enabled) {
			__u32 slot = mc->active & 1;
			struct klais_model *m = bpf_map_lookup_elem(&model, &slot);
			struct klais_model_scratch *sc = bpf_map_lookup_elem(&model_scratch, &zero);

			if (m && sc) {
				__u32 plen = ulen - sizeof(*udp) - KLAIS_HEADER_LEN;
				__u32 cls, act;

				/* Intervals need the precise clock (the coarse one ticks in ms). */
				__u64 fnow = bpf_ktime_get_ns();

				sc->now_ns = fnow;
				flow_features(hash, fnow, plen, seq, sc);
				cls = classify(m, sc) & (KLAIS_MODEL_OUT - 1);
				act = m->action[cls];
				sc->class = cls;
				sc->action = act;
				if (c)
					c->model_class[cls]++;
				if (act == KLAIS_ACT_DROP)
					return drop(c, KLAIS_V_MODEL_DROP);
				classified = 1;
				if (act == KLAIS_ACT_MARK)
					mark_class = cls;
			}
		}
	}

	__u64 tag = hash ? hash : 1;
	__u32 set_idx = (__u32)(tag >> 32) & bucket_set_mask;
	struct klais_bucket_set *set = bpf_map_lookup_elem(&buckets, &set_idx);
	struct klais_bucket *b = 0;
	int admitted;

	if (!set)
		return record(c, KLAIS_V_PASS, XDP_PASS);
#pragma unroll
	for (i = 0; i < KLAIS_BUCKET_WAYS; i++) {
		if (set->way[i].tag == tag) {
			b = &set->way[i];
			break;
		}
	}
	if (!b) {
		/*
		 * New device: take the way admitted least recently. A way whose
		 * `tat` is still ahead of `now` belongs to a device in debt (over
		 * its rate); handing it over would forgive that debt, so when every
		 * way is in debt the new device goes untracked instead (admitted,
		 * counted; the global budget still applies).
		 */
		struct klais_bucket *victim = &set->way[0];
		int tries;

#pragma unroll
		for (i = 1; i < KLAIS_BUCKET_WAYS; i++) {
			if (set->way[i].tat < victim->tat)
				victim = &set->way[i];
		}
		if (victim->tag && victim->tat > now) {
			if (c)
				c->bucket_untracked++;
			admitted = 1;
			goto global;
		}
#pragma unroll
		for (tries = 0; tries < 2 && !b; tries++) {
			__u64 old = *(volatile __u64 *)&victim->tag;

			if (old == tag) {
				b = victim; /* another CPU just claimed it for this device */
				break;
			}
			if (__sync_val_compare_and_swap(&victim->tag, old, tag) == old) {
				__u64 t0 = *(volatile __u64 *)&victim->tat;

				/* Start from an idle bucket unless a CPU already spent from it. */
				if (t0 > now)
					__sync_val_compare_and_swap(&victim->tat, t0, now);
				victim->last_seq = seq;
				victim->flags = 0;
				if (old && c)
					c->bucket_evictions++;
				emit(c, hash, id, KLAIS_EV_NEW_DEVICE, seq, s);
				b = victim;
			}
		}
		if (!b) {
			if (c)
				c->bucket_untracked++;
			admitted = 1;
			goto global;
		}
	}
	if (seq < b->last_seq && seq <= reset_window)
		emit(c, hash, id, KLAIS_EV_SEQ_RESET, seq, s);
	b->last_seq = seq;
	if (!interval) {
		/* No limit: `tat` only records when the device was last seen, for
		 * choosing which way a new device replaces. */
		b->tat = now;
		admitted = 1;
	} else {
		admitted = device_take(b, now, interval, tolerance, c);
	}
	if (!admitted) {
		if (!(b->flags & KLAIS_BUCKET_LIMITED_EVENT)) {
			b->flags |= KLAIS_BUCKET_LIMITED_EVENT;
			emit(c, hash, id, KLAIS_EV_RATE_LIMITED, seq, s);
		}
		return drop(c, KLAIS_V_RATE_LIMITED);
	}
	if (b->flags & KLAIS_BUCKET_LIMITED_EVENT)
		b->flags &= ~KLAIS_BUCKET_LIMITED_EVENT;

global:
	if (s->global_interval_ns &&
	    !cpu_take(0, now, s->global_interval_ns, s->global_tolerance_ns))
		return drop(c, KLAIS_V_GLOBAL_BUDGET);

	__u32 q = ctx->rx_queue_index;
	if (bpf_map_lookup_elem(&xsks, &q)) {
		/*
		 * While the classifier runs, every redirected frame carries its mark
		 * in front (the AF_XDP metadata area; 0xff = none) with the device
		 * hash's low bits. Off, nothing is written (~10 ns saved).
		 */
		if (mark_prefix) {
			/*
			 * Every frame carries the 8 bytes (the shard strips them
			 * unread when the tag is absent): without the classifier,
			 * tag 0. A frame with no headroom left is not redirected.
			 */
			if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct klais_xdp_meta)))
				return record(c, KLAIS_V_PASS, XDP_PASS);
			struct klais_xdp_meta *meta = (void *)(long)ctx->data;

			if ((void *)(meta + 1) > (void *)(long)ctx->data_end)
				return record(c, KLAIS_V_PASS, XDP_PASS);
			meta->tag = classified ? KLAIS_META_TAG : 0;
			meta->class = mark_class;
			meta->action = mark_class == 0xff ? KLAIS_ACT_PASS : KLAIS_ACT_MARK;
			meta->hash_lo = (__u32)hash;
			if (classified && c && mark_class != 0xff)
				c->model_marked++;
		} else if (classified &&
			   bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct klais_xdp_meta)) == 0) {
			struct klais_xdp_meta *meta = (void *)(long)ctx->data_meta;

			if ((void *)(meta + 1) <= (void *)(long)ctx->data) {
				meta->tag = KLAIS_META_TAG;
				meta->class = mark_class;
				meta->action = mark_class == 0xff ? KLAIS_ACT_PASS : KLAIS_ACT_MARK;
				meta->hash_lo = (__u32)hash;
				if (c && mark_class != 0xff)
					c->model_marked++;
			}
		}
		return record(c, KLAIS_V_REDIRECT, bpf_redirect_map(&xsks, q, XDP_PASS));
	}
	return record(c, KLAIS_V_PASS, XDP_PASS);
}
