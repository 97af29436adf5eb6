// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * klais XDP filter (DESIGN.md section 4).
 *
 * Parses Ethernet (up to two VLAN tags, 802.1Q / 802.1ad), IPv4 (with options)
 * or IPv6, and UDP. Only UDP datagrams to a configured klais port are klais
 * traffic; everything else leaves with XDP_PASS, untouched (ARP, SSH, the
 * operator's own session). For klais traffic, in this order:
 *   too short -> drop; bad magic -> drop; deny list -> drop;
 *   classifier's class has action drop -> drop (when a model is on);
 *   per-device token bucket over rate -> drop; global budget -> drop;
 *   else redirect to the AF_XDP socket of the receive queue, or pass to the
 *   kernel UDP path when no socket is bound there.
 * Every exit goes through record(): every verdict has a per-CPU counter.
 *
 * The file reads top down: settings and maps; header parsing over a cursor;
 * the counted exits and the steps' shared types; token buckets and events;
 * the classifier; the verdict steps; and last the entry point, klais_xdp(),
 * which is the order above in one screen.
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

/*
 * Header parsing over a cursor, after xdp-tools' headers/xdp/parsing_helpers.h:
 * each parse_*() checks that its header lies inside the packet, moves the
 * cursor past it, hands it back through the last argument and returns the
 * next protocol (or a length), or -1 when the header is cut short. They know
 * no klais verdicts; parse_to_udp() and parse_klais_hdr() turn their results
 * into verdicts.
 */
struct hdr_cursor {
	void *pos;
};

struct vlan_hdr {
	__be16 h_vlan_TCI;
	__be16 h_vlan_encapsulated_proto;
};

/* 802.1Q and 802.1ad (QinQ) tags; more than two are not followed. */
#define VLAN_MAX_DEPTH 2

/* Fragment bits of iphdr.frag_off (the kernel's IP_MF / IP_OFFSET are not uapi). */
#define IP_MF_ 0x2000
#define IP_OFFSET_ 0x1FFF

static __always_inline int proto_is_vlan(__u16 h_proto)
{
	return h_proto == bpf_htons(ETH_P_8021Q) || h_proto == bpf_htons(ETH_P_8021AD);
}

/* Ethernet and up to VLAN_MAX_DEPTH VLAN tags. Returns the EtherType after
 * the tags (network byte order), or -1 when a header is cut short. */
static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end,
					struct ethhdr **ethhdr)
{
	struct ethhdr *eth = nh->pos;
	struct vlan_hdr *vlh;
	__u16 h_proto;
	int i;

	if ((void *)(eth + 1) > data_end)
		return -1;
	*ethhdr = eth;
	vlh = (void *)(eth + 1);
	h_proto = eth->h_proto;
#pragma unroll
	for (i = 0; i < VLAN_MAX_DEPTH; i++) {
		if (!proto_is_vlan(h_proto))
			break;
		if ((void *)(vlh + 1) > data_end)
			return -1;
		h_proto = vlh->h_vlan_encapsulated_proto;
		vlh++;
	}
	nh->pos = vlh;
	return h_proto;
}

/*
 * IPv4. Returns the transport protocol, or -1 when the fixed header is cut
 * short. The cursor moves past the options by the header's own length field,
 * unchecked: the caller refuses ihl < 5 once it knows it reads on (so a
 * non-UDP datagram or a fragment with a bad length is not_klais, not
 * truncated).
 */
static __always_inline int parse_iphdr(struct hdr_cursor *nh, void *data_end,
				       struct iphdr **iphdr)
{
	struct iphdr *iph = nh->pos;

	if ((void *)(iph + 1) > data_end)
		return -1;
	*iphdr = iph;
	nh->pos += iph->ihl * 4;
	return iph->protocol;
}

/* Any fragment, first or later: the kernel reassembles it. */
static __always_inline int ip_is_fragment(const struct iphdr *iph)
{
	return (iph->frag_off & bpf_htons(IP_MF_ | IP_OFFSET_)) != 0;
}

/* IPv6 (extension headers are not followed). Returns the next header, or -1
 * when the header is cut short. */
static __always_inline int parse_ip6hdr(struct hdr_cursor *nh, void *data_end,
					struct ipv6hdr **ip6hdr)
{
	struct ipv6hdr *ip6h = nh->pos;

	if ((void *)(ip6h + 1) > data_end)
		return -1;
	*ip6hdr = ip6h;
	nh->pos = ip6h + 1;
	return ip6h->nexthdr;
}

