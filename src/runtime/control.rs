//! The control core's thread: every 10 ms, the shards' counter deltas (with
//! the histogram of reconnecting device ids) and the delivery backlog into the
//! controller ([`crate::control::Controller`], the same code the simulator
//! runs); per-shard Dam setpoints out; and, with the XDP filter, the kernel's
//! per-device limit relaxed while a storm is forecast (rate × 10, burst × 50,
//! at least 100) and restored after, so reconnecting devices' backlogs reach
//! the Dam instead of being dropped in the kernel.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::control::predict::{RuleConfig, StormSource};
use crate::control::{ControlConfig, ControlSnapshot, Controller, Setpoints, ShardReport};
use crate::kafka::KafkaSnapshot;
use crate::shard::{DamSetpoints, ShardSnapshot};
use crate::telemetry::Published;
use crate::xdp::{KernelMaps, Limits, Rate};

use super::{RunError, SetOnDrop};

/// What the control loop reads and writes.
pub(super) struct ControlInputs {
    /// The XDP filter's maps and the configured limits (the normal ones).
    pub kernel: Option<(Arc<KernelMaps>, Limits)>,
    pub shards: Vec<Arc<Published<ShardSnapshot>>>,
    pub setpoints: Vec<DamSetpoints>,
    pub kafka: Option<Arc<Published<KafkaSnapshot>>>,
    pub stop: Arc<AtomicBool>,
    pub out: Arc<Published<ControlSnapshot>>,
    /// The operator's ceiling and overrides (admin API).
    pub operator: Arc<crate::admin::Operator>,
}

/// The controller's settings for `n` shards: the PID's range from the
/// admission rate, the storm source (rule, or the window model's threshold).
pub(super) fn control_config(
    cfg: &crate::config::Config,
    n: usize,
    base: crate::control::dam::DamConfig,
    window_threshold: Option<f32>,
) -> ControlConfig {
    let ceiling = cfg
        .admission
        .shard_rate_pps
        .map_or(1e9, |r| r as f64 * n as f64);
    ControlConfig {
        backlog_target: f64::from(cfg.output.kafka.queue_high_water) / 4.0,
        pid: crate::control::pid::PidConfig {
            kp: 2.0,
            ki: 4.0,
            kd: 0.0,
            min: ceiling * 0.05,
            max: ceiling,
        },
        rule: RuleConfig {
            source: match window_threshold {
                Some(threshold) => StormSource::Window { threshold },
                None => StormSource::Rule,
            },
            ..RuleConfig::default()
        },
        dam: base,
        storm_device_burst: (base.device_burst * 50.0).max(100.0),
        storm_device_rate: base.device_rate * 10.0,
        capacity: ceiling.min(1e6),
    }
}

/// Starts the control thread on `cpu`; `done` is set when it ends.
pub(super) fn spawn(
    ccfg: ControlConfig,
    inputs: ControlInputs,
    cpu: usize,
    done: Arc<AtomicBool>,
) -> Result<JoinHandle<ControlSnapshot>, RunError> {
    let done = SetOnDrop(done);
    std::thread::Builder::new()
        .name("klais-control".into())
        .spawn(move || {
            let _done = done;
            core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
            ControlLoop::new(ccfg, inputs).run()
        })
        .map_err(|e| RunError::Core {
            role: "control thread",
            reason: e.to_string(),
        })
}

/// The loop's state between ticks.
struct ControlLoop {
    io: ControlInputs,
    ctl: Controller,
    prev: Vec<ShardSnapshot>,
    reports: Vec<ShardReport>,
    rates: Vec<f64>,
    snap: ControlSnapshot,
    /// Devices held to the normal kernel limit during a storm (floods).
    pinned: HashSet<u64>,
    flood_waiting: u32,
    /// The kernel limits last written.
    written: Option<Limits>,
    storm_began: Option<Instant>,
    normal_queue: u64,
    /// The configured ceiling, and the admin API's when lower.
    config_ceiling: f64,
    api_ceiling: Option<u64>,
    started: Instant,
}

impl ControlLoop {
    fn new(cfg: ControlConfig, io: ControlInputs) -> Self {
        let n = io.shards.len();
        ControlLoop {
            flood_waiting: cfg.storm_device_burst as u32,
            normal_queue: cfg.dam.queue_capacity as u64 / 100,
            config_ceiling: cfg.pid.max,
            ctl: Controller::new(cfg),
            io,
            prev: vec![ShardSnapshot::default(); n],
            reports: vec![ShardReport::default(); n],
            rates: vec![0.0; n],
            snap: ControlSnapshot::default(),
            pinned: HashSet::new(),
            written: None,
            storm_began: None,
            api_ceiling: None,
            started: Instant::now(),
        }
    }

