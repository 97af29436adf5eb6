//! The control core's logic (pure, no I/O): the per-shard Dam ([`dam`]), the
//! PID controller of the global admission rate ([`pid`]), and the storm
//! predictor ([`predict`]), combined by [`Controller`] once per tick.
//!
//! Per tick the controller takes every shard's report and the delivery
//! backlog downstream (the batcher's buffered + in-flight messages), and
//! returns setpoints:
//! - the global admission rate from the PID (setpoint: `backlog_target`
//!   messages downstream; never above the operator's ceiling), split across
//!   shards by their demand (offered rate plus what their queues hold);
//! - the Dam settings: normal, or — while the predictor forecasts a storm —
//!   the storm settings ahead of saturation: the queue enlarged to what the
//!   forecast needs (within the memory limit) and the per-device burst raised,
//!   so reconnecting devices flushing their backlog are admitted instead of
//!   queued behind a per-device rate meant for steady telemetry. Draining is
//!   always per-device round-robin (the Dam's only order: it keeps one noisy
//!   device from starving the rest in every mode).

pub mod dam;
pub mod pid;
pub mod predict;

use dam::DamConfig;
use pid::{Pid, PidConfig};
use predict::{entropy, Features, Prediction, Predictor, RuleConfig, RulePredictor};

/// One shard's report for a tick.
#[derive(Debug, Clone, Copy)]
pub struct ShardReport {
    /// Messages offered to the Dam in the tick.
    pub offered: u64,
    /// New devices in the tick.
    pub new_devices: u64,
    /// Sequence resets in the tick.
    pub resets: u64,
    /// Resets to a sequence near 0.
    pub resets_near_zero: u64,
    /// Messages waiting in its Dam queue.
    pub depth: u64,
    /// Histogram of the high byte of device hashes seen in the tick.
    pub id_hist: [u32; 256],
    /// Storm probability from the shard's window model (0 when none runs).
    pub storm_p: f32,
}

impl Default for ShardReport {
    fn default() -> Self {
        ShardReport {
            offered: 0,
            new_devices: 0,
            resets: 0,
            resets_near_zero: 0,
            depth: 0,
            id_hist: [0; 256],
            storm_p: 0.0,
        }
    }
}

/// Controller settings.
#[derive(Debug, Clone, Copy)]
pub struct ControlConfig {
    /// Messages downstream the PID aims for.
    pub backlog_target: f64,
    /// PID gains; `max` is the operator's ceiling on the global rate.
    pub pid: PidConfig,
    /// Storm rule thresholds.
    pub rule: RuleConfig,
    /// Normal Dam settings (shard_rate is overwritten by the PID's share).
    pub dam: DamConfig,
    /// Per-device burst while a storm is forecast.
    pub storm_device_burst: f64,
    /// Per-device rate while a storm is forecast.
    pub storm_device_rate: f64,
    /// Downstream drain capacity used for the storm's expected duration,
    /// messages per second.
    pub capacity: f64,
}

/// What the control core publishes (per tick) and returns at stop.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ControlSnapshot {
    /// Ticks run.
    pub ticks: u64,
    /// Storms forecast (onsets).
    pub storms: u64,
    /// A storm is forecast now.
    pub storm_now: bool,
    /// Milliseconds from start to the first forecast.
    pub first_storm_ms: Option<u64>,
    /// The last forecast's expected devices and messages.
    pub predicted: (f64, f64),
    /// Global admission rate set last, messages per second.
    pub global_rate: f64,
    /// Writes of the kernel's limits (storm start and end).
    pub kernel_writes: u64,
    /// Devices held to the normal kernel limit during storms (floods).
    pub floods_pinned: u64,
    /// The kernel's global budget written last, packets per second.
    pub kernel_budget_pps: u64,
    /// Most messages waiting in the Dams at once (summed over shards) since
    /// the last storm began: its peak backlog before the batcher.
    pub storm_peak_waiting: u64,
    /// Milliseconds from the last storm's onset until the Dams held no more
    /// than their normal queue again (None: not yet, or no storm).
    pub storm_recovery_ms: Option<u64>,
}

/// What the controller sets for the next tick.
#[derive(Debug, Clone, Copy)]
pub struct Setpoints {
    /// Global admission rate, messages per second.
    pub global_rate: f64,
    /// Dam settings common to every shard (shard_rate is per shard, below).
    pub dam: DamConfig,
    /// The forecast.
    pub prediction: Prediction,
}

/// The control core's state.
pub struct Controller {
    cfg: ControlConfig,
    pid: Pid,
    predictor: Box<dyn Predictor + Send>,
    hist: [u32; 256],
}

impl Controller {
    /// A controller with the rule-based predictor.
    pub fn new(cfg: ControlConfig) -> Controller {
        Controller {
            pid: Pid::new(cfg.pid, cfg.pid.max),
            predictor: Box::new(RulePredictor::new(cfg.rule)),
            cfg,
            hist: [0; 256],
        }
    }

