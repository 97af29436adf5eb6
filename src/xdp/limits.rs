//! The XDP program's settings from the operator's rates
//! ([`crate::config::rate`]): GCRA intervals and tolerances per CPU, and back.
//! Pure arithmetic, tested without a kernel.

use super::skel::types::klais_settings;
pub use crate::config::rate::{Limits, Rate, RateError};

const NS: u64 = 1_000_000_000;

/// Resolution of CLOCK_MONOTONIC_COARSE (the kernel's tick), ns; 0 if unknown.
pub fn coarse_tick_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_getres writes one timespec into the valid `ts`.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc != 0 || ts.tv_sec != 0 {
        return 0;
    }
    ts.tv_nsec as u64
}

impl Limits {
    /// The kernel's form for `ncpus` CPUs.
    pub fn to_settings(&self, ncpus: u32) -> klais_settings {
        let (di, dt) = self.device.map_or((0, 0), |r| r.gcra());
        let (gi, gt) = self.global.map_or((0, 0), |r| r.per_cpu(ncpus));
        let events = Rate::new(
            self.events_per_sec.clamp(1, NS),
            self.events_per_sec.clamp(1, NS),
        )
        .unwrap_or(Rate::THOUSAND);
        let (ei, et) = events.per_cpu(ncpus);
        klais_settings {
            device_interval_ns: di,
            device_tolerance_ns: dt,
            global_interval_ns: gi,
            global_tolerance_ns: gt,
            events_interval_ns: ei,
            events_tolerance_ns: et,
            device_rate_pps: self.device.map_or(0, |r| r.pps()),
            device_burst: self.device.map_or(0, |r| r.burst()),
            global_budget_pps: self.global.map_or(0, |r| r.pps()),
            global_burst: self.global.map_or(0, |r| r.burst()),
            events_per_sec: self.events_per_sec,
            policy_entries: 0,
            coarse_tick_ns: coarse_tick_ns(),
        }
    }

    /// Reads back the operator's figures from the kernel's form.
    pub fn from_settings(s: &klais_settings) -> Self {
        Self {
            device: Rate::new(s.device_rate_pps, s.device_burst).ok(),
            global: Rate::new(s.global_budget_pps, s.global_burst).ok(),
            events_per_sec: s.events_per_sec,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GCRA the C program runs, in Rust: admissions for arrival times.
    fn admitted(interval: u64, tolerance: u64, arrivals: &[u64]) -> usize {
        let mut tat = 0u64;
        let mut first = true;
        let mut n = 0;
        for &now in arrivals {
            if first {
                // New bucket: the first packet is admitted and spends a token.
                tat = now + interval;
                first = false;
                n += 1;
                continue;
            }
            let t = tat.max(now);
            if t - now <= tolerance {
                tat = t + interval;
                n += 1;
            }
        }
        n
    }

    #[test]
    fn an_idle_bucket_admits_exactly_burst_packets_at_once() {
        for burst in [1, 2, 10, 1000] {
            let (i, t) = Rate::new(100, burst).unwrap().gcra();
            assert_eq!(admitted(i, t, &vec![5_000; 5000]), burst as usize);
        }
    }

    #[test]
    fn a_saturated_bucket_admits_the_rate() {
        let (i, t) = Rate::new(1000, 10).unwrap().gcra();
        // One packet every 100 us for one second: 10,000 offered, 1000/s + burst.
        let arrivals: Vec<u64> = (0..10_000).map(|k| 1 + k * 100_000).collect();
        let n = admitted(i, t, &arrivals);
        assert!((1000..=1010).contains(&n), "{n}");
    }

    #[test]
    fn rates_out_of_range_are_refused() {
        assert_eq!(Rate::new(0, 1), Err(RateError::Pps(0)));
        assert_eq!(Rate::new(1, 0), Err(RateError::Burst(0)));
        assert!(Rate::new(2_000_000_000, 1).is_err());
        assert_eq!(
            Limits {
                events_per_sec: 0,
                ..Limits::default()
            }
            .validate(),
            Err(RateError::Events(0))
        );
    }

    #[test]
    fn the_global_budget_is_split_per_cpu() {
        let l = Limits {
            global: Some(Rate::new(1_000_000, 1000).unwrap()),
            ..Limits::default()
        };
        let s = l.to_settings(4);
        assert_eq!(s.global_interval_ns, 4_000); // 250k pps per CPU
        assert_eq!(s.global_tolerance_ns, 249 * 4_000); // burst 250 per CPU
        assert_eq!(s.device_interval_ns, 0, "no device limit");
    }

    #[test]
    fn settings_read_back_as_the_operator_wrote_them() {
        let l = Limits {
            device: Some(Rate::new(50, 20).unwrap()),
            global: Some(Rate::new(2_000_000, 4096).unwrap()),
            events_per_sec: 500,
        };
        assert_eq!(Limits::from_settings(&l.to_settings(2)), l);
    }
}
