//! Operating klais: the admin API over real HTTP against a running klais
//! (UDP on loopback, file sink), protocol v2 devices end to end, and the
//! capabilities a started `klais run` keeps (root tier, `#[ignore = "root"]`:
//! read from /proc).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{free_udp_port, http, secret_file, start_or_skip, v1};

use klais::config::Config;
use klais::shard::auth::{KeyTable, Policy};
use klais::wire::{self, Reject};

fn config(out: &Path) -> Config {
    let mut cfg = common::file_sink_config(out);
    cfg.sequence.max_devices = 4096;
    // Each test's replay windows are its own (the default file is shared).
    cfg.auth.replay_state = Some(out.with_extension("replay"));
    cfg
}

/// The value of one sample in a /metrics text (`name` with its labels, as
/// written), read as `klais top` reads it.
fn metric(text: &str, sample: &str) -> Option<f64> {
    klais::top::Scrape::parse(text).get(sample)
}

/// Every sample of a family that has a `shard` label.
fn samples(text: &str, name: &str) -> Vec<f64> {
    klais::top::Scrape::parse(text)
        .by_label(name, "shard", "")
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

/// Polls `/metrics` until `ok` holds (or 10 s pass); returns the last text.
fn wait_metrics(addr: SocketAddr, ok: impl Fn(&str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let (_, m) = http(addr, "GET", "/metrics", None, "");
        if ok(&m) || t0.elapsed() > Duration::from_secs(10) {
            return m;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn admin_writes_without_the_right_token_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("out.jsonl"));
    cfg.admin.token_file = Some(secret_file(dir.path(), "token", "t0ken-1234\n"));
    let Some(running) = start_or_skip(&cfg) else {
        return;
    };
    let a = running.admin_addr().expect("admin server runs");
    let to = running.local_addr();
    // Reads need no token.
    let (st, body) = http(a, "GET", "/health", None, "");
    assert_eq!(st, 200, "{body}");
    let (st, body) = http(a, "GET", "/ready", None, "");
    assert_eq!(st, 200, "{body}");
    let (st, m) = http(a, "GET", "/metrics", None, "");
    assert_eq!(st, 200);
    assert!(
        m.contains("# TYPE klais_shard_rejects_total counter"),
        "{m}"
    );

    // Every kind of write, without a token and with a wrong one.
    let writes = [
        ("PUT", "/admin/deny/dev-x", ""),
        ("DELETE", "/admin/deny/dev-x", ""),
        ("PUT", "/admin/ceiling", r#"{"pps": 10}"#),
        ("DELETE", "/admin/ceiling", ""),
        ("PUT", "/admin/overrides/dev-x", r#"{"pps": 1}"#),
        ("POST", "/admin/model/reload", ""),
    ];
    for (method, path, body) in writes {
        let (st, b) = http(a, method, path, None, body);
        assert_eq!(st, 401, "{method} {path} without a token: {b}");
        let (st, b) = http(a, method, path, Some("t0ken-12345"), body);
        assert_eq!(st, 403, "{method} {path} with a wrong token: {b}");
        let (st, b) = http(a, method, path, Some("t0ken-123"), body);
        assert_eq!(st, 403, "{method} {path} with a prefix of the token: {b}");
    }
    let (_, limits) = http(a, "GET", "/admin/limits", None, "");
    let limits: serde_json::Value = serde_json::from_str(&limits).unwrap();
    assert_eq!(limits["ceiling_pps"], serde_json::Value::Null);
    assert_eq!(limits["denied"], serde_json::json!([]));

    // The refused deny changed nothing: dev-x is delivered.
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.send_to(&v1("dev-x", 1), to).unwrap();
    // With the token: dev-x is denied from the shards' next tick on.
    let (st, b) = http(a, "PUT", "/admin/deny/dev-x", Some("t0ken-1234"), "");
    assert_eq!(st, 200, "{b}");
    let m = wait_metrics(a, |m| {
        metric(m, "klais_operator_denied_devices") == Some(1.0)
    });
    assert_eq!(
        metric(&m, "klais_admin_writes_total{result=\"unauthorized\"}"),
        Some(6.0)
    );
    assert_eq!(
        metric(&m, "klais_admin_writes_total{result=\"forbidden\"}"),
        Some(12.0)
    );
    assert_eq!(
        metric(&m, "klais_admin_writes_total{result=\"ok\"}"),
        Some(1.0)
    );
    // One publication tick (100 ms here) later the shard has the list.
    std::thread::sleep(Duration::from_millis(300));
    tx.send_to(&v1("dev-x", 2), to).unwrap();
    tx.send_to(&v1("dev-y", 1), to).unwrap();
    let m = wait_metrics(a, |m| {
        metric(m, "klais_shard_received_total{shard=\"0\"}") == Some(3.0)
    });
    assert_eq!(
        metric(
            &m,
            "klais_shard_rejects_total{shard=\"0\",reason=\"denied\"}"
        ),
        Some(1.0),
        "{m}"
    );
    let s = running.stop().unwrap();
    assert_eq!(s.shards.accepted, 2);
    assert_eq!(s.shards.rejects.get(Reject::Denied), 1);
}

#[test]
fn hostile_requests_are_refused_and_the_server_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("out.jsonl"));
    cfg.admin.token_file = Some(secret_file(dir.path(), "token", "tok\n"));
    let Some(running) = start_or_skip(&cfg) else {
        return;
    };
    let a = running.admin_addr().unwrap();
    // A huge Content-Length and no body: refused at once, nothing allocated.
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "PUT /admin/ceiling HTTP/1.1\r\nAuthorization: Bearer tok\r\nContent-Length: 18446744073709551000\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 4"), "{resp:?}");
    // A client that connects and says nothing, and one that sends garbage.
    let _idle = TcpStream::connect(a).unwrap();
    let mut junk = TcpStream::connect(a).unwrap();
    junk.write_all(b"\x16\x03\x01 not http\r\n\r\n").unwrap();
    // The server still answers (the idle one is dropped at its deadline).
    let (st, _) = http(a, "GET", "/health", None, "");
    assert_eq!(st, 200);
    let (st, _) = http(a, "PUT", "/admin/ceiling", Some("tok"), &"x".repeat(70_000));
    assert_eq!(st, 413);
    let (st, b) = http(a, "PUT", "/admin/ceiling", Some("tok"), r#"{"pps": 5}"#);
    assert_eq!(st, 409, "no Dam, no control core: {b}");
    assert!(b.contains("dam.device_rate_pps"), "{b}");
    let (st, _) = http(a, "PUT", "/admin/deny/a%00b", Some("tok"), "");
    assert_eq!(st, 400, "an id with a NUL is refused");
    running.stop().unwrap();
}

#[test]
fn without_a_token_file_the_admin_api_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir.path().join("out.jsonl"));
    let Some(running) = start_or_skip(&cfg) else {
        return;
    };
    let a = running.admin_addr().unwrap();
    let (st, b) = http(a, "PUT", "/admin/deny/d", Some("anything"), "");
    assert_eq!(st, 403);
    assert!(b.contains("admin.token_file"), "{b}");
    let (st, _) = http(a, "GET", "/status", None, "");
    assert_eq!(st, 200);
    // `klais top` reads the same endpoint: one frame after some traffic.
    let first = klais::top::Scrape::parse(&klais::top::http_get(a, "/metrics").unwrap());
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..20 {
        tx.send_to(&v1("top-dev", i), running.local_addr()).unwrap();
    }
    tx.send_to(b"junk", running.local_addr()).unwrap();
    wait_metrics(a, |m| {
        metric(m, "klais_shard_received_total{shard=\"0\"}") == Some(21.0)
    });
    let then = klais::top::Scrape::parse(&klais::top::http_get(a, "/metrics").unwrap());
    let frame = klais::top::text(&klais::top::view(&then, &first));
    assert!(frame.starts_with("klais "), "{frame}");
    assert!(frame.contains("ready yes"), "{frame}");
    assert!(
        frame.lines().any(|l| l.trim_start().starts_with("0 ")),
        "a row for shard 0: {frame}"
    );
    assert!(frame.contains("shards:too_short"), "{frame}");
    running.stop().unwrap();
}

