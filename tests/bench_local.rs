//! `klais bench` end to end on the local topology (root and broker tiers:
//! `#[ignore = "root, broker"]`, `cargo test -- --ignored root_broker::`):
//! a network namespace and veth pair made by the bench, the real XDP program
//! and AF_XDP sockets, the cached test broker (tansu), and every target of
//! `klais bench compare`: klais on af_xdp and on udp, the tokio + rdkafka
//! baseline and the Python asyncio + aiokafka one. At a low rate every target
//! must deliver every message exactly once and in per-device order; the
//! results folder must hold the JSON and the three plots; the topology must
//! be gone afterwards. Asserts behaviour only: speed is measured by
//! `klais bench compare --find-max` (README figures).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The local topology uses one address range: one bench at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/baselines.sh"))
        .output()
        .expect("scripts/baselines.sh runs");
    assert!(
        out.status.success(),
        "scripts/baselines.sh (the Python baseline's venv): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn result_of(out_root: &Path) -> (PathBuf, serde_json::Value) {
    let dir = std::fs::read_dir(out_root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .expect("a results folder");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).unwrap()).unwrap();
    (dir, json)
}

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_klais"))
        .arg("bench")
        .args(args)
        .output()
        .expect("klais bench runs")
}

fn no_bench_netns_left() {
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&ns.stdout).into_owned();
    assert!(
        !text.lines().any(|l| l.starts_with("klais-bench-")),
        "bench namespaces left behind: {text}"
    );
}

/// Root and broker tiers together: `cargo test -- --ignored root_broker::`,
/// as root, with the broker built.
mod root_broker {
    use super::*;

    #[test]
    #[ignore = "root, broker"]
    fn compare_delivers_every_message_once_and_in_order_on_every_target() {
        common::require_root();
        common::broker::require();
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let py = python();
        let tmp = tempfile::tempdir().unwrap();
        let out = bench(&[
            "compare",
            "--targets",
            "klais-af_xdp,klais-udp,tokio,python",
            "--rate",
            "3000",
            "--duration",
            "2",
            "--devices",
            "500",
            "--quiet",
            "--python",
            py.to_str().unwrap(),
            "--out",
            tmp.path().to_str().unwrap(),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "klais bench compare failed:\n{stdout}\n{stderr}"
        );
        let (dir, r) = result_of(tmp.path());
        let targets = r["targets"].as_array().unwrap();
        assert_eq!(targets.len(), 4);
        for t in targets {
            let trial = &t["trials"][0];
            let name = t["target"].as_str().unwrap();
            let sent = trial["load"]["sent_valid"].as_u64().unwrap();
            let m = &trial["measured"];
            assert!(sent >= 5_000, "{name}: sent {sent}");
            assert_eq!(
                m["unique"].as_u64(),
                Some(sent),
                "{name}: every message read back"
            );
            assert_eq!(
                m["records"].as_u64(),
                Some(sent),
                "{name}: and nothing else"
            );
            assert_eq!(m["lost"].as_u64(), Some(0), "{name}");
            assert_eq!(m["duplicates"].as_u64(), Some(0), "{name}");
            assert_eq!(m["reordered"].as_u64(), Some(0), "{name}");
            assert_eq!(trial["zero_loss"].as_bool(), Some(true), "{name}");
            assert!(
                m["latency"]["p50_us"].as_u64().unwrap() > 0,
                "{name}: latency measured"
            );
            assert!(
                trial["cpu"]["target_s"].as_f64().unwrap() > 0.0,
                "{name}: CPU measured"
            );
        }
        for f in [
            "result.json",
            "summary.txt",
            "throughput.png",
            "latency.png",
            "latency-cdf.png",
        ] {
            let p = dir.join(f);
            assert!(
                p.metadata().map(|m| m.len() > 0).unwrap_or(false),
                "{} written",
                p.display()
            );
        }
        let summary = std::fs::read_to_string(dir.join("summary.txt")).unwrap();
        for name in [
            "klais (af_xdp)",
            "klais (udp)",
            "tokio + rdkafka",
            "python asyncio + aiokafka",
        ] {
            assert!(summary.contains(name), "summary names {name}:\n{summary}");
        }
        no_bench_netns_left();
    }

    #[test]
    #[ignore = "root, broker"]
    fn udp_generator_shapes_and_malformed_share_are_accounted_exactly() {
        common::require_root();
        common::broker::require();
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = tempfile::tempdir().unwrap();
        // sendmmsg generator, Poisson arrivals, mixed payload sizes, 2 % malformed
        // (rejected by klais, never expected back).
        let out = bench(&[
            "run",
            "--generator",
            "udp",
            "--shape",
            "poisson",
            "--payload",
            "64-900",
            "--malformed-ppm",
            "20000",
            "--rate",
            "4000",
            "--duration",
            "2",
            "--devices",
            "300",
            "--quiet",
            "--out",
            tmp.path().to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        let (dir, r) = result_of(tmp.path());
        let trial = &r["targets"][0]["trials"][0];
        let sent = trial["load"]["sent_valid"].as_u64().unwrap();
        let bad = trial["load"]["sent_malformed"].as_u64().unwrap();
        assert!(bad > 0, "malformed datagrams were sent");
        assert_eq!(trial["measured"]["unique"].as_u64(), Some(sent));
        assert_eq!(
            trial["measured"]["records"].as_u64(),
            Some(sent),
            "no malformed datagram delivered"
        );
        assert_eq!(trial["zero_loss"].as_bool(), Some(true));
        // klais counted the malformed ones under reject reasons (its own summary).
        let log = std::fs::read_to_string(dir.join("trial-01-klais-af_xdp.log")).unwrap();
        assert!(
            log.contains("too_short") || log.contains("bad_magic"),
            "klais's summary:\n{log}"
        );

        // A storm shape: silence, then every device flushes its backlog; the
        // sequences continue, so completeness still holds. Two AF_XDP TX threads
        // (devices split between them) toward klais on udp.
        let out = bench(&[
            "run",
            "--target",
            "klais-udp",
            "--threads",
            "2",
            "--shape",
            "storm:0.25:0.25:4",
            "--rate",
            "4000",
            "--duration",
            "4",
            "--devices",
            "300",
            "--quiet",
            "--out",
            tmp.path().to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (_, r) = result_of(tmp.path());
        let trial = &r["targets"][0]["trials"][0];
        let per_s: Vec<u64> = trial["load"]["per_second"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert!(
            per_s.len() >= 3 && per_s[1] < per_s[0] / 2,
            "the outage is visible: {per_s:?}"
        );
        assert_eq!(
            trial["measured"]["unique"].as_u64(),
            trial["load"]["sent_valid"].as_u64()
        );
        assert_eq!(trial["zero_loss"].as_bool(), Some(true));
        no_bench_netns_left();
    }
}

#[test]
fn bad_arguments_name_the_flag_and_the_fix() {
    let out = bench(&["run", "--payload", "10"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--payload"));
    let out = bench(&["run", "--shape", "wave"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("periodic, poisson"));
    let out = bench(&["run", "--topology", "remote"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--iface"));
    let out = bench(&["compare", "--targets", "nginx"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("klais-udp"));
}

/// Root tier: `cargo test -- --ignored root::`, as root.
mod root {
    use super::*;

    #[test]
    #[ignore = "root"]
    fn bad_arguments_past_the_root_check_name_the_flag_and_the_fix() {
        common::require_root();
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let out = bench(&["run", "--threads", "2"]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("--shards 2"));
        let out = bench(&["compare", "--targets", "nginx"]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("klais-udp"));
    }
}
