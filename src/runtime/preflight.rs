//! Loading before running: every file a configuration names — device keys,
//! the replay state, the admin token, the models, the core map — is read and
//! checked once, here, before any core starts. `klais config check` and
//! `klais run` both call [`preflight`], so a configuration that checks is one
//! that starts; [`crate::config::Config::validate`] stays pure (no I/O).
//!
//! Each error names the configuration key it comes from and the fix.

use std::path::PathBuf;
use std::sync::Arc;

use crate::admin::TokenError;
use crate::config::{Config, ConfigError, PredictorKind};
use crate::cores::plan::{CoreMap, Problem};
use crate::model::classifier::ClassifierFile;
use crate::model::window::FloatWindow;
use crate::model::{DropError, ModelError};
use crate::shard::auth::{KeyFileError, KeyTable, ReplayState, ReplayStateError};

/// A file named by the configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// `auth.keys` (the message names the key).
    #[error("{0}; fix: correct the file, or write one with `klais keys generate`")]
    Keys(#[from] KeyFileError),
    /// `auth.replay_state` (the message names the key and the fix).
    #[error(transparent)]
    ReplayState(#[from] ReplayStateError),
    /// `admin.token_file` (the message says the fix).
    #[error("admin.token_file: {0}")]
    Token(#[from] TokenError),
    /// `model.classifier`.
    #[error("model.classifier: {0}; fix: point it at a file `klais model train` wrote (models/classifier.json)")]
    Classifier(ModelError),
    /// `model.drop_classes`.
    #[error("model.drop_classes: {0}; fix: list some of \"flood\", \"sweep\", \"replay\"")]
    DropClasses(#[from] DropError),
    /// `model.window`.
    #[error(
        "model.window: {0}; fix: point it at a file `klais model train` wrote (models/window.json)"
    )]
    Window(ModelError),
    /// `[output.kafka.security]`: a file it names cannot be used (the message
    /// names the key and the fix).
    #[error("{0}")]
    KafkaSecurity(#[from] crate::kafka::native::secure::SecurityError),
    /// `cores.map`: the file, or this machine's topology, cannot be read.
    #[error("cores.map: {0}")]
    CoreMapRead(String),
    /// `cores.map` does not fit this machine (every error, with its fix).
    #[error("cores.map: {path} does not fit this machine: {}", problems.iter().map(|p| format!("{}; fix: {}", p.what, p.fix)).collect::<Vec<_>>().join("; "))]
    CoreMapMisfit {
        /// The map file.
        path: PathBuf,
        /// Its errors (and warnings, for the record).
        problems: Vec<Problem>,
    },
    /// The configuration with the core map applied is inconsistent.
    #[error("cores.map: with the map applied: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    WithCoreMap {
        /// What validation found.
        errors: Vec<ConfigError>,
    },
}

impl PreflightError {
    /// The configuration key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            PreflightError::Keys(_) => "auth.keys",
            PreflightError::ReplayState(_) => "auth.replay_state",
            PreflightError::Token(_) => "admin.token_file",
            PreflightError::Classifier(_) => "model.classifier",
            PreflightError::DropClasses(_) => "model.drop_classes",
            PreflightError::Window(_) => "model.window",
            PreflightError::KafkaSecurity(_) => "output.kafka.security",
            PreflightError::CoreMapRead(_)
            | PreflightError::CoreMapMisfit { .. }
            | PreflightError::WithCoreMap { .. } => "cores.map",
        }
    }
}

/// A core map that fits this machine, with what it warned about.
#[derive(Debug, Clone)]
pub struct CheckedMap {
    /// The map file.
    pub path: PathBuf,
    /// The map.
    pub map: CoreMap,
    /// Warnings (the map is used all the same).
    pub warnings: Vec<Problem>,
}

/// Everything the configuration's files hold, loaded once.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Device keys (`auth.keys`).
    pub keys: Option<Arc<KeyTable>>,
    /// The replay windows the last clean stop saved (`auth.replay_state`,
    /// only with keys).
    pub replay: Option<(PathBuf, Arc<ReplayState>)>,
    /// The admin API's bearer token (`admin.token_file`).
    pub token: Option<String>,
    /// The in-kernel classifier with `model.drop_classes` applied.
    pub classifier: Option<ClassifierFile>,
    /// The window model (`model.predictor = "window"`).
    pub window: Option<Arc<FloatWindow>>,
    /// The core map (`cores.map`), checked against this machine.
    pub core_map: Option<CheckedMap>,
}

