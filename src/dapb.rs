//! Dynamic Adaptive Packet Buffering (DAPB, papers/002): pure logic, no I/O.
//! The librdkafka batcher applies it on the output core; with the native
//! client the shards apply it as they close Kafka batches, and the output core
//! measures C(t) and publishes the parameters to them ([`KnobFeed`]).
//!
//! - eq. 1: the buffer size B(t) is B_min for the latency-sensitive class, B_max
//!   for the throughput class, and f(C(t)) for the adaptive class;
//! - eq. 2: f(C(t)) = B_min + α·RTT(t) + β·ρ(t) + γ·J(t), clamped to
//!   [B_min, B_max] (eq. 5's bounds);
//! - eq. 3: T(t) = T_base + δ·RTT(t) + ε·ρ(t) + ξ·J(t), clamped to [T_min, T_max];
//! - eq. 6: a buffer whose mean urgency U(t) exceeds U_th is sent at once.
//!
//! RTT(t) is the smoothed delivery round trip (produce to delivery report) and
//! J(t) its mean deviation (RFC 6298 estimators, gains 1/8 and 1/4); ρ(t) is the
//! share of failed or retried sends, in percent, smoothed per statistics window.
//! The paper's eq. 4 (a learned predictor of B(t)) is not used: eq. 2 with
//! measured inputs is what klais ships, and the bounds of eq. 5 apply to it.

use crate::config::Dapb as DapbConfig;

/// Batching class of a device (eq. 1's L(t)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// L = 1: B(t) = B_min.
    Latency,
    /// L = 0: B(t) = B_max.
    Throughput,
    /// B(t) = f(C(t)) (eq. 2).
    Adaptive,
}

impl Class {
    /// Parses `output.kafka.default_class` (validated by the config).
    pub fn from_name(name: &str) -> Class {
        match name {
            "latency" => Class::Latency,
            "throughput" => Class::Throughput,
            _ => Class::Adaptive,
        }
    }
}

/// Network condition estimates C(t).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Conditions {
    /// Smoothed delivery round trip, microseconds (0 until the first sample).
    pub rtt_us: f64,
    /// Mean deviation of the round trip (jitter), microseconds.
    pub jitter_us: f64,
    /// Failed or retried sends, percent, smoothed.
    pub error_pct: f64,
    samples: u64,
}

impl Conditions {
    /// Feeds one delivery round trip (RFC 6298: SRTT gain 1/8, RTTVAR gain 1/4).
    pub fn on_rtt(&mut self, sample_us: f64) {
        if self.samples == 0 {
            self.rtt_us = sample_us;
            self.jitter_us = sample_us / 2.0;
        } else {
            self.jitter_us = 0.75 * self.jitter_us + 0.25 * (self.rtt_us - sample_us).abs();
            self.rtt_us = 0.875 * self.rtt_us + 0.125 * sample_us;
        }
        self.samples += 1;
    }

    /// Feeds one statistics window: `sent` messages, of which `failed` failed or
    /// were retried. Windows without sends leave ρ unchanged.
    pub fn on_window(&mut self, sent: u64, failed: u64) {
        if sent == 0 && failed == 0 {
            return;
        }
        let pct = 100.0 * failed as f64 / (sent.max(failed)) as f64;
        self.error_pct = 0.5 * self.error_pct + 0.5 * pct;
    }

    /// Round-trip samples seen.
    pub fn samples(&self) -> u64 {
        self.samples
    }
}

/// The DAPB parameters of one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// B(t) of the adaptive class, bytes.
    pub b_adaptive: u64,
    /// B_min (the latency class).
    pub b_min: u64,
    /// B_max (the throughput class).
    pub b_max: u64,
    /// T(t), microseconds.
    pub t_us: u64,
    /// U_th, percent.
    pub u_th_pct: u8,
}