/* UDP. Returns the datagram length its header states (header included), or
 * -1 when the header is cut short. */
static __always_inline int parse_udphdr(struct hdr_cursor *nh, void *data_end,
					struct udphdr **udphdr)
{
	struct udphdr *udph = nh->pos;

	if ((void *)(udph + 1) > data_end)
		return -1;
	*udphdr = udph;
	nh->pos = udph + 1;
	return bpf_ntohs(udph->len);
}

/*
 * Verdicts. Every exit of the program returns record(): every verdict has a
 * per-CPU counter. The steps below return a verdict, or KLAIS_V_CONTINUE to
 * hand the packet to the next step.
 */
#define KLAIS_V_CONTINUE KLAIS_V__COUNT /* no verdict yet (not a counter slot) */

/* The one counted exit. */
static __always_inline int record(struct klais_counters *c, enum klais_verdict v, int action)
{
	if (c)
		c->packets[v]++;
	return action;
}

/* Exit with the action of any verdict but redirect: a drop verdict
 * (KLAIS_V_DROPS, klais.h) drops, or passes when enforcement is off (counted
 * either way); the others pass. */
static __always_inline int verdict(struct klais_counters *c, enum klais_verdict v)
{
	return record(c, v, ((KLAIS_V_DROPS >> v) & 1) && enforce ? XDP_DROP : XDP_PASS);
}

/* Out of line, as the compiler chose for the single-function original: the
 * id stays one 16-byte array on the stack. Inlined, its bytes stay in
 * registers until the events copy them, spilled one per 8-byte slot across
 * the classifier: over the 512-byte stack. */
static __noinline __u64 device_hash(const __u8 *id)
{
	return klais_device_hash(id);
}

/* What the steps learn about a klais packet. */
struct klais_pkt {
	__u8 id[KLAIS_DEVICE_ID_LEN]; /* copied out of the packet: events carry it */
	__u32 seq;
	__u32 plen;	  /* JSON payload length, from the UDP header */
	__u64 hash;	  /* FNV-1a 64 of id */
	__u32 classified; /* the classifier ran and passed it */
	__u32 mark_class; /* the class to mark in the AF_XDP metadata; 0xff = none */
};

/* Device rate in GCRA form (klais_settings, or the device's policy override). */
struct klais_limit {
	__u64 interval;
	__u64 tolerance;
};

/*
 * Ethernet (and VLAN tags), IPv4 or IPv6, to the UDP header. Anything else
 * is not klais traffic; headers cut short pass too (the kernel drops them).
 */
static __always_inline enum klais_verdict parse_to_udp(struct hdr_cursor *nh, void *data_end,
						      struct udphdr **udph)
{
	struct ethhdr *eth;
	struct iphdr *iph;
	struct ipv6hdr *ip6h;
	int proto = parse_ethhdr(nh, data_end, &eth);

	if (proto < 0)
		return KLAIS_V_TRUNCATED;
	if (proto == bpf_htons(ETH_P_IP)) {
		proto = parse_iphdr(nh, data_end, &iph);
		if (proto < 0)
			return KLAIS_V_TRUNCATED;
		if (proto != IPPROTO_UDP || ip_is_fragment(iph))
			return KLAIS_V_NOT_KLAIS;
		if (iph->ihl < 5)
			return KLAIS_V_TRUNCATED;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		proto = parse_ip6hdr(nh, data_end, &ip6h);
		if (proto < 0)
			return KLAIS_V_TRUNCATED;
		/* Extension headers are not followed: such datagrams take the kernel path. */
		if (proto != IPPROTO_UDP)
			return KLAIS_V_NOT_KLAIS;
	} else {
		return KLAIS_V_NOT_KLAIS;
	}
	if (parse_udphdr(nh, data_end, udph) < 0)
		return KLAIS_V_TRUNCATED;
	return KLAIS_V_CONTINUE;
}

/*
 * The klais header of a datagram to a klais port: its id, sequence and the
 * id's hash into *p. v1 and v2 share the id and sequence offsets; v2's flags
 * and MAC are checked by the shard (it holds the keys).
 */
static __always_inline enum klais_verdict parse_klais_hdr(struct hdr_cursor *nh, void *data_end,
							 const struct udphdr *udph,
							 struct klais_pkt *p)
{
	__u32 ulen = bpf_ntohs(udph->len);
	__u8 *h = nh->pos;

