//! The models klais runs: their types, their inference and their files.
//!
//! - [`classifier`]: the per-packet int8 MLP of the XDP program (Hara &
//!   Sasabe), on the per-flow [`features`];
//! - [`window`]: the per-shard window model run through GGML with Q4_0
//!   weights, forecasting storms from per-tick shard features.
//!
//! Pure logic and file loading only: training and evaluation, which need the
//! scenario generator and the simulator, live above in [`crate::train`]
//! (`klais model train|eval`). Trained weights ship in `models/` with the
//! seed and command that made them.

pub mod classifier;
pub mod features;
pub mod optim;
pub mod window;

use std::path::Path;

use classifier::{Action, ClassifierFile, FloatMlp, QuantModel, K};
use features::N_FEATURES;

/// The default actions per class: every suspect class marked, none dropped.
/// Dropping is the operator's choice (`model.drop_classes`, `klais model load
/// --drop`): a reconnecting device flushing its backlog faster than any
/// training scenario did was classified flood on veth (docs/models.md), and a device
/// klais has not seen yet looks like a sweep on its first datagram. The
/// kernel's token buckets stay the enforcement of rates.
pub const DEFAULT_ACTIONS: [Action; K] = [Action::Pass, Action::Mark, Action::Mark, Action::Mark];

/// Sets the classes named in `drop` (flood, sweep, replay) to be dropped.
pub fn with_drops(mut f: ClassifierFile, drop: &[String]) -> Result<ClassifierFile, DropError> {
    for name in drop {
        match classifier::CLASS_NAMES.iter().position(|c| c == name) {
            Some(0) => return Err(DropError::Normal),
            Some(c) => f.actions[c] = Action::Drop,
            None => return Err(DropError::Unknown(name.clone())),
        }
    }
    Ok(f)
}

/// A class that cannot be dropped in the kernel (`model.drop_classes`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropError {
    /// Normal traffic is never dropped by the classifier.
    #[error("normal traffic cannot be dropped")]
    Normal,
    /// Not a class of the classifier.
    #[error("unknown class {0:?} (flood, sweep or replay)")]
    Unknown(String),
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
        return Err(format!(
            "int8 layers must be {H}x{N_FEATURES}, {H}x{H}, {K}x{H}"
        ));
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

/// Reads a window model file.
pub fn load_window(path: &Path) -> Result<window::FloatWindow, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let m: window::FloatWindow = serde_json::from_str(&text).map_err(|e| ModelError::Format {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    m.validate().map_err(|reason| ModelError::Format {
        path: path.display().to_string(),
        reason,
    })?;
    Ok(m)
}
