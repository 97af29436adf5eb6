//! What an operator's monitoring sees: `klais run` with the XDP filter on a
//! veth, the native Kafka client into tansu and the control core, all in a
//! network namespace this test makes; traffic from the peer namespace. Its
//! `/metrics` must pass `promtool check metrics`, be scraped by a real
//! Prometheus (Debian's) that reads back the values klais shows, and every
//! query of the Grafana dashboard (`grafana/klais.json`) must parse in that
//! Prometheus and name only metrics that exist.
//!
//! Root and broker tiers together (`#[ignore = "root, broker"]`):
//! `cargo test -- --ignored root_broker::`, as root, with the broker built and
//! Debian's `prometheus` package installed (scripts/setup.sh).

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::broker::{free_port, Broker};
use common::{enter, http, secret_file, topology, v1, ADDR_A, ADDR_B};

/// A program from Debian's `prometheus` package, or a failure that says how
/// to get it.
fn prometheus_tool(name: &str) -> String {
    let path = format!("/usr/bin/{name}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: this test needs Debian's prometheus package (scripts/setup.sh installs it: apt-get install prometheus)"
    );
    path
}

/// GET `path` from `addr`: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, None, "")
}

/// Percent-encoding for a query string value.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prometheus's instant query API: the JSON answer.
fn query(prom: SocketAddr, q: &str) -> serde_json::Value {
    let (status, body) = get(prom, &format!("/api/v1/query?query={}", encode(q)));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{q}: {status}: {e}: {body}"))
}

/// The sum of a family's samples in an exposition text.
fn exposition_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Every `expr` in the dashboard, with Grafana's variables replaced as a
/// dashboard with every instance and shard selected would.
fn dashboard_queries() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => walk(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/klais.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    walk(&dash, &mut out);
    out.iter()
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
                .replace("$shard", ".*")
        })
        .collect()
}

/// The `klais_…` names a query uses.
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("klais_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.insert(expr[start..end].to_string());
        i = end;
    }
    out
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to our own child; a klais child then prints its
        // summary and exits, a Prometheus one shuts down.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `promtool check metrics` on `text`: no error, no lint complaint.
fn promtool_check(promtool: &str, text: &str) {
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Prometheus scraping `target` every second, its data in `dir`; its API
/// address.
fn start_prometheus(
    prometheus: &str,
    dir: &std::path::Path,
    target: SocketAddr,
) -> (Killed, SocketAddr) {
    let prom: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pcfg = dir.join("prometheus.yml");
    std::fs::write(
        &pcfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: klais\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let child = Command::new(prometheus)
        .arg(format!("--config.file={}", pcfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    (Killed(child), prom)
}

/// Every query of the dashboard parses in Prometheus at `prom` and names only
/// metrics it scraped.
fn check_dashboard(prom: SocketAddr) {
    let (_, names) = get(prom, "/api/v1/label/__name__/values");
    let names: serde_json::Value = serde_json::from_str(&names).unwrap();
    let known: BTreeSet<String> = names["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    let queries = dashboard_queries();
    assert!(queries.len() >= 40, "{} queries found", queries.len());
    let mut missing = BTreeSet::new();
    for q in &queries {
        let r = query(prom, q);
        assert_eq!(r["status"], "success", "{q}: {r}");
        for n in names_in(q) {
            if !known.contains(&n) {
                missing.insert(n);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard names metrics klais does not serve: {missing:?}"
    );
    println!(
        "{} dashboard queries checked against {} metric names",
        queries.len(),
        known.len()
    );
}

/// Root and broker tiers together, as root.
mod root_broker {
    use super::*;

    #[test]
    #[ignore = "root, broker"]
    fn metrics_pass_promtool_are_scraped_by_prometheus_and_every_dashboard_query_names_them() {
        common::require_netns();
        common::broker::require();
        let promtool = prometheus_tool("promtool");
        let prometheus = prometheus_tool("prometheus");
        let t = topology("o", 1);
        // This thread is the appliance: klais, its broker and the
        // Prometheus that scrapes it all start inside namespace A.
        enter(&t.a);
        let broker = Broker::start(None);
        broker.create_topic("klais-telemetry", 3);
        let dir = tempfile::tempdir().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let token = secret_file(dir.path(), "token", "tok\n");
        let cfg = dir.path().join("klais.toml");
        // The Dam on (the control core runs with it) at a rate no device
        // here reaches; an admin token, to set an operator ceiling.
        std::fs::write(
            &cfg,
            format!(
                "[ingest]\nlisten = \"{ADDR_A}:7700\"\n[admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"\n\
                 [dam]\ndevice_rate_pps = 100000\n\
                 [output.kafka]\nbrokers = \"{}\"\n[output.kafka.journal]\ndir = \"{}\"\n\
                 [xdp]\niface = \"{}\"\nmode = \"native\"\n[telemetry]\nstats_interval_ms = 200\n",
                token.display(),
                broker.brokers(),
                dir.path().join("journal").display(),
                t.ia
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_klais"))
            .args(["run", "--config"])
            .arg(&cfg)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let klais = Killed(child);
        let mut head = String::new();
        let mut line = String::new();
        while !line.contains("listening") {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "klais run did not start:\n{head}"
            );
            head.push_str(&line);
        }
        // Keep draining its standard error so it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));

        // An operator ceiling far above the traffic (its gauge has a sample
        // only while one is set).
        let (st, resp) = http(
            admin,
            "PUT",
            "/admin/ceiling",
            Some("tok"),
            r#"{"pps": 1000000000}"#,
        );
        assert_eq!(st, 200, "{resp}");

        // Devices in namespace B: good datagrams and some the filter drops.
        let ns_b = t.b.clone();
        std::thread::spawn(move || {
            enter(&ns_b);
            let tx = UdpSocket::bind(format!("{ADDR_B}:0")).unwrap();
            let to = format!("{ADDR_A}:7700");
            for seq in 0..200u32 {
                for d in 0..20 {
                    tx.send_to(&v1(&format!("obs-{d:02}"), seq), &to).unwrap();
                }
                tx.send_to(b"not klais", &to).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        })
        .join()
        .unwrap();
        let metrics = || {
            let (st, body) = get(admin, "/metrics");
            assert_eq!(st, 200, "{body}");
            body
        };
        wait_until("delivery", Duration::from_secs(30), || {
            exposition_sum(&metrics(), "klais_kafka_delivered_total") >= 4000.0
        });

        // promtool, on the exposition as served.
        promtool_check(&promtool, &metrics());

        // A real Prometheus scraping klais every second.
        let (_prom, prom) = start_prometheus(&prometheus, dir.path(), admin);
        wait_until("Prometheus's first scrape", Duration::from_secs(60), || {
            TcpStream::connect(prom).is_ok()
                && query(prom, "up{job=\"klais\"}")["data"]["result"][0]["value"][1] == "1"
        });
        // Traffic has stopped: what Prometheus read equals what klais shows.
        for name in [
            "klais_kafka_delivered_total",
            "klais_shard_accepted_total",
            "klais_xdp_packets_total",
        ] {
            let want = exposition_sum(&metrics(), name);
            assert!(want > 0.0, "{name} has counted something");
            wait_until(
                &format!("{name} = {want} in Prometheus"),
                Duration::from_secs(20),
                || {
                    let r = query(prom, &format!("sum({name})"));
                    r["data"]["result"][0]["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        == Some(want)
                },
            );
        }

        // Every dashboard query parses in Prometheus and names existing metrics.
        check_dashboard(prom);
        drop(klais);
        drop(broker);
    }
}