	if (ulen < sizeof(*udph) + KLAIS_HEADER_LEN)
		return KLAIS_V_TOO_SHORT;
	if ((void *)(h + KLAIS_HEADER_LEN) > data_end)
		return KLAIS_V_TRUNCATED;
	if (h[0] != (KLAIS_MAGIC_V1 >> 8) ||
	    (h[1] != (KLAIS_MAGIC_V1 & 0xff) && h[1] != (KLAIS_MAGIC_V2 & 0xff)))
		return KLAIS_V_BAD_MAGIC;
	__builtin_memcpy(p->id, h + 2, KLAIS_DEVICE_ID_LEN);
	p->seq = ((__u32)h[18] << 24) | ((__u32)h[19] << 16) | ((__u32)h[20] << 8) | (__u32)h[21];
	p->plen = ulen - sizeof(*udph) - KLAIS_HEADER_LEN;
	p->hash = device_hash(p->id);
	p->classified = 0;
	p->mark_class = 0xff;
	return KLAIS_V_CONTINUE;
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

/* A sampled event about the packet's device, within the per-CPU event cap. */
static __always_inline void emit(struct klais_counters *c, const struct klais_settings *s,
				 const struct klais_pkt *p, __u32 kind)
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
	e->device_hash = p->hash;
	__builtin_memcpy(e->device_id, p->id, KLAIS_DEVICE_ID_LEN);
	e->kind = kind;
	e->seq = p->seq;
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

/* The device's policy entry, when the map has any: on the deny list, or its own rate. */
static __always_inline enum klais_verdict apply_policy(const struct klais_settings *s, __u64 hash,
						      struct klais_limit *lim)
{
	struct klais_policy *pol;

	if (!s->policy_entries)
		return KLAIS_V_CONTINUE;
	pol = bpf_map_lookup_elem(&policy, &hash);
	if (!pol)
		return KLAIS_V_CONTINUE;
	if (pol->flags & KLAIS_POLICY_DENY)
		return KLAIS_V_DENIED;
	if (pol->flags & KLAIS_POLICY_OVERRIDE) {
		lim->interval = pol->interval_ns;
		lim->tolerance = pol->tolerance_ns;
	}
	return KLAIS_V_CONTINUE;
}

/*
 * The cheap coarse clock when every bucket in play tolerates a tick of
 * jitter (see klais_settings.coarse_tick_ns), else the precise one.
 */
static __always_inline __u64 clock_now(const struct klais_settings *s, const struct klais_limit *lim)
{
	__u64 tick = s->coarse_tick_ns;

	if (tick && (!lim->interval || lim->tolerance >= tick) &&
	    (!s->global_interval_ns || s->global_tolerance_ns >= tick))
		return bpf_ktime_get_coarse_ns();
	return bpf_ktime_get_ns();
}

/* The classifier, when on: features, inference, the class's action. */
static __always_inline enum klais_verdict run_classifier(struct klais_counters *c,
							struct klais_pkt *p)
{
	__u32 zero = 0, slot, cls, act;
	struct klais_model_ctl *mc = bpf_map_lookup_elem(&model_ctl, &zero);
	struct klais_model_scratch *sc;
	struct klais_model *m;
	__u64 now;

