//! Thundering-herd (reconnection storm) detection and prediction — the
//! rule-based baseline. The GGML window model of the models issue will sit
//! behind the same [`Predictor`] interface, chosen by configuration.
//!
//! Features per tick (summed over shards): message rate and its derivative,
//! new-device rate, sequence-reset rate, the share of resets landing near
//! sequence 0 (devices restarting: the reconnect fingerprint), and the
//! entropy of the reconnecting devices' ids (many devices vs a few cycling).
//!
//! Rule: a storm starts when reconnects (new devices + resets) per second
//! exceed both an absolute floor and `factor` × their slow baseline for two
//! ticks running, with most resets near sequence 0 and high id entropy (many
//! distinct devices, not one device cycling). Its size is extrapolated from the
//! reconnects seen so far, its backlog from the message rate above baseline
//! per reconnect, its duration from that backlog over the drain capacity. It
//! ends when reconnects fall back under twice the baseline for `quiet` ticks.

/// What the shards saw in one tick (summed).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Features {
    /// Tick length, seconds.
    pub dt: f64,
    /// Messages offered (admitted, queued or dropped).
    pub messages: u64,
    /// Devices seen for the first time.
    pub new_devices: u64,
    /// Sequence resets.
    pub resets: u64,
    /// Of those, resets to a sequence at or below the reset window.
    pub resets_near_zero: u64,
    /// Entropy of the device-id hash histogram of the tick, bits (0–8).
    pub id_entropy: f64,
    /// The largest storm probability the shards' window models reported
    /// this tick (0 when none runs).
    pub model_storm: f32,
}

/// A storm forecast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// A storm is starting or running.
    pub storm: bool,
    /// Devices expected to reconnect.
    pub devices: f64,
    /// Messages expected in the burst (their backlogs).
    pub messages: f64,
    /// Expected duration at the drain capacity, seconds.
    pub duration_s: f64,
}

/// Anything that forecasts storms from per-tick features.
pub trait Predictor {
    /// Feeds one tick; returns the forecast.
    fn tick(&mut self, f: &Features, capacity_msgs_per_s: f64) -> Prediction;
}

/// Thresholds of the rule-based predictor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleConfig {
    /// Reconnects per second below which nothing is a storm.
    pub min_reconnects_per_s: f64,
    /// Multiple of the baseline reconnect rate that starts a storm.
    pub factor: f64,
    /// Ticks over the threshold before declaring (debounce).
    pub confirm_ticks: u32,
    /// Quiet ticks that end a storm.
    pub quiet_ticks: u32,
    /// Id entropy (bits) that always counts as many devices; with fewer
    /// events a storm needs 80 % of log2(events) (the most they can show):
    /// below it the reconnects come from few devices cycling (a flood, not a
    /// reconnection storm).
    pub min_entropy: f64,
    /// What decides that a storm starts and ends; the sizing (devices,
    /// messages, duration) is the rule's in both cases.
    pub source: StormSource,
}

/// What decides storm onset and end (`[control] predictor` in the config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StormSource {
    /// The rule below.
    Rule,
    /// The shards' GGML window models: a storm while the largest reported
    /// probability is at or above `threshold`.
    Window {
        /// Probability threshold.
        threshold: f32,
    },
}

impl Default for RuleConfig {
    fn default() -> Self {
        RuleConfig {
            min_reconnects_per_s: 200.0,
            factor: 8.0,
            confirm_ticks: 2,
            quiet_ticks: 50,
            min_entropy: 5.0,
            source: StormSource::Rule,
        }
    }
}

/// The rule-based baseline predictor.
#[derive(Debug, Clone)]
pub struct RulePredictor {
    cfg: RuleConfig,
    base_reconnects: f64,
    base_messages: f64,
    warm: u32,
    over: u32,
    quiet: u32,
    storm: bool,
    seen_reconnects: f64,
    seen_excess: f64,
    ticks_in_storm: u32,
    last: Prediction,
}

impl RulePredictor {
    /// A predictor with no history.
    pub fn new(cfg: RuleConfig) -> RulePredictor {
        RulePredictor {
            cfg,
            base_reconnects: 0.0,
            base_messages: 0.0,
            warm: 0,
            over: 0,
            quiet: 0,
            storm: false,
            seen_reconnects: 0.0,
            seen_excess: 0.0,
            ticks_in_storm: 0,
            last: Prediction {
                storm: false,
                devices: 0.0,
                messages: 0.0,
                duration_s: 0.0,
            },
        }
    }
}

