/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types shared by the XDP program (klais.bpf.c) and the Rust loader. Rust sees
 * them through the skeleton libbpf-cargo generates into OUT_DIR (module
 * `types`); there is no hand-kept Rust copy.
 */
#ifndef KLAIS_H
#define KLAIS_H

#define KLAIS_MAX_PORTS 8
#define KLAIS_MAX_QUEUES 256

/* Every exit of the program is one of these; each has a per-CPU counter. */
enum klais_verdict {
	KLAIS_V_NOT_KLAIS = 0,	  /* not UDP to a klais port (ARP, TCP, other ports): XDP_PASS untouched */
	KLAIS_V_TRUNCATED = 1,	  /* headers end before UDP does: XDP_PASS, the kernel drops it */
	KLAIS_V_TOO_SHORT = 2,	  /* UDP payload shorter than the 22-byte v1 header: XDP_DROP */
	KLAIS_V_BAD_MAGIC = 3,	  /* first two payload bytes are not 0xAA55: XDP_DROP */
	KLAIS_V_DENIED = 4,	  /* device on the deny list: XDP_DROP */
	KLAIS_V_RATE_LIMITED = 5, /* device over its token bucket: XDP_DROP */
	KLAIS_V_GLOBAL_BUDGET = 6, /* global budget exceeded: XDP_DROP */
	KLAIS_V_REDIRECT = 7,	  /* to the AF_XDP socket of the receive queue */
	KLAIS_V_PASS = 8,	  /* no socket on the queue: kernel UDP path */
	KLAIS_V_MODEL_DROP = 9,	  /* the classifier's class has action drop: XDP_DROP */
	KLAIS_V__COUNT = 10,
};

/* The verdicts that refuse a packet (XDP_DROP; counted and passed when enforcement is off). */
#define KLAIS_V_DROPS                                                                  \
	((1U << KLAIS_V_TOO_SHORT) | (1U << KLAIS_V_BAD_MAGIC) | (1U << KLAIS_V_DENIED) | \
	 (1U << KLAIS_V_RATE_LIMITED) | (1U << KLAIS_V_GLOBAL_BUDGET) |                  \
	 (1U << KLAIS_V_MODEL_DROP))

/* Per-CPU counters, one slot per verdict. Written by the program, read by `klais xdp stats`. */
struct klais_counters {
	__u64 packets[KLAIS_V__COUNT];
	__u64 events_sent;
	__u64 events_capped;  /* over the events-per-second cap: not sent */
	__u64 events_lost;    /* ring buffer full: not sent */
	__u64 bucket_retries; /* compare-and-swap retries on a device bucket */
	__u64 bucket_evictions; /* devices replaced in a full set */
	__u64 bucket_untracked; /* no way free of debt, or lost the race twice: admitted without a bucket */
	__u64 model_class[4];	/* packets the classifier put in each class */
	__u64 model_marked;	/* redirected with a mark in the AF_XDP metadata */
};

/*
 * Run-time settings (array map, one entry), written by the loader / control
 * core through one typed Rust API that derives the GCRA form from rates:
 * interval = 1e9 / rate ns, tolerance = (burst - 1) * interval. Interval 0 =
 * no limit. The global budget and the event cap are per CPU (their share).
 */
struct klais_settings {
	__u64 device_interval_ns;
	__u64 device_tolerance_ns;
	__u64 global_interval_ns;  /* per CPU */
	__u64 global_tolerance_ns; /* per CPU */
	__u64 events_interval_ns;  /* per CPU */
	__u64 events_tolerance_ns; /* per CPU */
	/* The operator's figures the above were derived from, for read-back. */
	__u64 device_rate_pps;
	__u64 device_burst;
	__u64 global_budget_pps;
	__u64 global_burst;
	__u64 events_per_sec;
	/* Entries in the policy map; 0 lets the program skip that lookup. */
	__u64 policy_entries;
	/*
	 * Resolution of the coarse clock (one tick, from clock_getres). A bucket
	 * whose tolerance covers a tick reads the coarse clock (~2 ns) instead of
	 * the precise one (~20 ns in a VM) without admitting less than its rate;
	 * 0 = always precise.
	 */
	__u64 coarse_tick_ns;
};

#define KLAIS_POLICY_DENY 1     /* drop everything from this device */
#define KLAIS_POLICY_OVERRIDE 2 /* use this entry's rate instead of the default */

/*
 * Per-device policy (hash map keyed by the device hash): the deny list and
 * rate overrides in one lookup. GCRA form as above.
 */
struct klais_policy {
	__u64 flags;	   /* KLAIS_POLICY_* */
	__u64 interval_ns; /* with OVERRIDE: 0 = no limit for this device */
	__u64 tolerance_ns;
	__u64 rate_pps;
	__u64 burst;
};

/*
 * Per-device state. `tag` is the device hash (0 = empty way); `tat` is the
 * GCRA theoretical arrival time in ns: one 64-bit word updated with
 * compare-and-swap, so two CPUs can never both spend the same token.
 */
struct klais_bucket {
	__u64 tag;
	__u64 tat;
	__u32 last_seq; /* for reset events; racy by design, only a hint */
	__u32 flags;	/* KLAIS_BUCKET_* */
};

#define KLAIS_BUCKET_WAYS 4

