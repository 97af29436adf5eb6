//! Training and evaluation of the models ([`crate::model`]) from the
//! project's [`crate::scenario`] generator, and the storm simulator
//! ([`crate::sim`]) for the window model's lead times: the train split fits
//! weights, the validation split calibrates and picks thresholds, the test
//! split is only ever used for the reported figures. A tool above the
//! runtime: nothing that runs in `klais run` imports it.

use std::collections::HashMap;

use crate::model::classifier::{self, ClassifierFile, Metrics, Norm, TrainConfig};
use crate::model::features::{self, FlowState, N_FEATURES};
use crate::model::{window, DEFAULT_ACTIONS};
use crate::scenario::{self, Generator, Label, Malformed, Split};

/// Scenarios per split used by training and evaluation.
pub const SCENARIOS_PER_SPLIT: u32 = 9;

/// Labeled per-packet features of a split. Short and bad-magic datagrams
/// never reach the kernel's classifier; bad-JSON ones move their flow's
/// state (as in the kernel) but are not samples (user space rejects them
/// whatever their class).
/// Normal packets are kept with probability `keep_normal` (seeded).
pub fn packet_dataset(split: Split, n: u32, keep_normal: f64) -> (Vec<[i64; N_FEATURES]>, Vec<u8>) {
    use rand::{Rng, SeedableRng};
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for spec in scenario::suite(split, n) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed ^ 0x6b65_6570);
        let mut flows: HashMap<u64, FlowState> = HashMap::new();
        let mut cpu = features::CpuState::default();
        for p in Generator::new(spec) {
            // The kernel drops short and bad-magic datagrams before the
            // classifier; one with bad JSON it classifies like any other (its
            // flow state moves), and user space rejects it later.
            if matches!(p.malformed, Some(Malformed::TooShort | Malformed::BadMagic)) {
                continue;
            }
            let mut st = flows.get(&p.hash).copied();
            let x = features::update(&mut cpu, &mut st, p.t_ns, u32::from(p.payload_len), p.seq);
            if let Some(s) = st {
                flows.insert(p.hash, s);
            }
            if p.label == Label::Malformed {
                continue; // not a class of its own
            }
            if p.label == Label::Normal && keep_normal < 1.0 && !rng.gen_bool(keep_normal) {
                continue;
            }
            xs.push(x);
            ys.push(p.label as u8);
        }
    }
    (xs, ys)
}

/// Trains the classifier from scratch (train split), calibrates its int8
/// form (train split), and returns the file to ship.
pub fn train_classifier(seed: u64, epochs: u32) -> ClassifierFile {
    let (raw, y) = packet_dataset(Split::Train, SCENARIOS_PER_SPLIT, 0.15);
    let norm = Norm::fit(&raw);
    let xf: Vec<_> = raw.iter().map(|x| norm.apply_float(x)).collect();
    let float = classifier::train(
        &xf,
        &y,
        &TrainConfig {
            seed,
            epochs,
            ..TrainConfig::default()
        },
    );
    let stride = (xf.len() / 20_000).max(1);
    let calib: Vec<_> = xf.iter().step_by(stride).copied().collect();
    let calib_raw: Vec<_> = raw.iter().step_by(stride).copied().collect();
    let calib_y: Vec<_> = y.iter().step_by(stride).copied().collect();
    let quant = classifier::quantize(&float, &norm, &calib, &calib_raw, &calib_y);
    ClassifierFile {
        provenance: format!(
            "klais model train --seed {seed} --epochs {epochs}: {} training packets from {} train-split scenarios (seeds {}..)",
            raw.len(),
            SCENARIOS_PER_SPLIT,
            Split::Train.seed_base()
        ),
        classes: Label::CLASSES.iter().map(|l| l.name().to_string()).collect(),
        actions: DEFAULT_ACTIONS,
        float,
        quant,
    }
}

/// Float and int8 figures of a classifier on a split.
pub struct ClassifierEval {
    /// Float network.
    pub float: Metrics,
    /// int8 network.
    pub int8: Metrics,
    /// Packets where float and int8 disagree.
    pub disagree: u64,
}

/// Evaluates on every (non-malformed) packet of a split's scenarios.
pub fn eval_classifier(f: &ClassifierFile, split: Split) -> ClassifierEval {
    let (raw, y) = packet_dataset(split, SCENARIOS_PER_SPLIT, 1.0);
    let mut e = ClassifierEval {
        float: Metrics::default(),
        int8: Metrics::default(),
        disagree: 0,
    };
    for (x, &t) in raw.iter().zip(&y) {
        let pf = f.float.classify(&f.quant.norm.apply_float(x));
        let pq = f.quant.classify(x);
        e.float.add(t as usize, pf);
        e.int8.add(t as usize, pq);
        e.disagree += u64::from(pf != pq);
    }
    e
}

