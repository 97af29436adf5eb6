//! The `klais` binary as an operator uses it: exit codes, configuration errors
//! that name the key, and `klais run` receiving datagrams and draining on SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::free_udp_port;

const KLAIS: &str = env!("CARGO_BIN_EXE_klais");

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn version_prints_the_version_and_exits_zero() {
    let out = Command::new(KLAIS).arg("version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("klais 0."));
}

#[test]
fn config_check_of_the_default_prints_the_effective_configuration() {
    let out = Command::new(KLAIS)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listen = \"0.0.0.0:7700\""), "{text}");
}

#[test]
fn config_check_of_a_broken_file_names_the_key_and_exits_two() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "bad.toml", "[protocol]\nmax_payload_byte = 10\n");
    let out = Command::new(KLAIS)
        .args(["config", "check"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `max_payload_byte`"), "{err}");
    assert!(
        err.contains("max_payload_bytes"),
        "suggests the right key: {err}"
    );

    let p = write(&dir, "conflict.toml", "[output]\nsink = \"file\"\n");
    let out = Command::new(KLAIS)
        .args(["config", "check"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("output.sink, output.path"));
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let out = Command::new(KLAIS)
        .args(["run", "--config", "/nonexistent/klais.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/klais.toml"));
}

#[test]
fn an_unknown_subcommand_is_a_usage_error() {
    let out = Command::new(KLAIS).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn run_refuses_a_cpu_that_is_not_online_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "cpu.toml",
        "[ingest]\nlisten = \"127.0.0.1:47211\"\n[cores]\nshard_cpus = [4095]\n",
    );
    let out = Command::new(KLAIS)
        .args(["run", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cores.shard_cpus = 4095 is not an online CPU"),
        "{err}"
    );
}

#[test]
fn run_emits_received_datagrams_as_json_lines_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let p = write(
        &dir,
        "run.toml",
        &format!("[ingest]\nlisten = \"127.0.0.1:{port}\"\n[output]\nsink = \"stdout\"\n[telemetry]\nstats_interval_ms = 100\n"),
    );
    let mut child = Command::new(KLAIS)
        .args(["run", "--config"])
        .arg(&p)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the "listening" line: the socket is bound before it is printed.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !line.contains("listening") {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 || Instant::now() > deadline {
            let _ = child.kill();
            panic!("klais run did not start: {line}");
        }
    }
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let n = 500u32;
    for seq in 0..n {
        let payload = format!("{{\"n\":{seq}}}");
        let mut b = vec![0u8; 22 + payload.len()];
        klais::wire::encode("cli-dev", seq, payload.as_bytes(), &mut b).unwrap();
        tx.send_to(&b, ("127.0.0.1", port)).unwrap();
    }
    tx.send_to(b"junk", ("127.0.0.1", port)).unwrap();
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {rest}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), n as usize, "stderr: {rest}");
    for (i, l) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["device_id"], "cli-dev");
        assert_eq!(v["sequence"], i as u64);
        assert_eq!(
            v["payload"],
            format!("{{\"n\":{i}}}"),
            "unvalidated payloads are strings"
        );
    }
    assert!(rest.contains("klais stopped"), "{rest}");
    let too_short = rest
        .lines()
        .find(|l| l.trim_start().starts_with("too_short"))
        .unwrap_or_else(|| panic!("no too_short line in summary: {rest}"));
    assert_eq!(too_short.split_whitespace().nth(1), Some("1"), "{rest}");
}

#[test]
fn nonsense_durations_and_payload_sizes_are_usage_errors() {
    for args in [
        &["gen", "--duration", "-1"][..],
        &["gen", "--payload-bytes", "10"][..],
        &["run", "--duration", "nan"][..],
        &["demo", "--duration", "0"][..],
    ] {
        let out = Command::new(KLAIS).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn simulate_is_deterministic_and_writes_its_plot() {
    let dir = tempfile::tempdir().unwrap();
    let run = |png: &str| {
        let out = Command::new(KLAIS)
            .args([
                "simulate",
                "--devices",
                "300",
                "--outage",
                "20",
                "--capacity",
                "20000",
                "--plot",
            ])
            .arg(dir.path().join(png))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let a = run("a.png");
    let b = run("b.png");
    let table = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with("plot:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(table(&a), table(&b), "same seed, same output");
    assert!(a.contains("klais (Dam + PID + predictor)") && a.contains("baseline"));
    let png = std::fs::read(dir.path().join("a.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let bad = Command::new(KLAIS)
        .args(["simulate", "--share", "2"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// The shipped window model as the storm decider in the simulator (the
/// default storm): it forecasts the storm before saturation and the klais
/// variant loses nothing, like the rule.
#[test]
fn the_window_model_forecasts_the_default_storm_ahead_of_saturation() {
    let dir = tempfile::tempdir().unwrap();
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/window.json");
    let out = Command::new(KLAIS)
        .args(["simulate", "--window"])
        .arg(&model)
        .arg("--plot")
        .arg(dir.path().join("w.png"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let row = text
        .lines()
        .find(|l| l.starts_with("klais (Dam + PID + window model)"))
        .unwrap_or_else(|| panic!("no window row:\n{text}"));
    assert!(
        row.contains("ms ahead"),
        "forecast before saturation: {row}"
    );
    let lost: u64 = row.split_whitespace().nth(9).unwrap().parse().unwrap();
    assert_eq!(lost, 0, "{row}");
}

/// `klais model eval` on the shipped files prints the classifier's per-class
/// table (float and int8) and the window model's comparison with the rule.
#[test]
fn model_eval_reports_both_models() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let out = Command::new(KLAIS)
        .args([
            "model",
            "eval",
            "--only",
            "classifier",
            "--split",
            "validation",
            "--dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for class in ["normal", "flood", "sweep", "replay"] {
        assert!(
            text.lines().any(|l| l.starts_with(class)),
            "{class}: {text}"
        );
    }
    assert!(text.contains("accuracy: float"), "{text}");
    let bad = Command::new(KLAIS)
        .args(["model", "eval", "--split", "nope"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn config_check_reads_the_files_the_configuration_names_as_run_does() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = write(
        &dir,
        "files.toml",
        &format!(
            "[auth]\npolicy = \"v2\"\nkeys = \"{}/no-such-keys\"\n[admin]\ntoken_file = \"{}\"\n",
            dir.path().display(),
            token.display()
        ),
    );
    let out = Command::new(KLAIS)
        .args(["config", "check"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    // Every file's problem at once, each with its key and the fix.
    assert!(
        err.contains("auth.keys") && err.contains("klais keys generate"),
        "{err}"
    );
    assert!(
        err.contains("admin.token_file") && err.contains("chmod 600"),
        "{err}"
    );

    // The same configuration does not start either, for the same reasons.
    let out = Command::new(KLAIS)
        .args(["run", "--duration", "0.1", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.keys"));
}