impl Predictor for RulePredictor {
    fn tick(&mut self, f: &Features, capacity: f64) -> Prediction {
        if f.dt <= 0.0 {
            return self.last;
        }
        let reconnects = (f.new_devices + f.resets) as f64;
        let rec_rate = reconnects / f.dt;
        let msg_rate = f.messages as f64 / f.dt;
        let threshold = self
            .cfg
            .min_reconnects_per_s
            .max(self.cfg.factor * self.base_reconnects);
        let fingerprint = f.resets == 0 || f.resets_near_zero * 2 >= f.resets;
        // Many distinct devices: the ids' entropy near its maximum for the
        // number of events (log2 n, at most 8 bits), and at least
        // `min_entropy` when there are enough events to show it.
        let events = (f.new_devices + f.resets).max(1) as f64;
        let max_h = events.min(256.0).log2();
        let many = f.id_entropy >= (0.8 * max_h).min(self.cfg.min_entropy);
        let onset = match self.cfg.source {
            StormSource::Rule => rec_rate > threshold && fingerprint && many && self.warm > 0,
            StormSource::Window { threshold } => f.model_storm >= threshold,
        };
        if !self.storm {
            if onset {
                self.over += 1;
            } else {
                self.over = 0;
                // Slow baselines, learned outside storms only.
                let a = if self.warm < 100 { 0.1 } else { 0.01 };
                self.base_reconnects += a * (rec_rate - self.base_reconnects);
                self.base_messages += a * (msg_rate - self.base_messages);
                self.warm = self.warm.saturating_add(1);
            }
            if self.over >= self.cfg.confirm_ticks {
                self.storm = true;
                self.quiet = 0;
                self.seen_reconnects = 0.0;
                self.seen_excess = 0.0;
                self.ticks_in_storm = 0;
            }
        }
        if self.storm {
            self.ticks_in_storm += 1;
            self.seen_reconnects += reconnects;
            self.seen_excess += ((msg_rate - self.base_messages) * f.dt).max(0.0);
            let calm = match self.cfg.source {
                StormSource::Rule => rec_rate < 2.0 * self.base_reconnects.max(1.0),
                StormSource::Window { threshold } => f.model_storm < threshold,
            };
            if calm {
                self.quiet += 1;
            } else {
                self.quiet = 0;
            }
            if self.quiet >= self.cfg.quiet_ticks {
                self.storm = false;
                self.over = 0;
            }
        }
        self.last = if self.storm {
            // Early in a storm assume as many devices again are still coming
            // (a symmetric reconnect wave), later trust what was seen.
            let early = (20.0 / f64::from(self.ticks_in_storm)).clamp(1.0, 2.0);
            let devices = self.seen_reconnects * early;
            let per_device = if self.seen_reconnects > 0.0 {
                self.seen_excess / self.seen_reconnects
            } else {
                0.0
            };
            let messages = devices * per_device;
            Prediction {
                storm: true,
                devices,
                messages,
                duration_s: messages / capacity.max(1.0),
            }
        } else {
            Prediction {
                storm: false,
                devices: 0.0,
                messages: 0.0,
                duration_s: 0.0,
            }
        };
        self.last
    }
}

/// Entropy (bits) of a 256-bin histogram.
pub fn entropy(hist: &[u32; 256]) -> f64 {
    let total: u64 = hist.iter().map(|&c| u64::from(c)).sum();
    if total == 0 {
        return 0.0;
    }
    let t = total as f64;
    hist.iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / t;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet_tick() -> Features {
        Features {
            dt: 0.01,
            messages: 100,
            new_devices: 0,
            resets: 0,
            resets_near_zero: 0,
            id_entropy: 6.5,
            model_storm: 0.0,
        }
    }

    #[test]
    fn normal_traffic_is_not_a_storm_and_a_reconnect_wave_is() {
        let mut p = RulePredictor::new(RuleConfig::default());
        for _ in 0..500 {
            assert!(!p.tick(&quiet_tick(), 100_000.0).storm);
        }
        let wave = Features {
            messages: 2000,
            resets: 50,
            resets_near_zero: 48,
            ..quiet_tick()
        };
        assert!(!p.tick(&wave, 100_000.0).storm, "debounced");
        let f = p.tick(&wave, 100_000.0);
        assert!(
            f.storm && f.devices >= 100.0 && f.messages > 1000.0,
            "{f:?}"
        );
        for _ in 0..60 {
            p.tick(&quiet_tick(), 100_000.0);
        }
        assert!(!p.tick(&quiet_tick(), 100_000.0).storm, "ends when quiet");
    }

    #[test]
    fn a_flood_from_few_devices_is_not_a_reconnection_storm() {
        let mut p = RulePredictor::new(RuleConfig::default());
        for _ in 0..200 {
            p.tick(&quiet_tick(), 1e5);
        }
        let flood = Features {
            messages: 50_000,
            new_devices: 10,
            resets: 40,
            resets_near_zero: 40,
            id_entropy: 1.0,
            ..quiet_tick()
        };
        for _ in 0..10 {
            assert!(!p.tick(&flood, 1e5).storm);
        }
    }

    #[test]
    fn entropy_of_uniform_and_single_bins() {
        assert!((entropy(&[1; 256]) - 8.0).abs() < 1e-9);
        let mut one = [0u32; 256];
        one[7] = 1000;
        assert_eq!(entropy(&one), 0.0);
    }
}