/// The evaluation as a table.
pub fn classifier_table(e: &ClassifierEval) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<8} {:>9} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9}\n",
        "class", "support", "P float", "R float", "F1 float", "P int8", "R int8", "F1 int8"
    ));
    for (c, l) in Label::CLASSES.iter().enumerate() {
        let (pf, rf, ff, sup) = e.float.class(c);
        let (pq, rq, fq, _) = e.int8.class(c);
        s.push_str(&format!(
            "{:<8} {:>9} | {:>9.3} {:>9.3} {:>9.3} | {:>9.3} {:>9.3} {:>9.3}\n",
            l.name(),
            sup,
            pf,
            rf,
            ff,
            pq,
            rq,
            fq
        ));
    }
    s.push_str(&format!(
        "accuracy: float {:.4}, int8 {:.4} ({:+.2} points); float and int8 disagree on {} of {} packets\n",
        e.float.accuracy(),
        e.int8.accuracy(),
        100.0 * (e.int8.accuracy() - e.float.accuracy()),
        e.disagree,
        e.float.total()
    ));
    s
}

/// The simulator settings for a generated spec: downstream 4 × the
/// population's mean rate (room for diurnal peaks and bursts, not for a
/// reconnection storm's backlog), normal queue 1.6 messages per device.
pub fn sim_scenario_for(spec: &scenario::Spec) -> crate::sim::Scenario {
    let mean = f64::from(spec.devices) * spec.rate_per_device;
    crate::sim::Scenario {
        seed: spec.seed,
        devices: spec.devices,
        rate_per_device: spec.rate_per_device,
        capacity: (mean * 4.0).max(1000.0),
        queue_normal: ((f64::from(spec.devices) * 1.6) as usize).max(256),
        ..crate::sim::Scenario::default()
    }
}

/// Per-tick windows of a split's scenarios with their labels, from the
/// simulator running Dam + PID without prediction.
pub fn window_dataset(split: Split, n: u32) -> Vec<window::Sample> {
    use window::{Tick, Window};
    let mut out = Vec::new();
    for spec in scenario::suite(split, n) {
        let storm = Generator::new(spec.clone()).storm_window_ns();
        let sc = sim_scenario_for(&spec);
        let mut ticks: Vec<(u64, Tick)> = Vec::new();
        let mut obs = |t: u64, k: &Tick| ticks.push((t, *k));
        crate::sim::run_with(
            &sc,
            crate::sim::Variant::KlaisNoPrediction,
            crate::sim::Extras {
                traffic: Some(spec.clone()),
                window: None,
                observe: Some(&mut obs),
            },
        );
        let mut w = Window::default();
        for i in 0..ticks.len() {
            let (t, k) = ticks[i];
            let x = w.push(&k);
            let y = storm.is_some_and(|(a, b)| t >= a && t < b);
            let ahead = &ticks[i + 1..(i + 1 + window::W).min(ticks.len())];
            let next = if ahead.is_empty() {
                k.offered as f64
            } else {
                ahead.iter().map(|(_, k)| k.offered as f64).sum::<f64>() / ahead.len() as f64
            };
            out.push((
                x,
                f32::from(u8::from(y)),
                ((1.0 + next).log2() / 20.0) as f32,
            ));
        }
    }
    out
}