    /// Ticks every 10 ms until the stop flag; returns the last figures.
    fn run(mut self) -> ControlSnapshot {
        let mut last = Instant::now();
        while !self.io.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
            let now = Instant::now();
            let dt = now.duration_since(last).as_secs_f64();
            last = now;
            self.tick(now, dt);
        }
        self.snap
    }

    fn tick(&mut self, now: Instant, dt: f64) {
        for (i, s) in self.io.shards.iter().enumerate() {
            let cur = s.read();
            self.reports[i] = cur.report_since(&self.prev[i]);
            self.prev[i] = cur;
        }
        let backlog = self.io.kafka.as_ref().map_or(0.0, |k| {
            let k = k.read();
            (k.buffered + k.in_flight) as f64
        });
        let ceiling = self.io.operator.ceiling();
        if ceiling != self.api_ceiling {
            self.api_ceiling = ceiling;
            let c = ceiling.map_or(self.config_ceiling, |c| (c as f64).min(self.config_ceiling));
            self.ctl.set_ceiling(c);
        }
        let sp = self.ctl.tick(&self.reports, backlog, dt, &mut self.rates);
        self.publish_setpoints(&sp);
        self.snap.ticks += 1;
        self.track_storm(&sp, now);
        if let Some((maps, base)) = &self.io.kernel {
            let (maps, base) = (maps.clone(), *base);
            self.write_kernel_limits(&maps, &base, &sp);
            self.pin_floods(&maps, &base, sp.prediction.storm);
        }
        self.snap.storm_now = sp.prediction.storm;
        self.snap.predicted = (sp.prediction.devices, sp.prediction.messages);
        self.snap.global_rate = sp.global_rate;
        self.io.out.publish(self.snap);
    }

    /// Each shard's Dam settings: the controller's, with the shard's rate.
    fn publish_setpoints(&self, sp: &Setpoints) {
        let n = self.io.setpoints.len();
        for (i, out) in self.io.setpoints.iter().enumerate() {
            let mut c = sp.dam;
            c.shard_rate = self.rates[i].max(1.0);
            c.shard_burst = (c.shard_rate * 0.01).max(c.device_burst);
            // Under an operator ceiling, no shard's burst exceeds a second of
            // its share of it (else a burst would run past the ceiling for
            // longer than a tick can correct); a quiet shard keeps an even
            // share, so its first messages are not throttled to 1.
            if let Some(cap) = self.api_ceiling {
                let share = (cap as f64 / n as f64).max(1.0);
                c.shard_burst = c.shard_burst.min(c.shard_rate.max(share));
            }
            out.publish(Some(c));
        }
    }

    /// The storm's own figures, as the simulator reports them: peak waiting
    /// and the time until the Dams are back under their normal queue.
    fn track_storm(&mut self, sp: &Setpoints, now: Instant) {
        let snap = &mut self.snap;
        let waiting: u64 = self.reports.iter().map(|r| r.depth).sum();
        let onset = sp.prediction.storm && !snap.storm_now;
        if onset {
            self.storm_began = Some(now);
            snap.storm_peak_waiting = waiting;
            snap.storm_recovery_ms = None;
        }
        if let Some(t0) = self.storm_began {
            snap.storm_peak_waiting = snap.storm_peak_waiting.max(waiting);
            if waiting <= self.normal_queue && now.duration_since(t0) > Duration::from_millis(20) {
                snap.storm_recovery_ms = Some(now.duration_since(t0).as_millis() as u64);
                self.storm_began = None;
            }
        }
        if onset {
            snap.storms += 1;
            snap.first_storm_ms
                .get_or_insert(self.started.elapsed().as_millis() as u64);
            tracing::warn!(
                devices = sp.prediction.devices as u64,
                messages = sp.prediction.messages as u64,
                "reconnection storm forecast: Dam queues and device bursts enlarged"
            );
        }
    }

    /// The kernel's limits: the per-device limit relaxed while a storm is
    /// forecast; the global budget at twice the admission rate the PID sets
    /// (overload is shed in the kernel, cheaply, before it reaches the Dams),
    /// never above the operator's `xdp.global_budget_pps`. Written when they
    /// change by more than 10 %.
    fn write_kernel_limits(&mut self, maps: &KernelMaps, base: &Limits, sp: &Setpoints) {
        let device = if sp.prediction.storm {
            base.device.and_then(|r| {
                Rate::new(
                    r.pps().saturating_mul(10),
                    r.burst().saturating_mul(50).max(100),
                )
                .ok()
            })
        } else {
            base.device
        };
        let operator = base.global.map_or(1_000_000_000, |r| r.pps());
        let pps = ((sp.global_rate * 2.0) as u64).clamp(1000, operator);
        let global = Rate::new(pps, (pps / 10).max(1000)).ok();
        let limits = Limits {
            device,
            global,
            ..*base
        };
        let moved = |a: Option<Rate>, b: Option<Rate>| match (a, b) {
            (Some(a), Some(b)) => {
                a.pps().abs_diff(b.pps()) * 10 > b.pps() || a.burst() != b.burst()
            }
            (a, b) => a.is_some() != b.is_some(),
        };
        let changed = match &self.written {
            None => true,
            Some(w) => moved(limits.device, w.device) || moved(limits.global, w.global),
        };
        if changed {
            match maps.set_limits(&limits, crate::xdp::possible_cpus()) {
                Ok(()) => {
                    self.snap.kernel_writes += 1;
                    self.snap.kernel_budget_pps = pps;
                    self.written = Some(limits);
                }
                Err(e) => tracing::warn!("control core: cannot write the XDP limits: {e}"),
            }
        }
    }

    /// During a storm, a device with more waiting in a Dam than even the storm
    /// burst is flooding, not flushing a backlog: the kernel holds it to the
    /// normal per-device limit while the others are relaxed. The operator's
    /// own override for a device stands.
    fn pin_floods(&mut self, maps: &KernelMaps, base: &Limits, storm: bool) {
        if storm {
            for cur in self.io.shards.iter().map(|s| s.read()) {
                for &(hash, waiting) in &cur.dam.top_waiting {
                    if waiting > self.flood_waiting
                        && !self.io.operator.has_override(hash)
                        && self.pinned.insert(hash)
                    {
                        match maps.set_override(hash, base.device) {
                            Ok(()) => self.snap.floods_pinned += 1,
                            Err(e) => {
                                tracing::warn!("control core: cannot pin a flooding device: {e}")
                            }
                        }
                    }
                }
            }
        } else if !self.pinned.is_empty() {
            for hash in self.pinned.drain() {
                if !self.io.operator.has_override(hash) {
                    let _ = maps.set_override(hash, None);
                }
            }
        }
    }
}