impl Params {
    /// Eq. 1–3 with the configured weights and bounds.
    pub fn compute(cfg: &DapbConfig, c: &Conditions) -> Params {
        let rtt_ms = c.rtt_us / 1000.0;
        let j_ms = c.jitter_us / 1000.0;
        let f = cfg.b_min_bytes as f64
            + cfg.alpha_bytes_per_ms as f64 * rtt_ms
            + cfg.beta_bytes_per_pct as f64 * c.error_pct
            + cfg.gamma_bytes_per_ms as f64 * j_ms;
        let t = cfg.t_base_us as f64
            + cfg.delta_us_per_ms as f64 * rtt_ms
            + cfg.epsilon_us_per_pct as f64 * c.error_pct
            + cfg.xi_us_per_ms as f64 * j_ms;
        Params {
            b_adaptive: (f as u64).clamp(cfg.b_min_bytes, cfg.b_max_bytes),
            b_min: cfg.b_min_bytes,
            b_max: cfg.b_max_bytes,
            t_us: (t as u64).clamp(cfg.t_min_us, cfg.t_max_us),
            u_th_pct: cfg.urgency_threshold_pct,
        }
    }

    /// B(t) for a class (eq. 1).
    pub fn buffer_bytes(&self, class: Class) -> u64 {
        match class {
            Class::Latency => self.b_min,
            Class::Throughput => self.b_max,
            Class::Adaptive => self.b_adaptive,
        }
    }
}

/// Why a buffer was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Release {
    /// U(t) > U_th (eq. 6).
    Urgent,
    /// The buffer reached B(t).
    Full,
    /// The oldest message waited T(t).
    Timeout,
    /// Shutdown, or the breaker opening: everything goes.
    Drain,
}

impl Release {
    /// Its code (the order of [`Metrics::by_reason`]).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// From [`Release::code`]; an unknown code reads as `Drain`.
    pub fn from_code(c: u8) -> Release {
        match c {
            0 => Release::Urgent,
            1 => Release::Full,
            2 => Release::Timeout,
            _ => Release::Drain,
        }
    }
}

/// The release rule for one buffer: `bytes` held in `n` messages, `urgent` of
/// them urgent, the oldest waiting `age_us`.
pub fn release(
    p: &Params,
    class: Class,
    bytes: u64,
    n: u64,
    urgent: u64,
    age_us: u64,
) -> Option<Release> {
    if n == 0 {
        return None;
    }
    if urgent > 0 && urgent * 100 > u64::from(p.u_th_pct) * n {
        return Some(Release::Urgent);
    }
    if bytes >= p.buffer_bytes(class) {
        return Some(Release::Full);
    }
    if age_us >= p.t_us {
        return Some(Release::Timeout);
    }
    None
}

/// The paper's own metrics (§5), cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Messages sent in buffers.
    pub messages: u64,
    /// Buffers sent (sends into the producer).
    pub batches: u64,
    /// Σ bytes held at release (eq. 9's numerator).
    pub used_bytes: u64,
    /// Σ B(t) at release (eq. 9's denominator).
    pub capacity_bytes: u64,
    /// Releases by reason: urgent, full, timeout, drain.
    pub by_reason: [u64; 4],
}

impl Metrics {
    /// Counts one release.
    pub fn on_release(&mut self, why: Release, n: u64, bytes: u64, capacity: u64) {
        self.messages += n;
        self.batches += 1;
        self.used_bytes += bytes.min(capacity);
        self.capacity_bytes += capacity;
        self.by_reason[why as usize] += 1;
    }

    /// Eq. 8: small sends avoided (messages − buffers sent).
    pub fn reduced_sends(&self) -> u64 {
        self.messages - self.batches
    }