	if (!mc || !mc->enabled)
		return KLAIS_V_CONTINUE;
	slot = mc->active & 1;
	m = bpf_map_lookup_elem(&model, &slot);
	sc = bpf_map_lookup_elem(&model_scratch, &zero);
	if (!m || !sc)
		return KLAIS_V_CONTINUE;
	/* Intervals need the precise clock (the coarse one ticks in ms). */
	now = bpf_ktime_get_ns();
	sc->now_ns = now;
	flow_features(p->hash, now, p->plen, p->seq, sc);
	cls = classify(m, sc) & (KLAIS_MODEL_OUT - 1);
	act = m->action[cls];
	sc->class = cls;
	sc->action = act;
	if (c)
		c->model_class[cls]++;
	if (act == KLAIS_ACT_DROP)
		return KLAIS_V_MODEL_DROP;
	p->classified = 1;
	if (act == KLAIS_ACT_MARK)
		p->mark_class = cls;
	return KLAIS_V_CONTINUE;
}

/* The way holding the device, or NULL. */
static __always_inline struct klais_bucket *find_way(struct klais_bucket_set *set, __u64 tag)
{
	int i;

#pragma unroll
	for (i = 0; i < KLAIS_BUCKET_WAYS; i++) {
		if (set->way[i].tag == tag)
			return &set->way[i];
	}
	return 0;
}

/*
 * New device: take the way admitted least recently. A way whose `tat` is
 * still ahead of `now` belongs to a device in debt (over its rate); handing
 * it over would forgive that debt, so when every way is in debt the new
 * device goes untracked instead (NULL: admitted, counted; the global budget
 * still applies). NULL too after losing the race for the way twice.
 */
static __always_inline struct klais_bucket *claim_way(struct klais_counters *c,
						      const struct klais_settings *s,
						      struct klais_bucket_set *set, __u64 tag,
						      const struct klais_pkt *p, __u64 now)
{
	struct klais_bucket *victim = &set->way[0];
	int i, tries;

#pragma unroll
	for (i = 1; i < KLAIS_BUCKET_WAYS; i++) {
		if (set->way[i].tat < victim->tat)
			victim = &set->way[i];
	}
	if (victim->tag && victim->tat > now)
		return 0;
#pragma unroll
	for (tries = 0; tries < 2; tries++) {
		__u64 old = *(volatile __u64 *)&victim->tag;

		if (old == tag)
			return victim; /* another CPU just claimed it for this device */
		if (__sync_val_compare_and_swap(&victim->tag, old, tag) == old) {
			__u64 t0 = *(volatile __u64 *)&victim->tat;

			/* Start from an idle bucket unless a CPU already spent from it. */
			if (t0 > now)
				__sync_val_compare_and_swap(&victim->tat, t0, now);
			victim->last_seq = p->seq;
			victim->flags = 0;
			if (old && c)
				c->bucket_evictions++;
			emit(c, s, p, KLAIS_EV_NEW_DEVICE);
			return victim;
		}
	}
	return 0;
}

/*
 * The device's token bucket: KLAIS_V_RATE_LIMITED over its rate. A device
 * without a way (untracked) is admitted. With no bucket set to look in, the
 * packet passes to the kernel at once (KLAIS_V_PASS).
 */
static __always_inline enum klais_verdict device_admit(struct klais_counters *c,
						      const struct klais_settings *s,
						      const struct klais_pkt *p,
						      const struct klais_limit *lim, __u64 now)
{
	__u64 tag = p->hash ? p->hash : 1;
	__u32 set_idx = (__u32)(tag >> 32) & bucket_set_mask;
	struct klais_bucket_set *set = bpf_map_lookup_elem(&buckets, &set_idx);
	struct klais_bucket *b;
	int admitted;

	if (!set)
		return KLAIS_V_PASS;
	b = find_way(set, tag);
	if (!b)
		b = claim_way(c, s, set, tag, p, now);
	if (!b) {
		if (c)
			c->bucket_untracked++;
		return KLAIS_V_CONTINUE;
	}
	if (p->seq < b->last_seq && p->seq <= reset_window)
		emit(c, s, p, KLAIS_EV_SEQ_RESET);
	b->last_seq = p->seq;
	if (!lim->interval) {
		/* No limit: `tat` only records when the device was last seen, for
		 * choosing which way a new device replaces. */
		b->tat = now;
		admitted = 1;
	} else {
		admitted = device_take(b, now, lim->interval, lim->tolerance, c);
	}
	if (!admitted) {
		if (!(b->flags & KLAIS_BUCKET_LIMITED_EVENT)) {
			b->flags |= KLAIS_BUCKET_LIMITED_EVENT;
			emit(c, s, p, KLAIS_EV_RATE_LIMITED);
		}
		return KLAIS_V_RATE_LIMITED;
	}
	if (b->flags & KLAIS_BUCKET_LIMITED_EVENT)
		b->flags &= ~KLAIS_BUCKET_LIMITED_EVENT;
	return KLAIS_V_CONTINUE;
}

/* This CPU's share of the global budget. */
static __always_inline enum klais_verdict global_admit(const struct klais_settings *s, __u64 now)
{
	if (s->global_interval_ns &&
	    !cpu_take(0, now, s->global_interval_ns, s->global_tolerance_ns))
		return KLAIS_V_GLOBAL_BUDGET;
	return KLAIS_V_CONTINUE;
}

/* The mark's 8 bytes: class, action and the device hash's low bits, tagged
 * when the classifier ran. */
static __always_inline void fill_mark(struct klais_xdp_meta *meta, struct klais_counters *c,
				      const struct klais_pkt *p)
{
	meta->tag = p->classified ? KLAIS_META_TAG : 0;
	meta->class = p->mark_class;
	meta->action = p->mark_class == 0xff ? KLAIS_ACT_PASS : KLAIS_ACT_MARK;
	meta->hash_lo = (__u32)p->hash;
	if (p->classified && c && p->mark_class != 0xff)
		c->model_marked++;
}

/*
 * While the classifier runs, every redirected frame carries its mark in
 * front (the AF_XDP metadata area; 0xff = none) with the device hash's low
 * bits. Off, nothing is written (~10 ns saved).
 */
static __always_inline void mark_in_meta(struct xdp_md *ctx, struct klais_counters *c,
					 const struct klais_pkt *p)
{
	struct klais_xdp_meta *meta;

	if (!p->classified || bpf_xdp_adjust_meta(ctx, -(int)sizeof(*meta)))
		return;
	meta = (void *)(long)ctx->data_meta;
	if ((void *)(meta + 1) <= (void *)(long)ctx->data)
		fill_mark(meta, c, p);
}

/*
 * With mark_prefix, every frame carries the 8 bytes in front (the shard
 * strips them, unread when the tag is absent: without the classifier, tag 0).
 * Returns 0 for a frame with no headroom left: it is not redirected.
 */
static __always_inline int mark_in_prefix(struct xdp_md *ctx, struct klais_counters *c,
					  const struct klais_pkt *p)
{
	struct klais_xdp_meta *meta;

	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(*meta)))
		return 0;
	meta = (void *)(long)ctx->data;
	if ((void *)(meta + 1) > (void *)(long)ctx->data_end)
		return 0;
	fill_mark(meta, c, p);
	return 1;
}

