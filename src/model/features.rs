//! Per-flow features of the in-kernel classifier (Hara & Sasabe §IV-C,
//! adapted to klais datagrams), in 64-bit fixed point with 16 fractional bits
//! (eq. 3). This is the exact mirror of `klais_flow_update` in
//! `bpf/klais.bpf.c`: training reads features from here, the kernel computes
//! them per packet, and a test checks the two agree bit for bit.
//!
//! A flow is a device (its id hash). Kept per flow: last arrival, last
//! sequence, packet count (capped), and exponential moving averages (α = 1/8,
//! an arithmetic shift) of length, "went backwards" and log-interval. The
//! paper keeps running sums divided by the count; over days of telemetry such
//! means stop moving and the sums overflow, so klais uses moving averages
//! (no division on the kernel's hot path either).
//!
//! | x | feature |
//! |---|---|
//! | x1 | payload length, bytes |
//! | x2 | sequence, capped at 65,535 (a reset lands near 0, a spoofed id anywhere) |
//! | x3 | sequence step from the flow's last, clamped to ±1,024 (0 on a new flow) |
//! | x4 | packets in the flow, capped at 64 |
//! | x5 | 1 when the sequence did not advance (replay, duplicate, reset), else 0 |
//! | x6 | log2(1 + interval in µs), capped at 26 (26 on a new flow: "long ago") |
//! | x7–x9 | moving averages of x1, x5, x6 |
//! | x10 | \|x1 − x7\| |
//! | x11 | moving average of log2(1 + µs between new flows) on this CPU (a sweep of spoofed ids makes it small) |
//! | x12 | \|x6 − x9\| |
//!
//! x11 replaces the paper's deviation of the direction flag: one packet of a
//! new id cannot tell a device klais has not seen yet from a spoofed one, but
//! the rate at which new ids arrive can (a reconnection storm also brings
//! many new or restarted devices, but they restart near sequence 0, x2).

/// Fractional bits of the fixed point.
pub const FRAC: u32 = 16;
/// 1.0 in fixed point.
pub const ONE: i64 = 1 << FRAC;
/// Features per packet.
pub const N_FEATURES: usize = 12;
/// Cap of x6, log2 µs (~67 s).
pub const LOG_IVAL_MAX: i64 = 26 << FRAC;
/// Cap of the packet count.
pub const NUM_MAX: u32 = 64;
/// Clamp of the sequence step.
pub const DSEQ_MAX: i32 = 1024;
/// Moving-average shift (α = 1/8).
pub const EMA_SHIFT: u32 = 3;

/// Per-flow state (the kernel's `struct klais_flow`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowState {
    /// Last arrival, ns.
    pub last_ns: u64,
    /// Last sequence.
    pub last_seq: u32,
    /// Packets, capped at [`NUM_MAX`].
    pub num: u32,
    /// Moving averages (fixed point).
    pub ema_len: i64,
    /// Of x5.
    pub ema_back: i64,
    /// Of x6.
    pub ema_lival: i64,
}

/// Per-CPU state: new flows' arrival (the kernel keeps it in the per-CPU
/// `model_scratch`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuState {
    /// Last new flow, ns (0: none yet).
    pub last_new_ns: u64,
    /// Moving average of log2(1 + µs between new flows).
    pub ema_new_lival: i64,
}

/// log2(v) in fixed point for v ≥ 1 (integer part from the top bit, fraction
/// from the next 16 bits: piecewise linear between powers of two).
#[inline]
pub fn log2_fixed(v: u32) -> i64 {
    if v == 0 {
        return 0;
    }
    let msb = 31 - v.leading_zeros();
    let frac = if msb >= FRAC {
        (v >> (msb - FRAC)) & 0xffff
    } else {
        (v << (FRAC - msb)) & 0xffff
    };
    (i64::from(msb) << FRAC) | i64::from(frac)
}

#[inline]
fn ema(avg: i64, x: i64) -> i64 {
    avg + ((x - avg) >> EMA_SHIFT)
}

