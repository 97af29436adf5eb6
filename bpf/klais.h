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
	KLAIS_V__COUNT = 9,
};

/* Per-CPU counters, one slot per verdict. Written by the program, read by `klais xdp stats`. */
struct klais_counters {
	__u64 packets[KLAIS_V__COUNT];
	__u64 events_sent;
	__u64 events_capped;  /* over the events-per-second cap: not sent */
	__u64 events_lost;    /* ring buffer full: not sent */
	__u64 bucket_retries; /* compare-and-swap retries on a device bucket */
	__u64 bucket_evictions; /* devices replaced in a full set */
	__u64 bucket_untracked; /* no way free of debt, or lost the race twice: admitted without a bucket */
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

#endif /* KLAIS_H */
