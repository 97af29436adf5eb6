//! Rates for the kernel's token buckets, as operators give them (packets per
//! second and a burst) and as the XDP program uses them (GCRA: an emission
//! interval and a tolerance in ns). Plain values, checked once on creation:
//! the configuration holds them and the XDP adapter ([`crate::xdp`]) turns
//! them into the kernel's settings.
//!
//! GCRA admits exactly `burst` back-to-back packets from an idle bucket and
//! then one every `1e9 / pps` ns: the same admissions as a token bucket of
//! depth `burst` refilled at `pps`, kept in one 64-bit word.

/// Why a rate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// Rates are 1 ..= 1e9 packets per second.
    #[error("rate {0} pps is outside 1..=1000000000")]
    Pps(u64),
    /// Bursts are 1 ..= 1e9 packets.
    #[error("burst {0} is outside 1..=1000000000")]
    Burst(u64),
    /// Event caps are 1 ..= 1e6 per second.
    #[error("event cap {0}/s is outside 1..=1000000")]
    Events(u64),
}

/// A token-bucket rate: `pps` sustained, `burst` at once. Checked on creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pps: u64,
    burst: u64,
}

const NS: u64 = 1_000_000_000;

impl Rate {
    /// 1000 per second, burst 1000 (the kernel's default event cap).
    pub const THOUSAND: Rate = Rate {
        pps: 1000,
        burst: 1000,
    };
    /// A checked rate.
    pub fn new(pps: u64, burst: u64) -> Result<Self, RateError> {
        if pps == 0 || pps > NS {
            return Err(RateError::Pps(pps));
        }
        if burst == 0 || burst > NS {
            return Err(RateError::Burst(burst));
        }
        Ok(Self { pps, burst })
    }
    /// Packets per second.
    pub fn pps(&self) -> u64 {
        self.pps
    }
    /// Bucket depth.
    pub fn burst(&self) -> u64 {
        self.burst
    }
    /// (interval, tolerance) in ns.
    pub fn gcra(&self) -> (u64, u64) {
        let interval = NS / self.pps;
        (interval, (self.burst - 1).saturating_mul(interval))
    }
    /// This rate's share on one of `ncpus` CPUs: rate / ncpus, burst rounded up.
    pub fn per_cpu(&self, ncpus: u32) -> (u64, u64) {
        let n = u64::from(ncpus.max(1));
        let interval = NS.saturating_mul(n) / self.pps;
        let burst = self.burst.div_ceil(n).max(1);
        (interval, (burst - 1).saturating_mul(interval))
    }
}

/// Run-time limits of the XDP program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Default per-device rate (None: no per-device limit).
    pub device: Option<Rate>,
    /// Whole-program budget (None: no global limit). Split evenly per CPU.
    pub global: Option<Rate>,
    /// Cap on sampled events per second (split evenly per CPU).
    pub events_per_sec: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            device: None,
            global: None,
            events_per_sec: 1000,
        }
    }
}

impl Limits {
    /// Checks the event cap.
    pub fn validate(&self) -> Result<(), RateError> {
        if self.events_per_sec == 0 || self.events_per_sec > 1_000_000 {
            return Err(RateError::Events(self.events_per_sec));
        }
        Ok(())
    }
}
