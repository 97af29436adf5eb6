//! The one way a test skips (tests/common/skip.rs): it says why where
//! `cargo test` shows it, and with KLAIS_NO_SKIP=1 it fails the test instead.

use std::process::{Command, Output};

#[path = "common/skip.rs"]
mod skip;

/// Set in the child runs below: there the test only skips.
const PROBE: &str = "KLAIS_SKIP_PROBE";

const NAME: &str = "a_skip_says_why_and_fails_the_test_under_klais_no_skip";

fn run_probe(no_skip: &str) -> (Output, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--test-threads=1"])
        .env(PROBE, "1")
        .env(skip::NO_SKIP, no_skip)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn a_skip_says_why_and_fails_the_test_under_klais_no_skip() {
    if std::env::var_os(PROBE).is_some() {
        skip::skip("the probe's reason");
        return;
    }
    let (lax, text) = run_probe("0");
    assert!(lax.status.success(), "{text}");
    assert!(
        String::from_utf8_lossy(&lax.stderr)
            .contains(&format!("SKIPPED: the probe's reason ({NAME})")),
        "shown past the harness's capture, with the test's name: {text}"
    );
    let (strict, text) = run_probe("1");
    assert!(!strict.status.success(), "{text}");
    assert!(
        text.contains("KLAIS_NO_SKIP=1: this tier must run here: the probe's reason"),
        "{text}"
    );
}