/// Trains the window model (train split) and picks its storm threshold on
/// the validation split (the best balanced accuracy of 0.1 … 0.9).
pub fn train_window(seed: u64, epochs: u32) -> window::FloatWindow {
    let train = window_dataset(Split::Train, SCENARIOS_PER_SPLIT);
    let mut m = window::train(&train, seed, epochs);
    let val = window_dataset(Split::Validation, SCENARIOS_PER_SPLIT);
    let mut g = window::GgmlWindow::new(&m).expect("trained shapes fit");
    let probs: Vec<f32> = val.iter().map(|s| g.infer(&s.0).storm).collect();
    // Balanced accuracy (mean of the storm and calm tick hit rates): plain
    // accuracy favours saying "calm", storms being a few percent of ticks.
    let mut best = (0.0f64, 0.5f32);
    for k in 1..10 {
        let th = k as f32 / 10.0;
        let (mut tp, mut pos, mut tn, mut neg) = (0u64, 0u64, 0u64, 0u64);
        for (p, s) in probs.iter().zip(&val) {
            if s.1 > 0.5 {
                pos += 1;
                tp += u64::from(*p >= th);
            } else {
                neg += 1;
                tn += u64::from(*p < th);
            }
        }
        let bal = (tp as f64 / pos.max(1) as f64 + tn as f64 / neg.max(1) as f64) / 2.0;
        if bal > best.0 {
            best = (bal, th);
        }
    }
    m.threshold = best.1;
    m.provenance = format!(
        "klais model train --seed {seed}: {} windows from {} train-split scenarios (seeds {}..), {epochs} epochs; threshold {:.1} chosen on the validation split (balanced accuracy {:.4})",
        train.len(),
        SCENARIOS_PER_SPLIT,
        Split::Train.seed_base(),
        best.1,
        best.0
    );
    m
}

/// The window model against the rule on a split.
#[derive(Debug, Clone)]
pub struct WindowEval {
    /// Split evaluated.
    pub split: String,
    /// Ticks, and those the Q4_0 model got right (storm under way or not).
    pub ticks: u64,
    /// Correct ticks.
    pub correct: u64,
    /// Median absolute error of the next-window rate, as a factor (2^|log2 error|).
    pub rate_err_median: f64,
    /// Its 90th percentile.
    pub rate_err_p90: f64,
    /// Per storm scenario that saturates: (rule lead ms, window lead ms);
    /// None = not forecast before saturation.
    pub leads: Vec<(Lead, Lead)>,
    /// Storm onsets outside storms, per hour of traffic without a storm:
    /// (rule, window), and the hours.
    pub false_alarms: (u64, u64, f64),
    /// The default storm scenario (`klais simulate`): (rule, window) lead, ms.
    pub default_lead: (Lead, Lead),
    /// The default storm with test-split seeds and outages of 10–120 s:
    /// (outage s, rule lead, window lead).
    pub family: Vec<(f64, Lead, Lead)>,
    /// Mean µs per Q4_0 inference measured over the split.
    pub us_per_inference: f64,
}

/// How early a storm was forecast against its saturation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lead {
    /// Forecast this many ms before saturation.
    Ahead(f64),
    /// Not forecast before saturation.
    Missed,
    /// The storm never saturated the queue (nothing to forecast against).
    NoSaturation,
}

impl std::fmt::Display for Lead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lead::Ahead(ms) => write!(f, "{ms:.0} ms"),
            Lead::Missed => f.write_str("missed"),
            Lead::NoSaturation => f.write_str("never full"),
        }
    }
}

fn lead_ms(o: &crate::sim::Outcome) -> Lead {
    match (o.predicted_after_s, o.saturation_after_s) {
        (_, None) => Lead::NoSaturation,
        (Some(p), Some(q)) if p <= q => Lead::Ahead((q - p) * 1e3),
        _ => Lead::Missed,
    }
}

