//! `klais version`: the version, commit and build profile, for bug reports.

use std::process::ExitCode;

/// Prints the version line.
pub(super) fn run() -> ExitCode {
    println!("{}", klais::version_string());
    ExitCode::SUCCESS
}
