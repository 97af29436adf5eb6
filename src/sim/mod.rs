//! The storm simulator (`klais simulate`): a seeded, deterministic
//! discrete-event simulation that drives the real Dam, PID controller and
//! storm predictor ([`crate::control`], not copies) with a device population.
//!
//! Scenario: N devices send Poisson telemetry; the network goes away for
//! `outage_s`; devices keep generating and hold their messages (up to
//! `backlog_max` each, beyond that they lose them — device-side loss, not
//! klais's); when the network is back a share of the devices reconnect within
//! `reconnect_jitter_s`, restart their sequence at 0 and flush their backlog at
//! `flush_rate` messages per second each (the rest reconnect without a
//! backlog). klais is one shard's Dam plus the control core ticking every
//! 10 ms; downstream (the Kafka batcher and broker) delivers at most
//! `capacity` messages per second and never loses (the journal holds it).
//!
//! Compared, on the same arrivals: **klais** (Dam + PID + predictor),
//! **klais without prediction** (Dam + PID, storm settings never applied), and
//! the KLAIS paper's **baseline** (a static per-device rate limit, no queue).
//! Reported per variant (the paper's Table 5.4): recovery time (from the
//! network's return until the backlog is back under its threshold for good),
//! loss of valid messages (dropped by the admission stage, of those offered),
//! peak backlog (messages admitted or queued but not yet delivered: the
//! "Kafka lag"), and when the storm was forecast against when the queue would
//! have saturated.

use std::path::Path;

use crate::control::dam::{Admit, Dam, DamConfig};
use crate::control::pid::PidConfig;
use crate::control::predict::{RuleConfig, StormSource};
use crate::control::{ControlConfig, Controller, ShardReport};
use crate::scenario::{Generator, Label, Spec, Storm};

const TICK_NS: u64 = 10_000_000;
const SEC: f64 = 1e9;

/// Scenario parameters (the defaults are the default scenario of docs/control.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scenario {
    /// Seed: same seed, same output.
    pub seed: u64,
    /// Devices.
    pub devices: u32,
    /// Mean messages per second per device (Poisson).
    pub rate_per_device: f64,
    /// Seconds of normal traffic before the outage.
    pub warmup_s: f64,
    /// Seconds the network is away.
    pub outage_s: f64,
    /// Seconds simulated after the outage.
    pub after_s: f64,
    /// Share of devices that reconnect with their backlog (0–1).
    pub reconnect_share: f64,
    /// Reconnections spread uniformly over this many seconds.
    pub reconnect_jitter_s: f64,
    /// Messages a device holds while disconnected.
    pub backlog_max: u32,
    /// Messages per second a device flushes its backlog at.
    pub flush_rate: f64,
    /// Downstream delivery capacity, messages per second.
    pub capacity: f64,
    /// Per-device limit, messages per second (klais's Dam and the baseline).
    pub device_rate: f64,
    /// Per-device burst.
    pub device_burst: f64,
    /// klais's Dam queue in normal operation, messages.
    pub queue_normal: usize,
    /// The memory limit of the Dam queue, messages.
    pub queue_max: usize,
}

impl Scenario {
    /// The traffic of this scenario as a [`crate::scenario::Spec`]: Poisson
    /// devices at a flat rate (no diurnal curve, periodic devices or bursts),
    /// one storm, nothing hostile.
    pub fn spec(&self) -> Spec {
        Spec {
            seed: self.seed,
            devices: self.devices,
            rate_per_device: self.rate_per_device,
            rate_spread: 1.0,
            periodic_share: 0.0,
            diurnal_amplitude: 0.0,
            burst_prob: 0.0,
            malformed_share: 0.0,
            duration_s: self.warmup_s + self.outage_s + self.after_s,
            storm: Some(Storm {
                at_s: self.warmup_s,
                outage_s: self.outage_s,
                reconnect_share: self.reconnect_share,
                jitter_s: self.reconnect_jitter_s,
                backlog_max: self.backlog_max,
                flush_rate: self.flush_rate,
            }),
            ..Spec::default()
        }
    }
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            seed: 1,
            devices: 10_000,
            rate_per_device: 1.0,
            warmup_s: 10.0,
            outage_s: 30.0,
            after_s: 15.0,
            reconnect_share: 1.0,
            reconnect_jitter_s: 0.5,
            backlog_max: 100,
            flush_rate: 200.0,
            capacity: 500_000.0,
            device_rate: 10.0,
            device_burst: 20.0,
            queue_normal: 16_384,
            queue_max: 1 << 20,
        }
    }
}

