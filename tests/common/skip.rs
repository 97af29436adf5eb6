//! The one way a test or a benchmark in test mode does not test: [`skip`].
//! Benchmarks include this file by path (`#[path = "../tests/common/skip.rs"]`),
//! so it needs nothing but std.
//!
//! What a tier needs (root, the test broker) is not a skip: those tests are
//! `#[ignore = "root"]` / `#[ignore = "broker"]`, run only when asked for, and
//! fail when what they need is missing (`common::require_root`,
//! `common::broker::require`). A skip is for what a machine may lack below
//! that: a C compiler, a second CPU, a locked-memory limit, a benchmark's
//! privileges under a plain `cargo test`.

use std::io::Write;

/// The variable that turns every skip into a failure (scripts/test.sh, CI).
pub const NO_SKIP: &str = "KLAIS_NO_SKIP";

/// True when [`NO_SKIP`] is set to anything but "" or "0".
pub fn strict() -> bool {
    std::env::var_os(NO_SKIP).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Says that the calling test cannot test here and why; the caller returns
/// right after. Prints `SKIPPED: <reason>` to the real stderr (past the test
/// harness's capture, so a skip shows in `cargo test`'s output). With
/// `KLAIS_NO_SKIP=1` it panics instead: there every tier must run.
pub fn skip(reason: &str) {
    if strict() {
        panic!("KLAIS_NO_SKIP=1: this tier must run here: {reason}");
    }
    // The test harness names each test's thread after the test.
    let who = match std::thread::current().name() {
        Some(n) if n != "main" => format!(" ({n})"),
        _ => String::new(),
    };
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {reason}{who}");
}