/* To the AF_XDP socket of the receive queue, with the classifier's mark, or
 * to the kernel UDP path when no socket is bound there. */
static __always_inline int deliver(struct xdp_md *ctx, struct klais_counters *c,
				   const struct klais_pkt *p)
{
	__u32 q = ctx->rx_queue_index;

	if (!bpf_map_lookup_elem(&xsks, &q))
		return verdict(c, KLAIS_V_PASS);
	if (mark_prefix) {
		if (!mark_in_prefix(ctx, c, p))
			return verdict(c, KLAIS_V_PASS);
	} else {
		mark_in_meta(ctx, c, p);
	}
	return record(c, KLAIS_V_REDIRECT, bpf_redirect_map(&xsks, q, XDP_PASS));
}

SEC("xdp")
int klais_xdp(struct xdp_md *ctx)
{
	struct hdr_cursor nh = { .pos = (void *)(long)ctx->data };
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct klais_counters *c = bpf_map_lookup_elem(&counters, &zero);
	struct klais_settings *s;
	struct klais_limit lim;
	struct klais_pkt p;
	struct udphdr *udph;
	enum klais_verdict v;
	__u64 now;

	/* Only UDP to a klais port is ours: everything else passes untouched. */
	v = parse_to_udp(&nh, data_end, &udph);
	if (v != KLAIS_V_CONTINUE)
		return verdict(c, v);
	if (!is_klais_port(bpf_ntohs(udph->dest)))
		return verdict(c, KLAIS_V_NOT_KLAIS);

	/* The klais header: too short or a bad magic is dropped, cut short passes. */
	v = parse_klais_hdr(&nh, data_end, udph, &p);
	if (v != KLAIS_V_CONTINUE)
		return verdict(c, v);

	/* Rates and budgets (the loader writes them before attaching). */
	s = bpf_map_lookup_elem(&settings, &zero);
	if (!s)
		return verdict(c, KLAIS_V_PASS);
	lim.interval = s->device_interval_ns;
	lim.tolerance = s->device_tolerance_ns;

	/* Deny list first; an override replaces the device rate. */
	v = apply_policy(s, p.hash, &lim);
	if (v != KLAIS_V_CONTINUE)
		return verdict(c, v);
	now = clock_now(s, &lim);

	/* The classifier, when a model is on, may drop by class. */
	v = run_classifier(c, &p);
	if (v != KLAIS_V_CONTINUE)
		return verdict(c, v);

	/* The device's token bucket, then this CPU's share of the global budget. */
	v = device_admit(c, s, &p, &lim, now);
	if (v != KLAIS_V_CONTINUE)
		return verdict(c, v);

	v = global_admit(s, now);
	if (v != KLAIS_V_CONTINUE)
		return verdict(c, v);

	return deliver(ctx, c, &p);
}