/// Which admission stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Dam + PID + the rule-based storm predictor.
    Klais,
    /// Dam + PID + the GGML window model deciding storms (needs a model,
    /// see [`Extras::window`]).
    KlaisWindow,
    /// Dam + PID, the predictor's settings never applied.
    KlaisNoPrediction,
    /// Static per-device rate limit, no queue (the paper's comparison).
    Baseline,
}

impl Variant {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Variant::KlaisWindow => "klais (Dam + PID + window model)",
            Variant::Klais => "klais (Dam + PID + predictor)",
            Variant::KlaisNoPrediction => "klais, no prediction (Dam + PID)",
            Variant::Baseline => "baseline (static limit, no queue)",
        }
    }
}

/// One point per 100 ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Point {
    /// Seconds since start.
    pub t: f64,
    /// Messages waiting in the Dam.
    pub queued: f64,
    /// Messages admitted but not yet delivered downstream.
    pub downstream: f64,
    /// Admitted messages per second over the last 100 ms.
    pub admitted_rate: f64,
    /// Offered messages per second over the last 100 ms.
    pub offered_rate: f64,
}

/// What one variant did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Which.
    pub variant: Variant,
    /// Valid messages offered to the admission stage.
    pub offered: u64,
    /// Delivered downstream by the end.
    pub delivered: u64,
    /// Dropped by the admission stage (valid messages lost).
    pub lost: u64,
    /// Lost on the devices (backlog over `backlog_max`): the same for every
    /// variant.
    pub device_lost: u64,
    /// Peak of queued + downstream.
    pub peak_backlog: u64,
    /// Seconds from the network's return until the backlog stayed under the
    /// threshold (None: not within the simulated time).
    pub recovery_s: Option<f64>,
    /// When the predictor first said storm, seconds after the network's return.
    pub predicted_after_s: Option<f64>,
    /// When a queue of `queue_normal` drained at `capacity` would be full of
    /// the arrivals since the network's return (the same for every variant),
    /// seconds after the return.
    pub saturation_after_s: Option<f64>,
    /// The time series.
    pub series: Vec<Point>,
    /// When each forecast storm began, seconds from the start.
    pub storm_onsets: Vec<f64>,
}

/// A per-tick callback: the tick's time (ns) and what the shard saw.
pub type TickObserver<'a> = dyn FnMut(u64, &crate::model::window::Tick) + 'a;

/// What a run can take beyond the scenario.
#[derive(Default)]
pub struct Extras<'a> {
    /// Traffic instead of [`Scenario::spec`] (its storm, if any, defines the
    /// network's return; the scenario's own storm fields are then unused).
    pub traffic: Option<Spec>,
    /// The window model for [`Variant::KlaisWindow`] (run through GGML, Q4_0).
    pub window: Option<&'a crate::model::window::FloatWindow>,
    /// Called every tick with its time (ns) and what the shard saw.
    pub observe: Option<&'a mut TickObserver<'a>>,
}

/// Runs one variant of a scenario.
pub fn run(sc: &Scenario, variant: Variant) -> Outcome {
    run_with(sc, variant, Extras::default())
}