/// Evaluates the window model (through GGML) and the rule on a split.
pub fn eval_window(m: &window::FloatWindow, split: Split) -> Result<WindowEval, String> {
    use crate::sim::{run_with, Extras, Variant};
    let mut e = WindowEval {
        split: format!("{split:?}"),
        ticks: 0,
        correct: 0,
        rate_err_median: 1.0,
        rate_err_p90: 1.0,
        leads: Vec::new(),
        false_alarms: (0, 0, 0.0),
        default_lead: (Lead::NoSaturation, Lead::NoSaturation),
        family: Vec::new(),
        us_per_inference: 0.0,
    };
    // Tick accuracy and rate error.
    let data = window_dataset(split, SCENARIOS_PER_SPLIT);
    let mut g = window::GgmlWindow::new(m)?;
    let t0 = std::time::Instant::now();
    let mut errs = Vec::with_capacity(data.len());
    for (x, y, r) in &data {
        let f = g.infer(x);
        e.ticks += 1;
        e.correct += u64::from((f.storm >= m.threshold) == (*y > 0.5));
        let truth = f64::from(*r) * 20.0;
        errs.push((f64::from(f.next_rate).max(0.0).ln_1p() / std::f64::consts::LN_2 - truth).abs());
        if std::env::var_os("KLAIS_DEBUG_WINDOW").is_some() && e.ticks % 5000 == 0 {
            eprintln!(
                "tick {}: truth {truth:.3} q4 {:.3} float {:.3}",
                e.ticks,
                f64::from(f.next_rate).ln_1p() / std::f64::consts::LN_2,
                f64::from(m.infer(x).next_rate).ln_1p() / std::f64::consts::LN_2
            );
        }
    }
    e.us_per_inference = t0.elapsed().as_secs_f64() * 1e6 / data.len().max(1) as f64;
    errs.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        errs.get(((errs.len() as f64 * q) as usize).min(errs.len().saturating_sub(1)))
            .map_or(1.0, |v| v.exp2())
    };
    e.rate_err_median = pick(0.5);
    e.rate_err_p90 = pick(0.9);
    // Lead times and false alarms, closed loop in the simulator.
    let mut quiet_hours = 0.0;
    for spec in scenario::suite(split, SCENARIOS_PER_SPLIT) {
        let sc = sim_scenario_for(&spec);
        let run = |v: Variant| {
            run_with(
                &sc,
                v,
                Extras {
                    traffic: Some(spec.clone()),
                    window: Some(m),
                    observe: None,
                },
            )
        };
        let (r, w) = (run(Variant::Klais), run(Variant::KlaisWindow));
        if spec.storm.is_some() {
            if r.saturation_after_s.is_some() {
                e.leads.push((lead_ms(&r), lead_ms(&w)));
            }
        } else {
            quiet_hours += spec.duration_s / 3600.0;
            e.false_alarms.0 += r.storm_onsets.len() as u64;
            e.false_alarms.1 += w.storm_onsets.len() as u64;
        }
    }
    e.false_alarms.2 = quiet_hours;
    let sc = crate::sim::Scenario::default();
    let ex = || Extras {
        traffic: None,
        window: Some(m),
        observe: None,
    };
    e.default_lead = (
        lead_ms(&run_with(&sc, Variant::Klais, ex())),
        lead_ms(&run_with(&sc, Variant::KlaisWindow, ex())),
    );
    for (i, outage) in [10.0, 20.0, 30.0, 60.0, 120.0].into_iter().enumerate() {
        let sc = crate::sim::Scenario {
            seed: split.seed_base() + 100 + i as u64,
            outage_s: outage,
            ..crate::sim::Scenario::default()
        };
        e.family.push((
            outage,
            lead_ms(&run_with(&sc, Variant::Klais, ex())),
            lead_ms(&run_with(&sc, Variant::KlaisWindow, ex())),
        ));
    }
    Ok(e)
}

/// The comparison as text.
pub fn window_table(e: &WindowEval) -> String {
    let fmt = |v: Lead| v.to_string();
    let mut s = format!(
        "window model (GGML Q4_0) on the {} split: storm-tick accuracy {:.4} ({} of {} ticks); next-window rate off by a factor {:.2} (median), {:.2} (P90); {:.2} us per inference\n",
        e.split,
        e.correct as f64 / e.ticks.max(1) as f64,
        e.correct,
        e.ticks,
        e.rate_err_median,
        e.rate_err_p90,
        e.us_per_inference
    );
    s.push_str(&format!(
        "{:<34} {:>14} {:>14}\n",
        "storm forecast", "rule", "window model"
    ));
    for (i, (r, w)) in e.leads.iter().enumerate() {
        s.push_str(&format!(
            "{:<34} {:>14} {:>14}\n",
            format!("  scenario {} ahead of saturation", i + 1),
            fmt(*r),
            fmt(*w)
        ));
    }
    let (fr, fw, h) = e.false_alarms;
    s.push_str(&format!(
        "{:<34} {:>14} {:>14}\n",
        format!("  false alarms ({:.2} h without storm)", h),
        format!("{fr} ({:.0}/h)", fr as f64 / h.max(1e-9)),
        format!("{fw} ({:.0}/h)", fw as f64 / h.max(1e-9))
    ));
    s.push_str(&format!(
        "{:<34} {:>14} {:>14}\n",
        "  default storm (klais simulate)",
        fmt(e.default_lead.0),
        fmt(e.default_lead.1)
    ));
    for (outage, r, w) in &e.family {
        s.push_str(&format!(
            "{:<34} {:>14} {:>14}\n",
            format!("  default storm, {outage:.0} s outage"),
            fmt(*r),
            fmt(*w)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_labels_traffic_with_the_classifier_s_class_names() {
        let names: Vec<&str> = Label::CLASSES.iter().map(|l| l.name()).collect();
        assert_eq!(names, classifier::CLASS_NAMES);
    }
}
