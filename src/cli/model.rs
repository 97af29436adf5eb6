//! `klais model train | eval | load`: the models (classifier, window) from
//! the scenario generator to a running XDP program. Training and evaluation
//! live in `klais::train`; this is their command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Subcommand;

use klais::scenario::Split;
use klais::train;

/// The models: train, evaluate, load into a running XDP program.
#[derive(Subcommand, Debug)]
pub(super) enum ModelCmd {
    /// Train both models from scratch on the scenario generator's train split
    /// (validation split for thresholds) and write them into --dir.
    Train {
        /// Where the model files go.
        #[arg(long, default_value = "models")]
        dir: PathBuf,
        /// Seed of initialisation and shuffling.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Passes over the classifier's training data.
        #[arg(long, default_value_t = 30)]
        epochs: u32,
        /// Only this model: classifier or window.
        #[arg(long)]
        only: Option<String>,
    },
    /// Report the shipped models on a split (test by default): the
    /// classifier's per-class precision, recall and F1 for float and int8,
    /// the window model's accuracy, lead time and false alarms against the
    /// rule-based predictor.
    Eval {
        /// Where the model files are.
        #[arg(long, default_value = "models")]
        dir: PathBuf,
        /// train, validation or test.
        #[arg(long, default_value = "test")]
        split: String,
        /// Only this model: classifier or window.
        #[arg(long)]
        only: Option<String>,
    },
    /// Write a classifier into the XDP program attached to --iface (its
    /// pinned maps), switching atomically without detaching; --off disables
    /// the classifier.
    Load {
        /// Interface klais's XDP program is attached to.
        #[arg(long)]
        iface: String,
        /// Classifier file.
        #[arg(long, default_value = "models/classifier.json")]
        file: PathBuf,
        /// Disable the classifier instead.
        #[arg(long)]
        off: bool,
        /// Drop these classes in the kernel (flood, sweep, replay); the
        /// others are marked. Default: none dropped.
        #[arg(long, value_delimiter = ',')]
        drop: Vec<String>,
    },
}

fn split_of(s: &str) -> Option<Split> {
    match s {
        "train" => Some(Split::Train),
        "validation" => Some(Split::Validation),
        "test" => Some(Split::Test),
        _ => None,
    }
}

/// Runs a `klais model` command.
pub(super) fn run(cmd: ModelCmd) -> ExitCode {
    match cmd {
        ModelCmd::Train {
            dir,
            seed,
            epochs,
            only,
        } => train(&dir, seed, epochs, only.as_deref()),
        ModelCmd::Eval { dir, split, only } => eval(&dir, &split, only.as_deref()),
        ModelCmd::Load {
            iface,
            file,
            off,
            drop,
        } => load(&iface, &file, off, &drop),
    }
}

/// Trains the classifier and/or the window model into `dir`.
fn train(dir: &Path, seed: u64, epochs: u32, only: Option<&str>) -> ExitCode {
    let t0 = Instant::now();
    if only != Some("window") {
        let f = train::train_classifier(seed, epochs);
        let path = dir.join("classifier.json");
        if let Err(e) = klais::model::save_json(&f, &path) {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
        println!(
            "classifier: {} ({:.1}s)",
            path.display(),
            t0.elapsed().as_secs_f64()
        );
        let e = train::eval_classifier(&f, Split::Validation);
        print!("validation split:\n{}", train::classifier_table(&e));
    }
    if only != Some("classifier") {
        let t1 = Instant::now();
        let m = train::train_window(seed, 40);
        let path = dir.join("window.json");
        if let Err(e) = klais::model::save_json(&m, &path) {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
        println!(
            "window model: {} (threshold {:.2}, {:.1}s)",
            path.display(),
            m.threshold,
            t1.elapsed().as_secs_f64()
        );
    }
    println!("trained in {:.1}s", t0.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

/// Evaluates the models in `dir` on a split.
fn eval(dir: &Path, split: &str, only: Option<&str>) -> ExitCode {
    let Some(split) = split_of(split) else {
        eprintln!("error: --split must be train, validation or test, got {split:?}");
        return ExitCode::from(2);
    };
    if only != Some("window") {
        let f = match klais::model::load_classifier(&dir.join("classifier.json")) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let e = train::eval_classifier(&f, split);
        println!("classifier ({}) on the {split:?} split:", f.provenance);
        print!("{}", train::classifier_table(&e));
    }
    if only != Some("classifier") {
        let m = match klais::model::load_window(&dir.join("window.json")) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        match train::eval_window(&m, split) {
            Ok(r) => print!("{}", train::window_table(&r)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

/// Writes the classifier in `file` (or none, with `off`) into the XDP
/// program attached to `iface`.
fn load(iface: &str, file: &Path, off: bool, drop: &[String]) -> ExitCode {
    let maps = match klais::xdp::KernelMaps::from_pins(iface) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let res = if off {
        maps.set_model(None)
    } else {
        let f = match klais::model::load_classifier(file) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let f = match klais::model::with_drops(f, drop) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: --drop: {e}");
                return ExitCode::from(2);
            }
        };
        maps.set_model(Some(&f))
    };
    match res {
        Ok(slot) => {
            if off {
                println!("{iface}: classifier off");
            } else {
                println!(
                    "{iface}: classifier {} loaded into slot {slot}",
                    file.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