/// Runs one variant with [`Extras`]: packets in time order into the Dam,
/// and every 10 ms tick the downstream drain, the controller and the
/// figures ([`SimRun`]).
///
/// # Panics
/// When `variant` is [`Variant::KlaisWindow`] without a model, or the model
/// does not fit GGML (validated files always do).
pub fn run_with(sc: &Scenario, variant: Variant, mut ex: Extras<'_>) -> Outcome {
    let spec = ex.traffic.take().unwrap_or_else(|| sc.spec());
    let mut gen = Generator::new(spec);
    let mut run = SimRun::new(sc, variant, &gen, &mut ex);
    let mut next_tick = TICK_NS;
    let mut packets = gen.by_ref().peekable();
    loop {
        let next_packet = packets.peek().map_or(u64::MAX, |p| p.t_ns);
        if next_packet < next_tick {
            let p = packets.next().expect("peeked");
            run.packet(&p);
            continue;
        }
        let t = next_tick;
        if t > run.t_end {
            break;
        }
        next_tick += TICK_NS;
        run.tick(t, &mut ex);
    }
    run.out.device_lost = gen.device.overflowed + gen.device.discarded;
    run.finish()
}

/// The Dam's settings for a variant (the baseline: a fixed per-device limit,
/// no queue, no shard limit).
fn dam_config(sc: &Scenario, variant: Variant, n: usize) -> DamConfig {
    let baseline = variant == Variant::Baseline;
    DamConfig {
        device_rate: sc.device_rate,
        device_burst: sc.device_burst,
        shard_rate: if baseline { 1e12 } else { sc.capacity },
        shard_burst: sc.capacity / 100.0,
        urgent_rate: 0.0,
        urgent_burst: 0.0,
        queue_capacity: if baseline { 0 } else { sc.queue_normal },
        queue_max: sc.queue_max,
        max_devices: (n * 4).max(1024),
    }
}

/// The controller's settings for a variant (the window model's threshold
/// when it runs).
fn control_config(
    sc: &Scenario,
    variant: Variant,
    dam: DamConfig,
    window_threshold: Option<f32>,
) -> ControlConfig {
    ControlConfig {
        backlog_target: sc.capacity * 0.02,
        pid: PidConfig {
            kp: 20.0,
            ki: 40.0,
            kd: 0.0,
            min: sc.capacity * 0.05,
            max: sc.capacity * 1.5,
        },
        rule: match variant {
            Variant::KlaisNoPrediction => RuleConfig {
                min_reconnects_per_s: f64::INFINITY,
                ..RuleConfig::default()
            },
            Variant::KlaisWindow => RuleConfig {
                source: StormSource::Window {
                    threshold: window_threshold.unwrap_or(0.5),
                },
                ..RuleConfig::default()
            },
            _ => RuleConfig::default(),
        },
        dam,
        storm_device_burst: sc.backlog_max as f64 * 2.0,
        storm_device_rate: sc.flush_rate * 2.0,
        capacity: sc.capacity,
    }
}

/// One run's state between packets and ticks.
struct SimRun<'s> {
    sc: &'s Scenario,
    baseline: bool,
    n: usize,
    t_end: u64,
    /// The network's return, and the outage.
    t_back: u64,
    t_out: u64,
    ggml: Option<crate::model::window::GgmlWindow>,
    window: crate::model::window::Window,
    seen: Vec<bool>,
    dam: Dam<()>,
    ctl: Controller,
    report: ShardReport,
    rates: [f64; 1],
    out: Outcome,
    downstream: u64,
    carry: f64,
    win_admitted: u64,
    win_offered: u64,
    warm_backlog: (f64, u64),
    fluid: f64,
    tick_valid: u64,
    storm_was: bool,
}