/// Updates `state` (None: a new flow, created) with a packet and returns its
/// features.
#[inline]
pub fn update(
    cpu: &mut CpuState,
    state: &mut Option<FlowState>,
    now_ns: u64,
    len: u32,
    seq: u32,
) -> [i64; N_FEATURES] {
    let x1 = i64::from(len) << FRAC;
    let (x3, x5, x6, st) = match state {
        None => {
            if cpu.last_new_ns == 0 {
                cpu.ema_new_lival = LOG_IVAL_MAX;
            } else {
                let dt = (now_ns.saturating_sub(cpu.last_new_ns) / 1000).min(1 << 27) as u32;
                let l = log2_fixed(dt + 1).min(LOG_IVAL_MAX);
                cpu.ema_new_lival = ema(cpu.ema_new_lival, l);
            }
            cpu.last_new_ns = now_ns;
            *state = Some(FlowState {
                last_ns: now_ns,
                last_seq: seq,
                num: 1,
                ema_len: x1,
                ema_back: 0,
                ema_lival: LOG_IVAL_MAX,
            });
            (0i64, 0i64, LOG_IVAL_MAX, state.as_mut().expect("just set"))
        }
        Some(st) => {
            let dt_us = now_ns.saturating_sub(st.last_ns) / 1000;
            let dt_us = dt_us.min(1 << 27) as u32;
            let x6 = log2_fixed(dt_us + 1).min(LOG_IVAL_MAX);
            let d = (seq.wrapping_sub(st.last_seq) as i32).clamp(-DSEQ_MAX, DSEQ_MAX);
            let x5 = if d <= 0 { ONE } else { 0 };
            st.num = (st.num + 1).min(NUM_MAX);
            st.ema_len = ema(st.ema_len, x1);
            st.ema_back = ema(st.ema_back, x5);
            st.ema_lival = ema(st.ema_lival, x6);
            st.last_ns = now_ns;
            st.last_seq = seq;
            (i64::from(d) << FRAC, x5, x6, st)
        }
    };
    let x2 = i64::from(seq.min(65_535)) << FRAC;
    let x4 = i64::from(st.num) << FRAC;
    [
        x1,
        x2,
        x3,
        x4,
        x5,
        x6,
        st.ema_len,
        st.ema_back,
        st.ema_lival,
        (x1 - st.ema_len).abs(),
        cpu.ema_new_lival,
        (x6 - st.ema_lival).abs(),
    ]
}

/// Feature names, for reports.
pub const NAMES: [&str; N_FEATURES] = [
    "len",
    "seq",
    "dseq",
    "num",
    "back",
    "log_ival",
    "ema_len",
    "ema_back",
    "ema_log_ival",
    "dev_len",
    "cpu_new_log_ival",
    "dev_log_ival",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_fixed_is_exact_on_powers_and_monotone() {
        assert_eq!(log2_fixed(1), 0);
        assert_eq!(log2_fixed(2), ONE);
        assert_eq!(log2_fixed(1 << 20), 20 * ONE);
        assert_eq!(log2_fixed(3), ONE + ONE / 2);
        let mut last = -1;
        for v in 1..100_000u32 {
            let l = log2_fixed(v);
            assert!(l >= last);
            last = l;
        }
    }

    #[test]
    fn a_flow_going_backwards_is_flagged_and_a_fast_one_has_a_small_interval() {
        let mut st = None;
        let mut cpu = CpuState::default();
        let x = update(&mut cpu, &mut st, 0, 100, 500);
        assert_eq!(x[3], ONE);
        assert_eq!(x[5], LOG_IVAL_MAX);
        let x = update(&mut cpu, &mut st, 1_000_000_000, 100, 501);
        assert_eq!(x[4], 0);
        assert_eq!(x[2], ONE);
        let x = update(&mut cpu, &mut st, 1_000_100_000, 100, 498);
        assert_eq!(x[4], ONE, "went backwards");
        assert_eq!(x[2], -3 * ONE);
        assert!(x[5] < 7 * ONE, "100 µs apart: {}", x[5]);
    }
}
