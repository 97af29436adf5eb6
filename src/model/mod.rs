//! The models klais trains and runs (`klais model train|eval|load`):
//!
//! - [`classifier`]: the per-packet int8 MLP of the XDP program (Hara &
//!   Sasabe), on the per-flow [`features`];
//! - [`window`]: the per-shard window model run through GGML with Q4_0
//!   weights, forecasting storms from per-tick shard features.
//!
//! Both are trained from the project's [`crate::scenario`] generator: the
//! train split fits weights, the validation split calibrates and picks
//! thresholds, the test split is only ever used for the reported figures.
//! Trained weights ship in `models/` with the seed and command that made them.

pub mod classifier;
pub mod features;
pub mod window;

use std::collections::HashMap;
use std::path::Path;

use crate::scenario::{self, Generator, Label, Split};
use classifier::{Action, ClassifierFile, FloatMlp, Metrics, Norm, QuantModel, TrainConfig, K};
use features::{FlowState, N_FEATURES};

/// Scenarios per split used by training and evaluation.
pub const SCENARIOS_PER_SPLIT: u32 = 6;

/// Labeled per-packet features of a split (malformed datagrams excluded: the
/// kernel drops bad magic and short datagrams before the classifier, and a
/// datagram with invalid JSON is rejected in user space whatever its class).
/// Normal packets are kept with probability `keep_normal` (seeded).
pub fn packet_dataset(split: Split, n: u32, keep_normal: f64) -> (Vec<[i64; N_FEATURES]>, Vec<u8>) {
    use rand::{Rng, SeedableRng};
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for spec in scenario::suite(split, n) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed ^ 0x6b65_6570);
        let mut flows: HashMap<u64, FlowState> = HashMap::new();
        for p in Generator::new(spec) {
            if p.label == Label::Malformed {
                continue;
            }
            let mut st = flows.get(&p.hash).copied();
            let x = features::update(&mut st, p.t_ns, u32::from(p.payload_len), p.seq);
            if let Some(s) = st {
                flows.insert(p.hash, s);
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

/// The default actions per class: floods dropped in the kernel; sweeps and
/// replays marked, not dropped (a device klais has not seen since its flow
/// state was evicted, or since klais started, looks like a sweep on its
/// first datagram; dropping it would lose real telemetry).
pub const DEFAULT_ACTIONS: [Action; K] = [Action::Pass, Action::Drop, Action::Mark, Action::Mark];

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
    let quant = classifier::quantize(&float, &norm, &calib);
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

/// Errors of the model files.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading or writing.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Not a model file of this version.
    #[error("{path}: not a klais model file ({reason}); retrain it with `klais model train`")]
    Format {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Reads a classifier file.
pub fn load_classifier(path: &Path) -> Result<ClassifierFile, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let f: ClassifierFile = serde_json::from_str(&text).map_err(|e| ModelError::Format {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    validate(&f.quant, &f.float).map_err(|reason| ModelError::Format {
        path: path.display().to_string(),
        reason,
    })?;
    Ok(f)
}

fn validate(q: &QuantModel, f: &FloatMlp) -> Result<(), String> {
    use classifier::H;
    if q.w1.len() != H || q.w2.len() != H || q.w3.len() != K {
        return Err(format!("int8 layers must be {H}x{N_FEATURES}, {H}x{H}, {K}x{H}"));
    }
    if f.w1.len() != H || f.w2.len() != H || f.w3.len() != K {
        return Err("float layers have the wrong shape".into());
    }
    if q.in_scale.iter().any(|&s| s <= 0) {
        return Err("input scales must be positive".into());
    }
    for i in 0..N_FEATURES {
        if q.norm.max[i] <= q.norm.min[i] {
            return Err(format!("feature {i}: max must exceed min"));
        }
    }
    Ok(())
}

/// Writes a model file (JSON, one line per array kept short by serde).
pub fn save_json<T: serde::Serialize>(v: &T, path: &Path) -> Result<(), ModelError> {
    let text = serde_json::to_string(v).map_err(|e| ModelError::Format {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(path, text).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })
}