#[test]
fn a_ceiling_set_through_the_api_holds_against_the_pid_controller() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("out.jsonl"));
    cfg.admin.token_file = Some(secret_file(dir.path(), "token", "tok\n"));
    // The Dam on: the control core's PID sets the shards' admission rate.
    cfg.dam.device_rate_pps = Some(100_000);
    cfg.dam.queue_messages = 1_000_000;
    cfg.dam.queue_bytes = 256 << 20;
    let Some(running) = start_or_skip(&cfg) else {
        return;
    };
    let a = running.admin_addr().unwrap();
    let to = running.local_addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut seq = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for d in 0..100 {
                    let _ = tx.send_to(&v1(&format!("c-{d}"), seq), to);
                }
                seq += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // Without a ceiling the PID runs far above 500/s (its floor alone is
    // 5 % of the configured 1e9).
    let m = wait_metrics(a, |m| {
        metric(m, "klais_control_ticks_total").unwrap_or(0.0) > 20.0
    });
    let before = metric(&m, "klais_control_global_rate_pps").unwrap();
    assert!(before > 500.0, "{before}");

    let (st, b) = http(a, "PUT", "/admin/ceiling", Some("tok"), r#"{"pps": 500}"#);
    assert_eq!(st, 200, "{b}");
    let m = wait_metrics(a, |m| {
        metric(m, "klais_dam_queued_total{shard=\"0\"}").unwrap_or(0.0) > 0.0
            && metric(m, "klais_control_global_rate_pps").unwrap_or(1e18) <= 500.0
    });
    assert_eq!(metric(&m, "klais_operator_ceiling_pps"), Some(500.0), "{m}");
    // Over many control ticks, under load the PID would answer with more
    // rate, it stays under the ceiling, and so does every shard's share;
    // what is over it waits in the Dam.
    let ticks0 = metric(&m, "klais_control_ticks_total").unwrap();
    for _ in 0..10 {
        let m = wait_metrics(a, |_| true);
        let g = metric(&m, "klais_control_global_rate_pps").unwrap();
        assert!(g <= 500.0, "global rate {g} above the ceiling");
        for r in samples(&m, "klais_dam_shard_rate_pps") {
            assert!(r <= 500.0 + 1e-6, "shard rate {r} above the ceiling");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = wait_metrics(a, |_| true);
    assert!(metric(&m, "klais_control_ticks_total").unwrap() > ticks0 + 20.0);
    assert!(
        metric(&m, "klais_dam_depth{shard=\"0\"}").unwrap() > 0.0,
        "{m}"
    );

    // Cleared: the PID's own range again.
    let (st, _) = http(a, "DELETE", "/admin/ceiling", Some("tok"), "");
    assert_eq!(st, 200);
    let m = wait_metrics(a, |m| {
        metric(m, "klais_control_global_rate_pps").unwrap_or(0.0) > 500.0
    });
    assert!(metric(&m, "klais_control_global_rate_pps").unwrap() > 500.0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    let s = running.stop().unwrap();
    assert!(s.shards.accepted > 0);
}

const KEYS: &str =
    "meter-1 000102030405060708090a0b0c0d0e0f\nmeter-2 f0e0d0c0b0a090807060504030201000\n";

fn v2(id: &str, seq: u32, key: Option<&wire::DeviceKey>) -> Vec<u8> {
    let mut b = vec![0u8; 256];
    let body = format!("{{\"seq\":{seq}}}");
    let n = wire::encode_v2(id, seq, 0, body.as_bytes(), key, &mut b).unwrap();
    b.truncate(n);
    b
}

fn records(out: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["device_id"].as_str().unwrap().to_string(),
                v["sequence"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn v2_devices_are_delivered_with_the_right_key_only_once_and_v1_is_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let mut cfg = config(&out);
    cfg.auth.keys = Some(secret_file(dir.path(), "keys", KEYS));
    let Some(running) = start_or_skip(&cfg) else {
        return;
    };
    let table = KeyTable::parse(KEYS).unwrap();
    let k1 = *table
        .key_of(&wire::raw_device_id("meter-1").unwrap())
        .unwrap();
    let k2 = *table
        .key_of(&wire::raw_device_id("meter-2").unwrap())
        .unwrap();
    let to = running.local_addr();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let good = v2("meter-1", 1, Some(&k1));
    let sends = [
        good.clone(),
        v2("meter-1", 2, Some(&k2)), // meter-2's key: bad MAC
        good.clone(),                // replayed
        v2("meter-1", 3, Some(&k1)),
        v2("meter-9", 1, Some(&k1)), // no key for meter-9
        v1("legacy-1", 1),           // v1 keeps working
        v2("meter-2", 7, Some(&k2)),
        v2("plain", 1, None), // unauthenticated v2: allowed under "both"
    ];
    for s in &sends {
        tx.send_to(s, to).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let s = running.stop().unwrap();
    let r = s.shards.rejects;
    assert_eq!(r.get(Reject::BadMac), 1);
    assert_eq!(r.get(Reject::Replay), 1);
    assert_eq!(r.get(Reject::UnknownDevice), 1);
    let mut got = records(&out);
    got.sort();
    assert_eq!(
        got,
        vec![
            ("legacy-1".into(), 1),
            ("meter-1".into(), 1),
            ("meter-1".into(), 3),
            ("meter-2".into(), 7),
            ("plain".into(), 1),
        ]
    );
}

#[test]
fn a_datagram_captured_before_a_restart_is_still_a_replay_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let mut cfg = config(&out);
    cfg.auth.keys = Some(secret_file(dir.path(), "keys", KEYS));
    cfg.auth.replay_state = Some(dir.path().join("state/replay"));
    let k1 = *KeyTable::parse(KEYS)
        .unwrap()
        .key_of(&wire::raw_device_id("meter-1").unwrap())
        .unwrap();
    let captured = v2("meter-1", 5, Some(&k1));
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let Some(first) = start_or_skip(&cfg) else {
        return;
    };
    tx.send_to(&captured, first.local_addr()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(first.stop().unwrap().shards.accepted, 1);
    let saved = std::fs::read_to_string(dir.path().join("state/replay")).unwrap();
    assert!(
        saved.lines().any(|l| l.starts_with("meter-1 5 ")),
        "{saved}"
    );

    let second = start_or_skip(&cfg).unwrap();
    let to = second.local_addr();
    tx.send_to(&captured, to).unwrap();
    tx.send_to(&v2("meter-1", 4, Some(&k1)), to).unwrap();
    tx.send_to(&v2("meter-1", 6, Some(&k1)), to).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let s = second.stop().unwrap();
    assert_eq!(s.shards.rejects.get(Reject::Replay), 2);
    assert_eq!(s.shards.accepted, 1);
}

#[test]
fn a_port_that_requires_v2_refuses_v1_and_unauthenticated_v2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let mut cfg = config(&out);
    let port = free_udp_port();
    cfg.ingest.listen = format!("127.0.0.1:{port}").parse().unwrap();
    cfg.auth.keys = Some(secret_file(dir.path(), "keys", KEYS));
    cfg.auth.ports.insert(port.to_string(), Policy::V2);
    let Some(running) = start_or_skip(&cfg) else {
        return;
    };
    let k1 = *KeyTable::parse(KEYS)
        .unwrap()
        .key_of(&wire::raw_device_id("meter-1").unwrap())
        .unwrap();
    let to = running.local_addr();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.send_to(&v1("legacy-1", 1), to).unwrap();
    tx.send_to(&v2("plain", 1, None), to).unwrap();
    tx.send_to(&v2("meter-1", 1, Some(&k1)), to).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let s = running.stop().unwrap();
    assert_eq!(s.shards.rejects.get(Reject::Policy), 2);
    assert_eq!(records(&out), vec![("meter-1".into(), 1)]);
}

/// Root tier: `cargo test -- --ignored root::`, as root.
mod root {
    use super::*;

    /// Runs `klais run` with `config` (in namespace `ns` if given) until its
    /// stderr says it dropped capabilities; returns the child and that line
    /// (the caller waits for it: [`stop_child`]).
    #[allow(clippy::zombie_processes)]
    fn start_binary(config: &Path, ns: Option<&str>) -> (std::process::Child, String) {
        use std::io::BufRead;
        let exe = env!("CARGO_BIN_EXE_klais");
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns, exe]);
                c
            }
            None => std::process::Command::new(exe),
        };
        let mut child = cmd
            .args(["run", "--config"])
            .arg(config)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let t0 = Instant::now();
        let mut seen = Vec::new();
        while t0.elapsed() < Duration::from_secs(60) {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(l) if l.starts_with("capabilities:") => return (child, l),
                Ok(l) => seen.push(l),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "klais did not report its capabilities; stderr:\n{}",
            seen.join("\n")
        );
    }

    /// The pid of `klais` itself (under `ip netns exec`, a child of the child).
    fn klais_pid(child: &std::process::Child) -> u32 {
        let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_klais")).unwrap();
        let pid = child.id();
        let is_klais =
            |p: u32| std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == exe);
        if is_klais(pid) {
            return pid;
        }
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .find(|p| is_klais(*p))
            .unwrap_or(pid)
    }

    fn assert_every_thread_holds(pid: u32, want: u64) -> usize {
        let threads = klais::privilege::threads_of(&pid.to_string());
        assert!(threads.len() > 3, "klais runs several threads: {threads:?}");
        for (tid, c) in &threads {
            let comm =
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
            assert_eq!(
                (c.effective, c.permitted, c.inheritable, c.ambient),
                (want, want, 0, 0),
                "thread {tid} ({}) holds {:?}, documented: {:?}",
                comm.trim(),
                klais::privilege::names(c.permitted),
                klais::privilege::names(want)
            );
        }
        threads.len()
    }

    fn stop_child(mut child: std::process::Child, pid: u32) {
        // SAFETY: SIGTERM to a process this test started.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    #[ignore = "root"]
    fn after_start_up_klais_keeps_only_the_documented_capabilities() {
        common::require_netns();
        let dir = tempfile::tempdir().unwrap();
        // Without the XDP filter: nothing.
        let port = free_udp_port();
        let plain = dir.path().join("plain.toml");
        std::fs::write(
        &plain,
        format!(
            "[ingest]\nlisten = \"127.0.0.1:{port}\"\nshards = 1\n[output]\nsink = \"null\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
        let (child, line) = start_binary(&plain, None);
        let pid = klais_pid(&child);
        assert_eq!(line, "capabilities: none kept");
        let n = assert_every_thread_holds(pid, 0);
        println!("no XDP: {n} threads, no capabilities");
        stop_child(child, pid);

        // With the XDP filter on a veth in its own namespace: CAP_BPF and
        // CAP_NET_ADMIN, nothing else, in every thread.
        let t = common::topology("cap", 1);
        let xdp = dir.path().join("xdp.toml");
        std::fs::write(
        &xdp,
        format!(
            "[ingest]\nlisten = \"{}:7700\"\nshards = 1\n[output]\nsink = \"null\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[xdp]\niface = \"{}\"\nmode = \"generic\"\n",
            common::ADDR_A,
            t.ia
        ),
    )
    .unwrap();
        let (child, line) = start_binary(&xdp, Some(&t.a));
        let pid = klais_pid(&child);
        assert_eq!(line, "capabilities: kept only CAP_NET_ADMIN, CAP_BPF");
        let want = 1u64 << klais::privilege::CAP_BPF | 1u64 << klais::privilege::CAP_NET_ADMIN;
        let n = assert_every_thread_holds(pid, want);
        println!("XDP: {n} threads, CAP_BPF + CAP_NET_ADMIN");
        stop_child(child, pid);
    }
}