impl Loaded {
    /// `cfg` with the core map applied (shard count and CPUs, output CPU),
    /// validated again; `cfg` itself when there is no map, or when `cfg` is
    /// already the applied one (its `cores.map` is then unset).
    pub fn effective_config(&self, cfg: &Config) -> Result<Config, PreflightError> {
        let mut c = cfg.clone();
        if let (Some(m), Some(_)) = (&self.core_map, &cfg.cores.map) {
            c.ingest.shards = m.map.shards.len() as u16;
            c.cores.shard_cpus = Some(m.map.shards.iter().map(|s| s.cpu).collect());
            c.cores.output_cpu = Some(m.map.batcher_cpu);
            c.cores.map = None;
            c.validate()
                .map_err(|errors| PreflightError::WithCoreMap { errors })?;
        }
        Ok(c)
    }
}

/// Reads and checks every file `cfg` (already validated) names. Returns every
/// problem found, not only the first.
pub fn preflight(cfg: &Config) -> Result<Loaded, Vec<PreflightError>> {
    let mut errs = Vec::new();
    let mut ok = |r: Result<(), PreflightError>| {
        if let Err(e) = r {
            errs.push(e);
        }
    };
    let mut loaded = Loaded::default();
    ok(load_auth(cfg, &mut loaded));
    if let Some(p) = &cfg.admin.token_file {
        ok(crate::admin::read_token(p)
            .map(|t| loaded.token = Some(t))
            .map_err(PreflightError::Token));
    }
    if let Some(p) = &cfg.model.classifier {
        ok(crate::model::load_classifier(p)
            .map_err(PreflightError::Classifier)
            .and_then(|f| {
                crate::model::with_drops(f, &cfg.model.drop_classes)
                    .map_err(PreflightError::DropClasses)
            })
            .map(|f| loaded.classifier = Some(f)));
    }
    if cfg.model.predictor == PredictorKind::Window {
        ok(crate::model::load_window(&cfg.model.window)
            .map(|w| loaded.window = Some(Arc::new(w)))
            .map_err(PreflightError::Window));
    }
    if cfg.output.sink == crate::config::SinkKind::Kafka {
        // The CA, client certificate, key and password, read as either
        // client reads them (private files only).
        ok(
            crate::kafka::native::secure::Security::load(&cfg.output.kafka.security)
                .map(drop)
                .map_err(PreflightError::KafkaSecurity),
        );
    }
    if let Some(p) = &cfg.cores.map {
        ok(check_core_map(cfg, p).map(|m| loaded.core_map = Some(m)));
    }
    if errs.is_empty() {
        Ok(loaded)
    } else {
        Err(errs)
    }
}

/// Device keys, and the replay windows saved with them.
fn load_auth(cfg: &Config, loaded: &mut Loaded) -> Result<(), PreflightError> {
    let Some(p) = &cfg.auth.keys else {
        return Ok(());
    };
    loaded.keys = Some(Arc::new(KeyTable::load(p)?));
    if let Some(p) = &cfg.auth.replay_state {
        let st = ReplayState::load(p)?;
        loaded.replay = Some((p.clone(), Arc::new(st)));
    }
    Ok(())
}

/// The core map, checked against this machine's topology and the configured
/// interface.
fn check_core_map(cfg: &Config, path: &std::path::Path) -> Result<CheckedMap, PreflightError> {
    let map =
        crate::cores::plan::load(path).map_err(|e| PreflightError::CoreMapRead(e.to_string()))?;
    let topo = crate::cores::discover().map_err(|e| PreflightError::CoreMapRead(e.to_string()))?;
    let nic = cfg
        .xdp
        .iface
        .as_deref()
        .map(crate::cores::nic_info)
        .transpose()
        .map_err(|e| PreflightError::CoreMapRead(e.to_string()))?;
    let problems = crate::cores::plan::check(&map, &topo, nic.as_ref());
    if problems.iter().any(|p| p.error) {
        return Err(PreflightError::CoreMapMisfit {
            path: path.to_path_buf(),
            problems,
        });
    }
    let warnings = problems;
    Ok(CheckedMap {
        path: path.to_path_buf(),
        map,
        warnings,
    })
}
