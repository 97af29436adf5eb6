//! `klais journal`: what the spill journal holds while the broker is away,
//! read without disturbing a klais that may be writing it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use super::load_config;

#[derive(Subcommand, Debug)]
pub(super) enum JournalCmd {
    /// Records waiting in the spill journal (read only; klais may be running).
    Stat {
        /// Journal directory. Default: output.kafka.journal.dir of --config.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Configuration file to take the directory from.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// Runs a `klais journal` command.
pub(super) fn run(cmd: JournalCmd) -> ExitCode {
    match cmd {
        JournalCmd::Stat { dir, config } => {
            let cfg = match load_config(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            stat(&dir.unwrap_or(cfg.output.kafka.journal.dir))
        }
    }
}

/// Prints how many records (bytes, devices) wait in the journal at `dir`.
fn stat(dir: &Path) -> ExitCode {
    match klais::kafka::journal::read_all(dir) {
        Ok(recs) => {
            let bytes: usize = recs.iter().map(|(_, p)| p.len()).sum();
            let devices: std::collections::HashSet<_> =
                recs.iter().map(|(m, _)| m.raw_id).collect();
            println!(
                "{}: {} records ({} payload bytes) from {} devices waiting for delivery",
                dir.display(),
                recs.len(),
                bytes,
                devices.len()
            );
            if let (Some(f), Some(l)) = (recs.first(), recs.last()) {
                println!(
                    "  first: {} seq {}; last: {} seq {}",
                    f.0.device_id(),
                    f.0.sequence,
                    l.0.device_id(),
                    l.0.sequence
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("{}: no journal (nothing ever spilled)", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: reading {}: {e}", dir.display());
            ExitCode::from(1)
        }
    }
}
