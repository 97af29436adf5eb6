//! `klais keys`: device keys for protocol v2 (`auth.keys`, `klais gen
//! --v2-keys`), written so that no existing key file is ever overwritten.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

/// `klais keys …`
#[derive(Subcommand, Debug)]
pub(super) enum KeysCmd {
    /// Write a key file (mode 600) with a random 128-bit key for each of the
    /// generated devices dev-00000000 … (for `auth.keys` and `klais gen
    /// --v2-keys`). Refuses to overwrite a file.
    Generate {
        /// Number of devices.
        #[arg(long, default_value_t = 10_000)]
        devices: u32,
        /// The key file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// Runs a `klais keys` command.
pub(super) fn run(cmd: KeysCmd) -> ExitCode {
    match cmd {
        KeysCmd::Generate { devices, out } => generate(devices, &out),
    }
}

/// Writes a new key file of `devices` random keys, mode 600.
fn generate(devices: u32, out: &Path) -> ExitCode {
    let text = match klais::gen::generate_keys(devices) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: reading random bytes: {e}");
            return ExitCode::from(1);
        }
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out);
    match file.and_then(|mut f| f.write_all(text.as_bytes())) {
        Ok(()) => {
            eprintln!(
                "wrote {devices} device keys to {} (mode 600): set auth.keys to it; `klais gen --v2-keys {}` sends as those devices",
                out.display(),
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e} (it must not exist yet)", out.display());
            ExitCode::from(1)
        }
    }
}
