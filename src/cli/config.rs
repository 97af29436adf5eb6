//! `klais config`: check a configuration file before deploying it, or print
//! the embedded default to start one from.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use klais::config::Config;

use super::config_errors;

#[derive(Subcommand, Debug)]
pub(super) enum ConfigCmd {
    /// Check a configuration file and the files it names (device keys,
    /// token, models, core map) as `klais run` would, and print the effective
    /// configuration, or every error found (each naming its key and the fix).
    /// Exit 2 on errors.
    Check {
        /// The file to check. Default: the embedded config.toml.
        file: Option<PathBuf>,
    },
    /// Print the embedded default configuration, with its comments.
    Default,
}

/// Runs a `klais config` command.
pub(super) fn run(cmd: ConfigCmd) -> ExitCode {
    match cmd {
        ConfigCmd::Check { file } => check(file),
        ConfigCmd::Default => {
            print!("{}", klais::config::DEFAULT_CONFIG_TOML);
            ExitCode::SUCCESS
        }
    }
}

/// Prints the effective configuration of `file` (default: the embedded one),
/// or every error in it (exit 2).
fn check(file: Option<PathBuf>) -> ExitCode {
    match Config::load(file.as_deref()) {
        Ok(cfg) => {
            // The files it names (keys, token, models, core map), as
            // `klais run` reads them.
            if let Err(code) = super::preflight(&cfg) {
                return code;
            }
            let origin = file.map_or_else(
                || "embedded default".to_string(),
                |f| f.display().to_string(),
            );
            println!("# {origin}: OK. Effective configuration:");
            print!("{}", cfg.to_toml());
            ExitCode::SUCCESS
        }
        Err(errs) => config_errors(&errs),
    }
}