    /// Eq. 9: buffer efficiency, 0–1.
    pub fn efficiency(&self) -> f64 {
        if self.capacity_bytes == 0 {
            0.0
        } else {
            self.used_bytes as f64 / self.capacity_bytes as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> DapbConfig {
        DapbConfig::default()
    }

    #[test]
    fn an_idle_network_gives_the_floor_values() {
        let p = Params::compute(&cfg(), &Conditions::default());
        assert_eq!(p.b_adaptive, cfg().b_min_bytes);
        assert_eq!(p.t_us, cfg().t_base_us);
        assert_eq!(p.buffer_bytes(Class::Latency), cfg().b_min_bytes);
        assert_eq!(p.buffer_bytes(Class::Throughput), cfg().b_max_bytes);
    }

    #[test]
    fn higher_rtt_jitter_and_errors_lengthen_timeout_and_grow_buffer() {
        let mut calm = Conditions::default();
        let mut rough = Conditions::default();
        for _ in 0..50 {
            calm.on_rtt(500.0);
            rough.on_rtt(20_000.0);
            rough.on_rtt(60_000.0);
        }
        rough.on_window(1000, 50);
        let (a, b) = (
            Params::compute(&cfg(), &calm),
            Params::compute(&cfg(), &rough),
        );
        assert!(b.t_us > a.t_us, "{a:?} {b:?}");
        assert!(b.b_adaptive > a.b_adaptive, "{a:?} {b:?}");
        assert!(rough.jitter_us > calm.jitter_us);
    }

    #[test]
    fn urgency_above_threshold_releases_at_once() {
        let p = Params::compute(&cfg(), &Conditions::default());
        assert_eq!(
            release(&p, Class::Adaptive, 10, 1, 1, 0),
            Some(Release::Urgent)
        );
        assert_eq!(release(&p, Class::Adaptive, 10, 5, 0, 0), None);
        let mut c = cfg();
        c.urgency_threshold_pct = 50;
        let p = Params::compute(&c, &Conditions::default());
        assert_eq!(release(&p, Class::Adaptive, 10, 4, 2, 0), None);
        assert_eq!(
            release(&p, Class::Adaptive, 10, 4, 3, 0),
            Some(Release::Urgent)
        );
    }

    #[test]
    fn full_and_timeout_release() {
        let p = Params::compute(&cfg(), &Conditions::default());
        assert_eq!(
            release(&p, Class::Latency, p.b_min, 80, 0, 0),
            Some(Release::Full)
        );
        assert_eq!(release(&p, Class::Throughput, p.b_min, 80, 0, 0), None);
        assert_eq!(
            release(&p, Class::Throughput, 100, 1, 0, p.t_us),
            Some(Release::Timeout)
        );
        assert_eq!(release(&p, Class::Throughput, 0, 0, 0, u64::MAX), None);
    }

    #[test]
    fn metrics_follow_eq_8_and_9() {
        let mut m = Metrics::default();
        m.on_release(Release::Full, 100, 1000, 1000);
        m.on_release(Release::Timeout, 10, 100, 1000);
        assert_eq!(m.reduced_sends(), 108);
        assert!((m.efficiency() - 0.55).abs() < 1e-9);
        assert_eq!(m.by_reason, [0, 1, 1, 0]);
    }

    proptest! {
        #[test]
        fn parameters_stay_within_bounds(rtts in proptest::collection::vec(0.0f64..1e7, 1..50),
                                         sent in 0u64..1_000_000, failed in 0u64..1_000_000) {
            let mut c = Conditions::default();
            for r in rtts { c.on_rtt(r); }
            c.on_window(sent, failed);
            let p = Params::compute(&cfg(), &c);
            prop_assert!(p.b_adaptive >= cfg().b_min_bytes && p.b_adaptive <= cfg().b_max_bytes);
            prop_assert!(p.t_us >= cfg().t_min_us && p.t_us <= cfg().t_max_us);
            prop_assert!(c.error_pct >= 0.0 && c.error_pct <= 100.0);
        }
    }
}

/// [`ShardKnobs::partitions`] when no broker has ever given the count: the
/// shards encode every record into one batch per shard, which the output
/// core journals and later splits by partition.
pub const UNPARTITIONED: u32 = u32::MAX;

/// What a shard needs to close its Kafka batches (native client): the DAPB
/// parameters of this tick and the topic's partition count (0: not known
/// yet, nothing can be encoded; [`UNPARTITIONED`]: not known, encode for a
/// later split).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardKnobs {
    /// B(t), T(t), U_th.
    pub params: Params,
    /// Partitions of the topic.
    pub partitions: u32,
}

/// The output core publishes [`ShardKnobs`] here; each shard compares the
/// version once per receive batch (one atomic load) and copies the knobs only
/// when they moved.
#[derive(Debug)]
pub struct KnobFeed {
    version: std::sync::atomic::AtomicU64,
    knobs: std::sync::Mutex<ShardKnobs>,
}

impl KnobFeed {
    /// A feed holding `knobs`.
    pub fn new(knobs: ShardKnobs) -> KnobFeed {
        KnobFeed {
            version: std::sync::atomic::AtomicU64::new(1),
            knobs: std::sync::Mutex::new(knobs),
        }
    }

    /// Replaces the knobs when they changed (the output core, per tick).
    pub fn publish(&self, knobs: ShardKnobs) {
        let mut k = self.knobs.lock().unwrap_or_else(|p| p.into_inner());
        if *k != knobs {
            *k = knobs;
            self.version
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }

    /// The version now.
    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The knobs now.
    pub fn read(&self) -> ShardKnobs {
        *self.knobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}