/*
 * One set of the device table: an array indexed by the device hash's high
 * bits, four ways each, the least recently admitted way replaced when a new
 * device arrives (a bounded, LRU-approximating hash table; the array lookup
 * is inlined by the verifier, where a hash map's costs a call and a jhash).
 */
struct klais_bucket_set {
	struct klais_bucket way[KLAIS_BUCKET_WAYS];
};

#define KLAIS_BUCKET_LIMITED_EVENT 1 /* a rate-limited event was sent for this device */

enum klais_event_kind {
	KLAIS_EV_NEW_DEVICE = 1,
	KLAIS_EV_SEQ_RESET = 2,
	KLAIS_EV_RATE_LIMITED = 3,
};

/* Ring-buffer event (sampled, capped per second). */
struct klais_event {
	__u64 ts_ns;
	__u64 device_hash;
	__u8 device_id[16];
	__u32 kind; /* enum klais_event_kind */
	__u32 seq;
};

/*
 * The in-kernel classifier (Hara & Sasabe): per-flow features in 64-bit fixed
 * point with 16 fractional bits, an int8 MLP 12 -> 16 -> 16 -> 4 with one
 * calibrated scale per layer input and one per weight column. The Rust mirror
 * (src/model/features.rs, src/model/classifier.rs) computes the same bits.
 */
#define KLAIS_MODEL_IN 12
#define KLAIS_MODEL_H 16
#define KLAIS_MODEL_OUT 4
#define KLAIS_FIXED_FRAC 16
#define KLAIS_LOG_IVAL_MAX (26LL << 16)
#define KLAIS_FLOW_NUM_MAX 64
#define KLAIS_DSEQ_MAX 1024
#define KLAIS_EMA_SHIFT 3

/* What the program does with a class. */
enum klais_model_action {
	KLAIS_ACT_PASS = 0,
	KLAIS_ACT_DROP = 1,
	KLAIS_ACT_MARK = 2, /* pass, with the class in the AF_XDP metadata -> Kafka header */
};

/* Per-flow (per-device) state, LRU hash keyed by the device hash. */
struct klais_flow {
	__u64 last_ns;
	__u32 last_seq;
	__u32 num;
	__s64 ema_len;
	__s64 ema_back;
	__s64 ema_lival;
};

/*
 * One model (array map of two slots: `klais model load` fills the idle slot,
 * then flips `klais_model_ctl.active`, so a packet never sees half a model).
 */
struct klais_model {
	__s64 norm_min[KLAIS_MODEL_IN];
	__s64 norm_max[KLAIS_MODEL_IN];
	__u64 norm_recip[KLAIS_MODEL_IN]; /* floor(2^48 / (max - min)): no division per packet */
	__s64 in_scale[3]; /* sigma of each layer's input, Q16 */
	__s64 deq1[KLAIS_MODEL_H]; /* round(2^32 / (sigma * sigma_w)) per column */
	__s64 b1[KLAIS_MODEL_H];   /* Q16 */
	__s64 deq2[KLAIS_MODEL_H];
	__s64 b2[KLAIS_MODEL_H];
	__s64 deq3[KLAIS_MODEL_OUT];
	__s64 b3[KLAIS_MODEL_OUT];
	/*
	 * int8 weights [out][in], stored as w + 128 in a byte: a zero-extending
	 * load is one BPF instruction where a sign-extending one is three, and
	 * sum(q * (w + 128)) - 128 * sum(q) is the same integer.
	 */
	__u8 w1[KLAIS_MODEL_H][KLAIS_MODEL_IN];
	__u8 w2[KLAIS_MODEL_H][KLAIS_MODEL_H];
	__u8 w3[KLAIS_MODEL_OUT][KLAIS_MODEL_H];
	__u8 action[KLAIS_MODEL_OUT]; /* enum klais_model_action per class */
	__u32 version;
};

struct klais_model_ctl {
	__u32 enabled; /* 0: classifier off (no flow state, no cost beyond one lookup) */
	__u32 active;  /* slot of `model` in use */
};

/*
 * Per-CPU working memory of the classifier (the BPF stack is too small for
 * it), left holding the last packet's inputs and outputs: tests compare
 * them with the Rust int8 path bit for bit.
 */
struct klais_model_scratch {
	__u64 now_ns;
	__s64 x[KLAIS_MODEL_IN];
	__s64 n[KLAIS_MODEL_IN];
	__s64 q[KLAIS_MODEL_H];
	__s64 h1[KLAIS_MODEL_H];
	__s64 h2[KLAIS_MODEL_H];
	__s64 out[KLAIS_MODEL_OUT];
	__u32 class;
	__u32 action;
	/* Kept across packets: new flows' arrival on this CPU (feature x11). */
	__u64 last_new_ns;
	__s64 ema_new_lival;
};

/*
 * AF_XDP metadata in front of every frame redirected while the classifier
 * runs: its class (0xff: not a marked class) and action, and the low 32 bits
 * of the device hash, which the shard compares with the frame's own: a stale
 * tag left in a reused frame's headroom does not pass for this frame's mark.
 */
#define KLAIS_META_TAG 0xC1A5
struct klais_xdp_meta {
	__u16 tag;
	__u8 class;
	__u8 action;
	__u32 hash_lo;
};

#endif /* KLAIS_H */