    /// A new operator ceiling on the global rate (never exceeded).
    pub fn set_ceiling(&mut self, max: f64) {
        self.pid.set_max(max);
    }

    /// One tick of `dt` seconds: reports of every shard and the downstream
    /// backlog in; setpoints out, each shard's rate written to `shard_rates`.
    pub fn tick(
        &mut self,
        reports: &[ShardReport],
        backlog: f64,
        dt: f64,
        shard_rates: &mut [f64],
    ) -> Setpoints {
        let mut f = Features {
            dt,
            ..Features::default()
        };
        self.hist = [0; 256];
        for r in reports {
            f.messages += r.offered;
            f.new_devices += r.new_devices;
            f.resets += r.resets;
            f.resets_near_zero += r.resets_near_zero;
            f.model_storm = f.model_storm.max(r.storm_p);
            for (h, x) in self.hist.iter_mut().zip(r.id_hist.iter()) {
                *h += x;
            }
        }
        f.id_entropy = entropy(&self.hist);
        let prediction = self.predictor.tick(&f, self.cfg.capacity);
        let global = self.pid.update(self.cfg.backlog_target, backlog, dt);
        // Split by demand: offered rate plus queues drained over 100 ms.
        let demand = |r: &ShardReport| r.offered as f64 / dt.max(1e-6) + r.depth as f64 * 10.0;
        let total: f64 = reports.iter().map(demand).sum();
        for (rate, r) in shard_rates.iter_mut().zip(reports) {
            *rate = if total > 0.0 {
                global * demand(r) / total
            } else {
                global / reports.len().max(1) as f64
            };
        }
        let mut d = self.cfg.dam;
        if prediction.storm {
            let need = (prediction.messages * 1.5) as usize;
            d.queue_capacity = d.queue_capacity.max(need).min(d.queue_max);
            d.device_burst = d.device_burst.max(self.cfg.storm_device_burst);
            d.device_rate = d.device_rate.max(self.cfg.storm_device_rate);
        }
        Setpoints {
            global_rate: global,
            dam: d,
            prediction,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ControlConfig {
        ControlConfig {
            backlog_target: 1000.0,
            pid: PidConfig {
                kp: 50.0,
                ki: 100.0,
                kd: 0.0,
                min: 1000.0,
                max: 100_000.0,
            },
            rule: RuleConfig::default(),
            dam: DamConfig::default(),
            storm_device_burst: 500.0,
            storm_device_rate: 1000.0,
            capacity: 50_000.0,
        }
    }

    #[test]
    fn the_rate_is_split_by_demand_and_never_above_the_ceiling() {
        let mut c = Controller::new(cfg());
        let mut rates = [0.0; 2];
        let busy = ShardReport {
            offered: 300,
            ..ShardReport::default()
        };
        let idle = ShardReport {
            offered: 100,
            ..ShardReport::default()
        };
        let s = c.tick(&[busy, idle], 0.0, 0.01, &mut rates);
        assert!(s.global_rate <= 100_000.0);
        assert!((rates[0] / rates[1] - 3.0).abs() < 1e-9, "{rates:?}");
        c.set_ceiling(5000.0);
        let s = c.tick(&[busy, idle], 0.0, 0.01, &mut rates);
        assert!(s.global_rate <= 5000.0 && rates.iter().sum::<f64>() <= 5000.0 + 1e-6);
    }

    #[test]
    fn a_forecast_storm_enlarges_the_queue_and_the_device_burst_ahead() {
        let mut c = Controller::new(cfg());
        let mut rates = [0.0; 1];
        let mut hist = [0u32; 256];
        for (i, h) in hist.iter_mut().enumerate() {
            *h = (i % 3) as u32 + 1;
        }
        let calm = ShardReport {
            offered: 100,
            id_hist: hist,
            ..ShardReport::default()
        };
        for _ in 0..300 {
            let s = c.tick(&[calm], 100.0, 0.01, &mut rates);
            assert!(!s.prediction.storm);
            assert_eq!(s.dam.device_burst, DamConfig::default().device_burst);
        }
        let wave = ShardReport {
            offered: 3000,
            resets: 60,
            resets_near_zero: 60,
            id_hist: hist,
            ..ShardReport::default()
        };
        c.tick(&[wave], 100.0, 0.01, &mut rates);
        let s = c.tick(&[wave], 100.0, 0.01, &mut rates);
        assert!(s.prediction.storm, "{:?}", s.prediction);
        assert!(s.dam.device_burst >= 500.0);
        assert!(s.dam.queue_capacity >= DamConfig::default().queue_capacity);
        assert!(s.dam.queue_capacity <= s.dam.queue_max);
    }
}