impl<'s> SimRun<'s> {
    fn new(sc: &'s Scenario, variant: Variant, gen: &Generator, ex: &mut Extras<'_>) -> Self {
        use crate::model::window::{GgmlWindow, Window};
        let spec = gen.spec();
        let t_end = (spec.duration_s * SEC) as u64;
        let n = spec.devices as usize;
        let ggml = (variant == Variant::KlaisWindow).then(|| {
            GgmlWindow::new(ex.window.expect("the window variant needs a model"))
                .expect("model fits GGML")
        });
        let dam_cfg = dam_config(sc, variant, n);
        let threshold = ggml.as_ref().map(|g| g.threshold());
        SimRun {
            sc,
            baseline: variant == Variant::Baseline,
            n,
            t_end,
            t_back: gen.storm_back_ns().unwrap_or(u64::MAX),
            t_out: spec.storm.map_or(t_end, |s| (s.at_s * SEC) as u64),
            ggml,
            window: Window::default(),
            seen: vec![false; n],
            dam: Dam::new(dam_cfg),
            ctl: Controller::new(control_config(sc, variant, dam_cfg, threshold)),
            report: ShardReport::default(),
            rates: [0.0; 1],
            out: Outcome {
                variant,
                offered: 0,
                delivered: 0,
                lost: 0,
                device_lost: 0,
                peak_backlog: 0,
                recovery_s: None,
                predicted_after_s: None,
                saturation_after_s: None,
                series: Vec::new(),
                storm_onsets: Vec::new(),
            },
            downstream: 0,
            carry: 0.0,
            win_admitted: 0,
            win_offered: 0,
            warm_backlog: (0.0, 0),
            fluid: 0.0,
            tick_valid: 0,
            storm_was: false,
        }
    }

    /// One datagram: counted as the shards count it, then into the Dam.
    fn packet(&mut self, p: &crate::scenario::Packet) {
        if p.label == Label::Malformed {
            return; // rejected by the parser before the Dam
        }
        let valid = p.label == Label::Normal;
        let i = p.device as usize;
        // As the shards count: new or restarted devices only, and their id
        // hashes (the reconnect entropy).
        let reconnect = if i >= self.n {
            true // a spoofed id: always new
        } else if !self.seen[i] {
            self.seen[i] = true;
            true
        } else {
            p.reconnect
        };
        let report = &mut self.report;
        if reconnect {
            if i < self.n && p.reconnect {
                report.resets += 1;
                report.resets_near_zero += 1;
            } else {
                report.new_devices += 1;
            }
            report.id_hist[(p.hash >> 56) as usize] += 1;
        }
        report.offered += 1;
        if valid {
            self.out.offered += 1;
            self.tick_valid += 1;
        }
        self.win_offered += 1;
        match self.dam.admit(p.hash, false, p.t_ns, ()) {
            Admit::Pass(()) | Admit::Urgent(()) => {
                self.downstream += 1;
                self.win_admitted += 1;
            }
            Admit::Queued => {}
            Admit::Dropped(..) => self.out.lost += u64::from(valid),
        }
    }

    /// One 10 ms tick at `t`: drain, deliver at capacity, control, figures.
    fn tick(&mut self, t: u64, ex: &mut Extras<'_>) {
        use crate::model::window::Tick;
        let sc = self.sc;
        let dt = TICK_NS as f64 / SEC;
        if !self.baseline {
            let (downstream, win_admitted) = (&mut self.downstream, &mut self.win_admitted);
            self.dam.drain(t, usize::MAX, |()| {
                *downstream += 1;
                *win_admitted += 1;
            });
        }
        self.carry += sc.capacity * dt;
        let n = (self.carry as u64).min(self.downstream);
        self.carry -= n as f64;
        self.carry = self.carry.min(sc.capacity * dt);
        self.downstream -= n;
        self.out.delivered += n;
        self.report.depth = self.dam.stats().depth;
        let tick = Tick::from_report(&self.report);
        if let Some(f) = ex.observe.as_mut() {
            f(t, &tick);
        }
        if let Some(g) = self.ggml.as_mut() {
            self.report.storm_p = g.infer(&self.window.push(&tick)).storm;
        }
        if !self.baseline {
            self.control(t);
        }
        // Saturation, the same for every variant: when a queue of
        // `queue_normal` drained at `capacity` would be full of what the
        // devices offer after the network's return (a fluid model of the
        // arrivals, independent of any admission decision).
        if t >= self.t_back {
            // Valid traffic only: a flood after the storm is not the storm.
            self.fluid = (self.fluid + self.tick_valid as f64 - sc.capacity * dt).max(0.0);
            if self.fluid >= sc.queue_normal as f64 && self.out.saturation_after_s.is_none() {
                self.out.saturation_after_s = Some((t - self.t_back) as f64 / SEC);
            }
        }
        self.report = ShardReport::default();
        self.tick_valid = 0;
        self.record(t);
    }

    /// The controller's tick and the Dam's new settings.
    fn control(&mut self, t: u64) {
        let dt = TICK_NS as f64 / SEC;
        let s = self
            .ctl
            .tick(&[self.report], self.downstream as f64, dt, &mut self.rates);
        let onset = s.prediction.storm && !self.storm_was;
        if onset {
            self.out.storm_onsets.push(t as f64 / SEC);
        }
        self.storm_was = s.prediction.storm;
        let mut c = s.dam;
        c.shard_rate = self.rates[0];
        c.shard_burst = (self.rates[0] * 0.01).max(1.0);
        self.dam.set_config(c);
        // The forecast counts from a storm that begins after the network's
        // return: a flag already up then (a false alarm that persisted) is
        // not a forecast of this storm.
        if onset && self.out.predicted_after_s.is_none() && t >= self.t_back {
            self.out.predicted_after_s = Some((t - self.t_back) as f64 / SEC);
        }
    }

    /// The backlog figures and, every 100 ms, a point of the series.
    fn record(&mut self, t: u64) {
        let queued = self.dam.stats().depth;
        let total = queued + self.downstream;
        self.out.peak_backlog = self.out.peak_backlog.max(total);
        if t < self.t_out && t > self.t_out / 2 {
            self.warm_backlog.0 += total as f64;
            self.warm_backlog.1 += 1;
        }
        if (t / TICK_NS) % 10 == 0 {
            self.out.series.push(Point {
                t: t as f64 / SEC,
                queued: queued as f64,
                downstream: self.downstream as f64,
                admitted_rate: self.win_admitted as f64 * 10.0,
                offered_rate: self.win_offered as f64 * 10.0,
            });
            self.win_admitted = 0;
            self.win_offered = 0;
        }
    }

    /// Recovery: the last point after the network's return with the backlog
    /// over max(1,000, 3 × the warm-up mean); recovered from the next point on.
    fn finish(mut self) -> Outcome {
        let warm_mean = self.warm_backlog.0 / self.warm_backlog.1.max(1) as f64;
        let threshold = (3.0 * warm_mean).max(1000.0);
        let back = self.t_back as f64 / SEC;
        let last_over = self
            .out
            .series
            .iter()
            .filter(|p| p.t >= back && p.queued + p.downstream > threshold)
            .map(|p| p.t)
            .fold(None, |a: Option<f64>, t| Some(a.map_or(t, |a| a.max(t))));
        let end = self.t_end as f64 / SEC;
        self.out.recovery_s = match last_over {
            None => Some(0.0),
            Some(t) if t + 0.1 < end - 0.5 => Some(t + 0.1 - back),
            Some(_) => None,
        };
        self.out
    }
}

/// The comparison table.
pub fn table(sc: &Scenario, outs: &[Outcome]) -> String {
    let mut s = format!(
        "storm simulation: {} devices at {} msg/s (Poisson), outage {} s after {} s, {}% reconnect within {} s \
         flushing up to {} messages each at {} msg/s; downstream {} msg/s; per-device limit {} msg/s burst {}; \
         Dam queue {} (memory limit {}); seed {}\n",
        sc.devices, sc.rate_per_device, sc.outage_s, sc.warmup_s, sc.reconnect_share * 100.0,
        sc.reconnect_jitter_s, sc.backlog_max, sc.flush_rate, sc.capacity, sc.device_rate,
        sc.device_burst, sc.queue_normal, sc.queue_max, sc.seed
    );
    s.push_str(&format!(
        "{:<36} {:>12} {:>10} {:>10} {:>14} {:>10} {:>22}\n",
        "variant", "recovery s", "loss %", "lost", "peak backlog", "offered", "storm forecast"
    ));
    for o in outs {
        let fc = match (o.predicted_after_s, o.saturation_after_s) {
            (Some(p), Some(q)) if p <= q => format!("+{:.2}s ({:.0} ms ahead)", p, (q - p) * 1e3),
            (Some(p), Some(q)) => format!("+{:.2}s ({:.0} ms late)", p, (p - q) * 1e3),
            (Some(p), None) => format!("+{p:.2}s (never full)"),
            (None, Some(q)) => format!("none (full at +{q:.2}s)"),
            (None, None) => "none".into(),
        };
        s.push_str(&format!(
            "{:<36} {:>12} {:>10.3} {:>10} {:>14} {:>10} {:>22}\n",
            o.variant.name(),
            o.recovery_s
                .map_or("not recovered".into(), |r| format!("{r:.2}")),
            100.0 * o.lost as f64 / o.offered.max(1) as f64,
            o.lost,
            o.peak_backlog,
            o.offered,
            fc
        ));
    }
    if let Some(o) = outs.first() {
        s.push_str(&format!(
            "device-side loss (backlog over {} per device, same for every variant): {}\n",
            sc.backlog_max, o.device_lost
        ));
    }
    s
}

/// Plots backlog and admitted rate over time for each variant into a PNG.
pub fn plot(sc: &Scenario, outs: &[Outcome], path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let font = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"]
        .iter()
        .find_map(|p| std::fs::read(p).ok());
    let labels = match font {
        Some(bytes) => plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            Box::leak(bytes.into_boxed_slice()),
        )
        .is_ok(),
        None => false,
    };
    let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(400);
    let back = sc.warmup_s + sc.outage_s;
    let (x0, x1) = (back - 2.0, (back + 6.0).min(back + sc.after_s));
    let colors = [RED, BLUE, BLACK];
    type Panel<'a, DB> = (
        &'a DrawingArea<DB, plotters::coord::Shift>,
        &'a str,
        fn(&Point) -> f64,
    );
    let panels: [Panel<'_, _>; 2] = [
        (&top, "backlog (queued + downstream), messages", |p| {
            p.queued + p.downstream
        }),
        (&bottom, "admitted, messages/s", |p| p.admitted_rate),
    ];
    for (area, title, f) in panels {
        let ymax = outs
            .iter()
            .flat_map(|o| o.series.iter().filter(|p| p.t >= x0 && p.t <= x1).map(f))
            .fold(1.0f64, f64::max)
            * 1.1;
        let mut b = ChartBuilder::on(area);
        b.margin(10).x_label_area_size(30).y_label_area_size(80);
        if labels {
            b.caption(title, ("sans-serif", 20));
        }
        let mut chart = b
            .build_cartesian_2d(x0..x1, 0.0..ymax)
            .map_err(|e| e.to_string())?;
        if labels {
            chart
                .configure_mesh()
                .x_desc("seconds")
                .draw()
                .map_err(|e| e.to_string())?;
        }
        for (o, c) in outs.iter().zip(colors.iter()) {
            let s = chart
                .draw_series(LineSeries::new(
                    o.series
                        .iter()
                        .filter(|p| p.t >= x0 && p.t <= x1)
                        .map(|p| (p.t, f(p))),
                    c.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?;
            if labels {
                let c = *c;
                s.label(o.variant.name())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
            }
        }
        if labels {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Scenario {
        Scenario {
            devices: 500,
            warmup_s: 3.0,
            outage_s: 30.0,
            after_s: 5.0,
            capacity: 20_000.0,
            ..Scenario::default()
        }
    }

    #[test]
    fn same_seed_same_output() {
        let a = run(&small(), Variant::Klais);
        let b = run(&small(), Variant::Klais);
        assert_eq!(a, b);
        let c = run(&Scenario { seed: 2, ..small() }, Variant::Klais);
        assert_ne!(a.series, c.series);
    }

    #[test]
    fn klais_loses_nothing_where_the_static_limit_drops() {
        let k = run(&small(), Variant::Klais);
        let b = run(&small(), Variant::Baseline);
        assert_eq!(k.offered, b.offered, "same arrivals");
        assert_eq!(k.lost, 0);
        assert!(b.lost > 0, "baseline lost {} of {}", b.lost, b.offered);
        assert!(k.predicted_after_s.is_some(), "the storm was forecast");
        assert_eq!(
            k.delivered + k.lost,
            k.offered,
            "everything delivered by the end"
        );
    }
}
