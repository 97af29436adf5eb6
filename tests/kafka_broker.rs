//! Broker tier (`#[ignore = "broker"]`, `cargo test -- --ignored broker::`):
//! klais against a real Kafka-compatible broker (tansu) on loopback, checked
//! by what a consumer reads back.
//!
//! - N messages from M devices → exactly N records, keys, headers, partition
//!   (Java murmur2), per-device order, payload bytes identical;
//! - the broker unreachable for seconds under load → nothing lost, order kept,
//!   the journal empty afterwards;
//! - SIGTERM with the broker down → everything accepted is in the journal; the
//!   next start delivers it.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::broker::{free_port, Broker, Relay};
use klais::config::{Config, SinkKind};
use klais::kafka::consume::{for_each, java_partition, Consumed};

/// One klais and one broker at a time: the machine has two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn cfg(brokers: &str, topic: &str, journal: &Path) -> Config {
    let mut c = Config::default();
    c.ingest.listen = "127.0.0.1:0".parse().unwrap();
    // Tests run in parallel: each klais serves its metrics on its own port.
    c.admin.listen = "127.0.0.1:0".parse().unwrap();
    c.output.sink = SinkKind::Kafka;
    // The librdkafka path; `native_cfg` switches to the native client.
    c.output.kafka.client = "librdkafka".into();
    c.output.kafka.brokers = brokers.into();
    c.output.kafka.topic = topic.into();
    c.output.kafka.gateway_id = Some("gw-test".into());
    c.output.kafka.shutdown_flush_ms = 3000;
    c.output.kafka.journal.dir = journal.to_path_buf();
    c.output.kafka.journal.segment_bytes = 1 << 20;
    c.telemetry.stats_interval_ms = 100;
    c
}

fn payload(id: &str, seq: u32) -> String {
    format!("{{\"dev\":\"{id}\",\"seq\":{seq},\"t\":[1,2,3]}}")
}

/// Sends `per_device` messages from each device (sequence `first..`),
/// interleaved, at about `pps`.
fn send(to: SocketAddr, devices: &[String], first: u32, per_device: u32, pps: u64) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut buf = vec![0u8; 2048];
    for seq in first..first + per_device {
        for id in devices {
            let body = payload(id, seq);
            let n = klais::wire::encode(id, seq, body.as_bytes(), &mut buf).unwrap();
            s.send_to(&buf[..n], to).unwrap();
            sent += 1;
            if sent % 200 == 0 {
                let due = Duration::from_secs_f64(sent as f64 / pps as f64);
                if let Some(w) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(w);
                }
            }
        }
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_back(brokers: &str, topic: &str, expect: u64) -> Vec<Consumed> {
    let mut v = Vec::new();
    // Read past `expect` briefly: duplicates would show up.
    for_each(brokers, topic, None, Duration::from_secs(3), |m| v.push(m)).unwrap();
    assert!(
        v.len() as u64 >= expect,
        "read {} of {expect} records back",
        v.len()
    );
    v
}

/// Every record checked against what was sent; returns sequences per device.
fn check_records(recs: &[Consumed], partitions: i32) -> HashMap<String, Vec<u32>> {
    let mut per: HashMap<String, Vec<u32>> = HashMap::new();
    for r in recs {
        let id = String::from_utf8(r.key.clone()).unwrap();
        let seq: u32 = r.header("sequence").unwrap().parse().unwrap();
        assert_eq!(r.payload, payload(&id, seq).as_bytes(), "payload bytes");
        assert_eq!(
            r.partition,
            java_partition(&r.key, partitions),
            "murmur2 partition of {id}"
        );
        assert_eq!(r.header("gateway"), Some("gw-test"));
        assert_eq!(r.header("shard"), Some("0"));
        let ts: u64 = r.header("recv_ts_ns").unwrap().parse().unwrap();
        assert_eq!(r.timestamp_ms, Some((ts / 1_000_000) as i64));
        let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["sequence", "recv_ts_ns", "gateway", "shard"]);
        per.entry(id).or_default().push(seq);
    }
    per
}

/// Exactly `m` devices × `per` records (sequences 0..per each), every one
/// passing [`check_records`], in order per device, none twice.
fn assert_exactly_once(recs: &[Consumed], what: &str, m: usize, per: u32) {
    let n = m as u64 * u64::from(per);
    assert_eq!(recs.len() as u64, n, "{what}: exactly N, no duplicates");
    let per_dev = check_records(recs, 3);
    assert_eq!(per_dev.len(), m, "{what}: every device");
    for (id, seqs) in per_dev {
        assert_eq!(
            seqs,
            (0..per).collect::<Vec<u32>>(),
            "{what}, {id}: order, nothing lost"
        );
    }
}

fn devices(m: usize) -> Vec<String> {
    (0..m).map(|i| format!("sensor-{i:04}")).collect()
}

/// Broker tier: `cargo test -- --ignored broker::` (`scripts/broker.sh install`
/// builds the broker).
mod broker {
    use super::*;

    #[test]
    #[ignore = "broker"]
    fn n_messages_from_m_devices_are_read_back_exactly() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let broker = Broker::start(None);
        broker.create_topic("t-roundtrip", 3);
        let dir = tempfile::tempdir().unwrap();
        let running =
            klais::runtime::start(&cfg(&broker.brokers(), "t-roundtrip", dir.path())).unwrap();
        let devs = devices(40);
        send(running.local_addr(), &devs, 0, 250, 20_000);
        let n = 40 * 250;
        wait_for("delivery", Duration::from_secs(60), || {
            running.kafka_snapshot().unwrap().delivered >= n
        });
        let s = running.stop().unwrap();
        let k = s.kafka.unwrap();
        assert_eq!(s.shards.accepted, n, "every datagram accepted on loopback");
        assert_eq!((k.accepted, k.delivered, k.journaled), (n, n, 0));
        let (l, r) = k.reconcile();
        assert_eq!(l, r, "{k:?}");
        let recs = read_back(&broker.brokers(), "t-roundtrip", n);
        assert_exactly_once(&recs, "t-roundtrip", 40, 250);
    }

    #[test]
    #[ignore = "broker"]
    fn a_broker_outage_under_load_loses_nothing_and_keeps_order() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let relay_port = free_port();
        let broker = Broker::start(Some(relay_port));
        broker.create_topic("t-outage", 3);
        let relay = Relay::start_on(relay_port, broker.port);
        let dir = tempfile::tempdir().unwrap();
        let brokers = format!("127.0.0.1:{relay_port}");
        let running = klais::runtime::start(&cfg(&brokers, "t-outage", dir.path())).unwrap();
        let to = running.local_addr();
        let devs = devices(200);
        // Load before, during and after a cut of several seconds.
        let sender = {
            let devs = devs.clone();
            std::thread::spawn(move || send(to, &devs, 0, 400, 10_000))
        };
        wait_for("first deliveries", Duration::from_secs(30), || {
            running.kafka_snapshot().unwrap().delivered > 5_000
        });
        relay.cut();
        wait_for("the breaker to open", Duration::from_secs(30), || {
            running.kafka_snapshot().unwrap().breaker_opens > 0
        });
        std::thread::sleep(Duration::from_secs(3));
        let during = running.kafka_snapshot().unwrap();
        relay.restore();
        sender.join().unwrap();
        let n = 200 * 400;
        wait_for("accepted = delivered", Duration::from_secs(120), || {
            let k = running.kafka_snapshot().unwrap();
            k.accepted == n && k.delivered == n && k.journaled == 0
        });
        let s = running.stop().unwrap();
        let k = s.kafka.unwrap();
        println!("during the outage: {during:?}\nat the end: {k:?}");
        assert!(
            during.journal.appended > 0,
            "the outage sent messages to the journal: {during:?}"
        );
        assert_eq!(
            (k.delivered, k.journaled, k.dropped_journal_full),
            (n, 0, 0)
        );
        assert_eq!(k.reconcile().0, k.reconcile().1, "{k:?}");
        assert_eq!(
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| e
                    .as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "klj"))
                .count(),
            0,
            "journal empty afterwards"
        );
        let recs = read_back(&brokers, "t-outage", n);
        let per = check_records(&recs, 3);
        assert_eq!(per.len(), 200);
        let mut dups = 0;
        for (id, seqs) in &per {
            let mut seen = seqs.clone();
            seen.dedup();
            dups += seqs.len() - seen.len();
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "{id}: per-device order kept"
            );
            assert_eq!(seen, (0..400).collect::<Vec<u32>>(), "{id}: nothing lost");
        }
        assert_eq!(dups, 0, "no duplicates (idempotent producer)");
    }

    #[test]
    #[ignore = "broker"]
    fn sigterm_with_the_broker_down_journals_everything_and_the_next_start_delivers_it() {
        sigterm_without_a_broker_then_deliver("librdkafka");
    }
}

/// `klais run` (the binary, configuration from a file) with `client`: a first
/// start ever with nothing on the broker port, traffic, SIGTERM — everything
/// accepted is in the journal (a record per entry for librdkafka, whole
/// batches for native); the broker comes up and the next start delivers it
/// exactly once, in order, and empties the journal.
fn sigterm_without_a_broker_then_deliver(client: &str) {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    common::broker::require();
    let port = free_port();
    let udp = free_port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("klais.toml");
    let journal = dir.path().join("journal");
    std::fs::write(
            &conf,
            format!(
                "[ingest]\nlisten = \"127.0.0.1:{udp}\"\n[output]\nsink = \"kafka\"\n\
             [output.kafka]\nclient = \"{client}\"\nbrokers = \"127.0.0.1:{port}\"\ntopic = \"t-sigterm\"\n\
             gateway_id = \"gw-test\"\nshutdown_flush_ms = 1000\n\
             [output.kafka.journal]\ndir = \"{}\"\nsegment_bytes = 1048576\n",
                journal.display()
            ),
        )
        .unwrap();
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_klais"))
            .args(["run", "--config", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let listening = |udp: u16| {
        // klais binds the UDP port when it is up.
        UdpSocket::bind(("127.0.0.1", udp)).is_err()
    };
    // 1. Nothing listens on the broker port.
    let klais = start();
    wait_for("klais up", Duration::from_secs(30), || listening(udp));
    let devs = devices(50);
    let to: SocketAddr = format!("127.0.0.1:{udp}").parse().unwrap();
    send(to, &devs, 0, 200, 20_000);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(klais.id() as i32, libc::SIGTERM) };
    let out = klais.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "klais exit: {err}");
    let accepted: u64 = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("accepted"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no accepted line in: {err}"));
    assert_eq!(accepted, 50 * 200, "{err}");
    let held: u64 = klais::kafka::journal::read_all(&journal)
        .unwrap()
        .iter()
        .map(|(m, _)| {
            if m.flags & klais::kafka::native::FLAG_BATCH != 0 {
                u64::from(m.sequence)
            } else {
                1
            }
        })
        .sum();
    assert_eq!(
        held, accepted,
        "everything accepted is in the journal: {err}"
    );
    // 2. The broker comes up on that port; the next start delivers the journal.
    let broker = Broker::start_at(port);
    broker.create_topic("t-sigterm", 3);
    let klais = start();
    let brokers = broker.brokers();
    let mut recs = Vec::new();
    let t = Instant::now();
    while (recs.len() as u64) < accepted && t.elapsed() < Duration::from_secs(90) {
        recs.clear();
        for_each(
            &brokers,
            "t-sigterm",
            Some(accepted),
            Duration::from_secs(2),
            |m| recs.push(m),
        )
        .unwrap();
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(klais.id() as i32, libc::SIGTERM) };
    let out = klais.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = read_back(&brokers, "t-sigterm", accepted);
    assert_exactly_once(&recs, client, 50, 200);
    assert!(
        klais::kafka::journal::read_all(&journal)
            .unwrap()
            .is_empty(),
        "journal empty after delivery"
    );
}

/// The records of `topic` as Python's aiokafka reads them
/// (tests/fixtures/read_topic.py, in the venv `scripts/baselines.sh` makes).
fn read_back_python(brokers: &str, topic: &str, expect: u64) -> Vec<Consumed> {
    read_back_python_with("aiokafka", brokers, topic, expect, None)
}

/// The records of `topic` as a Python client reads them: `client` is
/// "aiokafka" or "confluent" (confluent-kafka, librdkafka 2.12 with zstd, TLS
/// and SASL); `security`: aiokafka's names, see tests/fixtures/read_topic.py.
fn read_back_python_with(
    client: &str,
    brokers: &str,
    topic: &str,
    expect: u64,
    security: Option<&serde_json::Value>,
) -> Vec<Consumed> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = Command::new(root.join("scripts/baselines.sh"))
        .output()
        .expect("scripts/baselines.sh runs");
    assert!(
        py.status.success(),
        "scripts/baselines.sh: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let py = String::from_utf8_lossy(&py.stdout).trim().to_string();
    let out = Command::new(py)
        .arg(root.join("tests/fixtures/read_topic.py"))
        .args(["--client", client])
        .args([brokers, topic, &expect.to_string(), "3"])
        .args(security.map(ToString::to_string))
        .stderr(Stdio::inherit())
        .output()
        .expect("the Python reader runs");
    assert!(
        out.status.success(),
        "read_topic.py --client {client} failed"
    );
    let hex = |v: &serde_json::Value| -> Vec<u8> {
        let s = v.as_str().unwrap();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let recs: Vec<Consumed> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Consumed {
                partition: v["partition"].as_i64().unwrap() as i32,
                offset: v["offset"].as_i64().unwrap(),
                key: hex(&v["key"]),
                payload: hex(&v["value"]),
                headers: v["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| (h[0].as_str().unwrap().to_string(), hex(&h[1])))
                    .collect(),
                timestamp_ms: v["timestamp"].as_i64(),
            }
        })
        .collect();
    assert!(
        recs.len() as u64 >= expect,
        "Python ({client}) read {} of {expect} records back",
        recs.len()
    );
    recs
}

/// The native client (`output.kafka.client = "native"`): the shards encode
/// the batches; the same checks as the librdkafka path, read back by
/// librdkafka's consumer (klais's build) and by Python's aiokafka and
/// confluent-kafka (its wheel's own librdkafka 2.12).
mod native {
    use super::*;

    fn native_cfg(brokers: &str, topic: &str, journal: &Path, codec: &str) -> Config {
        let mut c = cfg(brokers, topic, journal);
        c.output.kafka.client = "native".into();
        c.output.kafka.compression = codec.into();
        c
    }

    /// N messages from M devices through `client` with `codec`: exactly N
    /// back, identical, in order, in the murmur2 partition.
    fn round_trip(client: &str, codec: &str) {
        let broker = Broker::start(None);
        let topic = format!("t-{client}-{codec}");
        broker.create_topic(&topic, 3);
        let dir = tempfile::tempdir().unwrap();
        let mut c = native_cfg(&broker.brokers(), &topic, dir.path(), codec);
        c.output.kafka.client = client.into();
        let running = klais::runtime::start(&c).unwrap();
        let devs = devices(40);
        send(running.local_addr(), &devs, 0, 250, 20_000);
        let n = 40 * 250;
        wait_for("delivery", Duration::from_secs(60), || {
            running.kafka_snapshot().unwrap().delivered >= n
        });
        let s = running.stop().unwrap();
        let k = s.kafka.unwrap();
        assert_eq!(s.shards.accepted, n, "every datagram accepted on loopback");
        assert_eq!(
            (k.accepted, k.delivered, k.dropped_at_stop),
            (n, n, 0),
            "{k:?}"
        );
        let (l, r) = k.reconcile();
        assert_eq!(l, r, "{k:?}");
        let readers = [
            ("aiokafka", read_back_python(&broker.brokers(), &topic, n)),
            (
                "confluent-kafka",
                read_back_python_with("confluent", &broker.brokers(), &topic, n, None),
            ),
            ("librdkafka", read_back(&broker.brokers(), &topic, n)),
        ];
        for (reader, recs) in readers {
            assert_exactly_once(&recs, &format!("{client}, {codec}, {reader}"), 40, 250);
        }
    }

    /// The broker tier (`-- --ignored broker::`).
    mod broker {
        use super::*;

        #[test]
        #[ignore = "broker"]
        fn every_codec_is_read_back_exactly_by_aiokafka_confluent_kafka_and_librdkafka() {
            let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
            for codec in ["lz4", "zstd", "snappy", "gzip", "none"] {
                round_trip("native", codec);
            }
            // librdkafka's producer, built with zstd.
            for codec in ["zstd", "lz4"] {
                round_trip("librdkafka", codec);
            }
        }

        #[test]
        #[ignore = "broker"]
        fn a_hung_broker_times_out_and_on_resume_nothing_is_lost_or_duplicated() {
            let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
            let broker = Broker::start(None);
            broker.create_topic("t-native-hang", 3);
            let dir = tempfile::tempdir().unwrap();
            let mut c = native_cfg(&broker.brokers(), "t-native-hang", dir.path(), "lz4");
            c.output.kafka.request_timeout_ms = 1000;
            let running = klais::runtime::start(&c).unwrap();
            let to = running.local_addr();
            let devs = devices(100);
            let sender = {
                let devs = devs.clone();
                std::thread::spawn(move || send(to, &devs, 0, 300, 10_000))
            };
            wait_for("first deliveries", Duration::from_secs(30), || {
                running.kafka_snapshot().unwrap().delivered > 3_000
            });
            broker.pause(true);
            wait_for("a request timeout", Duration::from_secs(30), || {
                running.kafka_snapshot().unwrap().request_timeouts > 0
            });
            std::thread::sleep(Duration::from_millis(1000));
            let during = running.kafka_snapshot().unwrap();
            broker.pause(false);
            sender.join().unwrap();
            let n = 100 * 300;
            wait_for("accepted = delivered", Duration::from_secs(120), || {
                let k = running.kafka_snapshot().unwrap();
                k.accepted == n && k.delivered == n
            });
            let s = running.stop().unwrap();
            let k = s.kafka.unwrap();
            println!("while hung: {during:?}\nat the end: {k:?}");
            assert_eq!(s.shards.accepted, n);
            assert_eq!((k.delivered, k.dropped()), (n, 0), "{k:?}");
            assert_eq!(k.reconcile().0, k.reconcile().1, "{k:?}");
            exactly_once(&broker.brokers(), "t-native-hang", 100, 300);
        }

        /// Every record of `topic` read back once, in order, from `m`
        /// devices with `per` sequences each.
        fn exactly_once(brokers: &str, topic: &str, m: usize, per: u32) {
            let recs = read_back(brokers, topic, m as u64 * u64::from(per));
            assert_exactly_once(&recs, topic, m, per);
        }

        fn journal_files(dir: &Path) -> usize {
            std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "klj"))
                .count()
        }

        #[test]
        #[ignore = "broker"]
        fn an_outage_past_the_breaker_goes_through_the_journal_and_loses_nothing() {
            let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
            let relay_port = free_port();
            let broker = Broker::start(Some(relay_port));
            broker.create_topic("t-native-outage", 3);
            let relay = Relay::start_on(relay_port, broker.port);
            let dir = tempfile::tempdir().unwrap();
            let brokers = format!("127.0.0.1:{relay_port}");
            let running =
                klais::runtime::start(&native_cfg(&brokers, "t-native-outage", dir.path(), "lz4"))
                    .unwrap();
            let to = running.local_addr();
            let devs = devices(200);
            let sender = {
                let devs = devs.clone();
                std::thread::spawn(move || send(to, &devs, 0, 400, 10_000))
            };
            wait_for("first deliveries", Duration::from_secs(30), || {
                running.kafka_snapshot().unwrap().delivered > 5_000
            });
            relay.cut();
            wait_for("the breaker to open", Duration::from_secs(30), || {
                running.kafka_snapshot().unwrap().breaker_opens > 0
            });
            std::thread::sleep(Duration::from_secs(2));
            let during = running.kafka_snapshot().unwrap();
            relay.restore();
            sender.join().unwrap();
            let n = 200 * 400;
            wait_for("accepted = delivered", Duration::from_secs(120), || {
                let k = running.kafka_snapshot().unwrap();
                k.accepted == n && k.delivered == n && k.journaled == 0
            });
            let s = running.stop().unwrap();
            let k = s.kafka.unwrap();
            println!("during the outage: {during:?}\nat the end: {k:?}");
            assert!(
                during.journal.appended > 0,
                "batches went to the journal: {during:?}"
            );
            assert_eq!(s.shards.accepted, n);
            assert_eq!((k.delivered, k.journaled, k.dropped()), (n, 0, 0), "{k:?}");
            assert_eq!(k.reconcile().0, k.reconcile().1, "{k:?}");
            assert_eq!(journal_files(dir.path()), 0, "journal empty afterwards");
            exactly_once(&brokers, "t-native-outage", 200, 400);
        }

        #[test]
        #[ignore = "broker"]
        fn a_stop_with_the_broker_gone_journals_and_the_next_start_without_it_too_then_delivers_all(
        ) {
            let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
            let relay_port = free_port();
            let broker = Broker::start(Some(relay_port));
            broker.create_topic("t-native-stop", 3);
            let relay = Relay::start_on(relay_port, broker.port);
            let dir = tempfile::tempdir().unwrap();
            let brokers = format!("127.0.0.1:{relay_port}");
            let mut c = native_cfg(&brokers, "t-native-stop", dir.path(), "zstd");
            c.output.kafka.shutdown_flush_ms = 1000;
            let running = klais::runtime::start(&c).unwrap();
            let devs = devices(50);
            send(running.local_addr(), &devs, 0, 100, 20_000);
            wait_for("the first 5,000 delivered", Duration::from_secs(30), || {
                running.kafka_snapshot().unwrap().delivered >= 5_000
            });
            relay.cut();
            send(running.local_addr(), &devs, 100, 100, 20_000);
            wait_for("all accepted", Duration::from_secs(30), || {
                running.kafka_snapshot().unwrap().accepted >= 10_000
            });
            let s = running.stop().unwrap();
            let k = s.kafka.unwrap();
            println!("at the stop: {k:?}");
            assert_eq!(s.shards.accepted, 10_000);
            assert_eq!(
                (k.delivered, k.journaled, k.dropped()),
                (5_000, 5_000, 0),
                "{k:?}"
            );
            assert_eq!(k.reconcile().0, k.reconcile().1, "{k:?}");
            assert!(journal_files(dir.path()) > 0);
            // The next start with the broker still away: klais starts on the
            // partition count it saved, takes traffic into the journal, and
            // once the broker is back delivers the journal first.
            let running = klais::runtime::start(&c).unwrap();
            send(running.local_addr(), &devs, 200, 50, 20_000);
            wait_for("the new traffic journaled", Duration::from_secs(30), || {
                let k = running.kafka_snapshot().unwrap();
                k.accepted >= 2_500 && k.journaled >= 7_500
            });
            relay.restore();
            wait_for("the journal delivered", Duration::from_secs(60), || {
                let k = running.kafka_snapshot().unwrap();
                k.delivered >= 7_500 && k.journaled == 0
            });
            let s = running.stop().unwrap();
            let k = s.kafka.unwrap();
            println!("after the restart: {k:?}");
            assert_eq!(
                (k.recovered, k.accepted, k.delivered, k.dropped()),
                (5_000, 2_500, 7_500, 0),
                "{k:?}"
            );
            assert_eq!(k.reconcile().0, k.reconcile().1, "{k:?}");
            assert_eq!(journal_files(dir.path()), 0, "journal empty afterwards");
            let recs = read_back(&brokers, "t-native-stop", 12_500);
            assert_exactly_once(&recs, "t-native-stop", 50, 250);
        }

        #[test]
        #[ignore = "broker"]
        fn a_first_start_ever_without_a_broker_journals_unpartitioned_and_splits_when_it_comes() {
            let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
            let relay_port = free_port();
            let broker = Broker::start(Some(relay_port));
            broker.create_topic("t-native-first", 3);
            let dir = tempfile::tempdir().unwrap();
            let brokers = format!("127.0.0.1:{relay_port}");
            // Nothing listens on the relay's port yet: no broker, and no
            // partition count saved in the (new) journal directory.
            let c = native_cfg(&brokers, "t-native-first", dir.path(), "snappy");
            let running = klais::runtime::start(&c).unwrap();
            let devs = devices(40);
            send(running.local_addr(), &devs, 0, 100, 20_000);
            wait_for("the first 4,000 journaled", Duration::from_secs(30), || {
                let k = running.kafka_snapshot().unwrap();
                k.accepted >= 4_000 && k.journaled >= 4_000
            });
            let during = running.kafka_snapshot().unwrap();
            let relay = Relay::start_on(relay_port, broker.port);
            wait_for(
                "the journal split and delivered",
                Duration::from_secs(60),
                || {
                    let k = running.kafka_snapshot().unwrap();
                    k.delivered >= 4_000 && k.journaled == 0
                },
            );
            // Now the shards know the count: the next records go straight.
            send(running.local_addr(), &devs, 100, 100, 20_000);
            wait_for("all delivered", Duration::from_secs(60), || {
                running.kafka_snapshot().unwrap().delivered >= 8_000
            });
            let s = running.stop().unwrap();
            let k = s.kafka.unwrap();
            println!("while no broker: {during:?}\nat the end: {k:?}");
            assert_eq!(during.delivered, 0, "{during:?}");
            assert_eq!(s.shards.accepted, 8_000);
            assert_eq!(
                (k.accepted, k.delivered, k.journaled, k.dropped()),
                (8_000, 8_000, 0, 0),
                "{k:?}"
            );
            assert_eq!(k.reconcile().0, k.reconcile().1, "{k:?}");
            assert_eq!(journal_files(dir.path()), 0, "journal empty afterwards");
            assert!(
                dir.path().join("partitions").exists(),
                "the count is saved for the next start"
            );
            for client in ["aiokafka", "confluent"] {
                let recs = read_back_python_with(client, &brokers, "t-native-first", 8_000, None);
                // Every record in its murmur2 partition, each device in order.
                assert_exactly_once(&recs, client, 40, 200);
            }
            drop(relay);
        }

        #[test]
        #[ignore = "broker"]
        fn sigterm_with_the_broker_down_journals_everything_and_the_next_start_delivers_it() {
            sigterm_without_a_broker_then_deliver("native");
        }

        #[test]
        #[ignore = "broker"]
        fn a_cut_connection_loses_nothing_duplicates_nothing_and_keeps_order() {
            let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
            let relay_port = free_port();
            let broker = Broker::start(Some(relay_port));
            broker.create_topic("t-native-cut", 3);
            let relay = Relay::start_on(relay_port, broker.port);
            let dir = tempfile::tempdir().unwrap();
            let brokers = format!("127.0.0.1:{relay_port}");
            let running =
                klais::runtime::start(&native_cfg(&brokers, "t-native-cut", dir.path(), "lz4"))
                    .unwrap();
            let to = running.local_addr();
            let devs = devices(100);
            let sender = {
                let devs = devs.clone();
                std::thread::spawn(move || send(to, &devs, 0, 300, 10_000))
            };
            wait_for("first deliveries", Duration::from_secs(30), || {
                running.kafka_snapshot().unwrap().delivered > 3_000
            });
            relay.cut();
            std::thread::sleep(Duration::from_millis(1500));
            let during = running.kafka_snapshot().unwrap();
            relay.restore();
            sender.join().unwrap();
            let n = 100 * 300;
            wait_for("accepted = delivered", Duration::from_secs(120), || {
                let k = running.kafka_snapshot().unwrap();
                k.accepted == n && k.delivered == n
            });
            let s = running.stop().unwrap();
            let k = s.kafka.unwrap();
            println!("during the cut: {during:?}\nat the end: {k:?}");
            assert_eq!(s.shards.accepted, n);
            assert_eq!(
                (k.delivered, k.dropped_at_stop, k.dropped_rejected),
                (n, 0, 0)
            );
            assert_eq!(k.reconcile().0, k.reconcile().1, "{k:?}");
            let recs = read_back(&brokers, "t-native-cut", n);
            let per = check_records(&recs, 3);
            assert_eq!(per.len(), 100);
            let mut dups = 0;
            for (id, seqs) in &per {
                let mut seen = seqs.clone();
                seen.dedup();
                dups += seqs.len() - seen.len();
                assert!(
                    seen.windows(2).all(|w| w[0] < w[1]),
                    "{id}: per-device order kept"
                );
                assert_eq!(seen, (0..300).collect::<Vec<u32>>(), "{id}: nothing lost");
            }
            assert_eq!(dups, 0, "no duplicates (idempotent producer)");
        }
    }

    /// TLS and SASL on both clients (the native one's rustls and rsasl,
    /// librdkafka's OpenSSL and SASL), against tansu behind stunnel4
    /// (tests/common/secured.rs), read back by aiokafka and confluent-kafka
    /// through the same listener.
    mod secured {
        use super::*;
        use common::secured::{Secured, USER};
        use std::sync::atomic::Ordering;

        const CLIENTS: [&str; 2] = ["native", "librdkafka"];

        fn secure_cfg(
            brokers: &str,
            topic: &str,
            journal: &Path,
            sec: klais::config::Security,
            client: &str,
        ) -> Config {
            let mut c = native_cfg(brokers, topic, journal, "lz4");
            c.output.kafka.client = client.into();
            c.output.kafka.security = sec;
            c
        }

        /// The error a start that must fail gives.
        fn start_err(c: &Config, why: &str) -> String {
            match klais::runtime::start(c) {
                Ok(_) => panic!("{why} ({})", c.output.kafka.client),
                Err(e) => e.to_string(),
            }
        }

        /// `m` devices × `per` messages through klais; stops; checks the
        /// accounting; returns the count.
        fn deliver(c: &Config, m: usize, per: u32) -> u64 {
            let running = klais::runtime::start(c).unwrap();
            send(running.local_addr(), &devices(m), 0, per, 20_000);
            let n = m as u64 * u64::from(per);
            wait_for("delivery", Duration::from_secs(60), || {
                running.kafka_snapshot().unwrap().delivered >= n
            });
            let s = running.stop().unwrap();
            let k = s.kafka.unwrap();
            assert_eq!(s.shards.accepted, n);
            assert_eq!(
                (k.delivered, k.dropped(), k.auth_failures),
                (n, 0, 0),
                "{}: {k:?}",
                c.output.kafka.client
            );
            assert_eq!(k.reconcile().0, k.reconcile().1, "{k:?}");
            n
        }

        /// Exactly `m` × `per` records, in order per device, read by aiokafka
        /// with `security`.
        fn python_exactly_once(
            brokers: &str,
            topic: &str,
            m: usize,
            per: u32,
            security: &serde_json::Value,
        ) {
            let n = m as u64 * u64::from(per);
            for client in ["aiokafka", "confluent"] {
                let recs = read_back_python_with(client, brokers, topic, n, Some(security));
                assert_exactly_once(&recs, &format!("{topic}, {client}"), m, per);
            }
        }

        /// How Python's clients log in through the secured listener with
        /// `mech` as [`USER`].
        fn py_sasl(sb: &Secured, mech: &str) -> serde_json::Value {
            serde_json::json!({
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": mech,
                "sasl_plain_username": USER.0,
                "sasl_plain_password": USER.1,
                "cafile": sb.file("ca.pem"),
            })
        }

        /// klais (`client`) over SASL_SSL (SCRAM-SHA-512) through a relay
        /// the test can cut, 100 devices × 300 messages being sent at
        /// 10,000/s, past its first 3,000 deliveries.
        struct UnderLoad {
            sb: Secured,
            topic: String,
            running: klais::runtime::Running,
            sender: std::thread::JoinHandle<()>,
            _journal: tempfile::TempDir,
        }

        const UNDER_LOAD: u64 = 100 * 300;

        fn under_load(client: &str, topic: &str) -> UnderLoad {
            let sb = Secured::start_opts(true, false, true);
            sb.broker.create_topic(topic, 3);
            let dir = tempfile::tempdir().unwrap();
            let sec = klais::config::Security {
                protocol: "sasl_ssl".into(),
                ca_file: Some(sb.file("ca.pem")),
                sasl_username: USER.0.into(),
                sasl_password_file: Some(sb.write("password", USER.1)),
                ..Default::default()
            };
            let running =
                klais::runtime::start(&secure_cfg(&sb.brokers(), topic, dir.path(), sec, client))
                    .unwrap();
            let to = running.local_addr();
            let devs = devices(100);
            let sender = std::thread::spawn(move || send(to, &devs, 0, 300, 10_000));
            wait_for("first deliveries", Duration::from_secs(30), || {
                running.kafka_snapshot().unwrap().delivered > 3_000
            });
            UnderLoad {
                sb,
                topic: topic.to_string(),
                running,
                sender,
                _journal: dir,
            }
        }

        impl UnderLoad {
            /// The sender done, everything delivered and nothing journaled,
            /// klais stopped, its accounting exact and the topic read back
            /// exactly once by Python; the final snapshot.
            fn finish(self) -> klais::kafka::KafkaSnapshot {
                self.sender.join().unwrap();
                let n = UNDER_LOAD;
                wait_for("accepted = delivered", Duration::from_secs(120), || {
                    let k = self.running.kafka_snapshot().unwrap();
                    k.accepted == n && k.delivered == n && k.journaled == 0
                });
                let s = self.running.stop().unwrap();
                let k = s.kafka.unwrap();
                println!("{k:?}");
                assert_eq!(s.shards.accepted, n);
                assert_eq!((k.delivered, k.dropped()), (n, 0), "{k:?}");
                assert_eq!(k.reconcile().0, k.reconcile().1, "{k:?}");
                let py = py_sasl(&self.sb, "SCRAM-SHA-512");
                python_exactly_once(&self.sb.brokers(), &self.topic, 100, 300, &py);
                k
            }
        }

        mod broker {
            use super::*;

            #[test]
            #[ignore = "broker"]
            fn sasl_inside_tls_with_each_mechanism_delivers_exactly_once() {
                let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
                let sb = Secured::start(true, false);
                let pw = sb.write("password", &format!("{}\n", USER.1));
                for (client, mech) in CLIENTS
                    .iter()
                    .flat_map(|c| ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"].map(move |m| (*c, m)))
                {
                    let topic = format!("t-sasl-{client}-{}", mech.to_lowercase());
                    sb.broker.create_topic(&topic, 3);
                    let dir = tempfile::tempdir().unwrap();
                    let sec = klais::config::Security {
                        protocol: "sasl_ssl".into(),
                        ca_file: Some(sb.file("ca.pem")),
                        sasl_mechanism: mech.into(),
                        sasl_username: USER.0.into(),
                        sasl_password_file: Some(pw.clone()),
                        ..Default::default()
                    };
                    let c = secure_cfg(&sb.brokers(), &topic, dir.path(), sec, client);
                    deliver(&c, 30, 100);
                    python_exactly_once(&sb.brokers(), &topic, 30, 100, &py_sasl(&sb, mech));
                }
                let refused = sb.gate.as_ref().unwrap().refused.load(Ordering::Relaxed);
                assert_eq!(refused, 0, "no exchange refused");
            }

            #[test]
            #[ignore = "broker"]
            fn a_cut_sasl_tls_connection_reconnects_and_loses_nothing() {
                let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
                for client in CLIENTS {
                    let u = under_load(client, &format!("t-sasl-cut-{client}"));
                    let relay = u.sb.relay.as_ref().unwrap();
                    relay.cut();
                    std::thread::sleep(Duration::from_millis(1500));
                    relay.restore();
                    let k = u.finish();
                    assert_eq!(k.auth_failures, 0, "{client}: {k:?}");
                }
            }

            #[test]
            #[ignore = "broker"]
            fn oauthbearer_through_an_oidc_endpoint_delivers_and_a_wrong_secret_fails_at_start() {
                let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
                let sb = Secured::start(true, false);
                sb.broker.create_topic("t-oauth", 3);
                let idp = common::oidc::TokenEndpoint::start("klais-client", "idp-s3cret");
                let base = klais::config::Security {
                    protocol: "sasl_ssl".into(),
                    ca_file: Some(sb.file("ca.pem")),
                    sasl_mechanism: "OAUTHBEARER".into(),
                    oauth_token_endpoint: Some(idp.url.clone()),
                    oauth_client_id: "klais-client".into(),
                    oauth_client_secret_file: Some(sb.write("wrong-secret", "nope\n")),
                    oauth_scope: Some("kafka".into()),
                    ..Default::default()
                };
                // The native client does not speak it: refused at load.
                let c = secure_cfg(
                    &sb.brokers(),
                    "t-oauth",
                    Path::new("/nonexistent"),
                    base.clone(),
                    "native",
                );
                let e = c.validate().unwrap_err();
                assert!(
                    e.iter().any(|e| e
                        .to_string()
                        .contains("output.kafka.security.sasl_mechanism")),
                    "{e:?}"
                );
                // A secret the identity provider refuses.
                let dir = tempfile::tempdir().unwrap();
                let e = start_err(
                    &secure_cfg(
                        &sb.brokers(),
                        "t-oauth",
                        dir.path(),
                        base.clone(),
                        "librdkafka",
                    ),
                    "a wrong client secret cannot start",
                );
                println!("wrong client secret: {e}");
                assert!(
                    e.contains("output.kafka.security") && e.contains("OAUTHBEARER"),
                    "{e}"
                );
                assert!(
                    idp.refused.load(Ordering::Relaxed) > 0,
                    "the endpoint was asked"
                );
                // The right one: delivered, read back through the same
                // settings by klais's consumer (librdkafka, its own token).
                let sec = klais::config::Security {
                    oauth_client_secret_file: Some(sb.write("secret", "idp-s3cret\n")),
                    ..base
                };
                let dir = tempfile::tempdir().unwrap();
                deliver(
                    &secure_cfg(
                        &sb.brokers(),
                        "t-oauth",
                        dir.path(),
                        sec.clone(),
                        "librdkafka",
                    ),
                    30,
                    100,
                );
                assert!(idp.issued.load(Ordering::Relaxed) > 0, "a token was issued");
                let mut recs = Vec::new();
                klais::kafka::consume::for_each_with(
                    &sb.brokers(),
                    &sec,
                    "t-oauth",
                    Some(3000),
                    Duration::from_secs(10),
                    |m| recs.push(m),
                )
                .unwrap();
                assert_exactly_once(&recs, "t-oauth, klais kafka consume", 30, 100);
            }

            #[test]
            #[ignore = "broker"]
            fn credentials_refused_later_open_the_breaker_journal_and_deliver_once_accepted() {
                let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
                for client in CLIENTS {
                    let u = under_load(client, &format!("t-revoked-{client}"));
                    // The cluster stops accepting klais's password; the
                    // connection drops and every reconnect is refused.
                    let gate = u.sb.gate.as_ref().unwrap();
                    gate.revoked.store(true, Ordering::Relaxed);
                    let relay = u.sb.relay.as_ref().unwrap();
                    relay.cut();
                    std::thread::sleep(Duration::from_millis(300));
                    relay.restore();
                    wait_for(
                        "refusals counted, the breaker open, records journaled",
                        Duration::from_secs(60),
                        || {
                            let k = u.running.kafka_snapshot().unwrap();
                            k.auth_failures > 0 && k.breaker_opens > 0 && k.journaled > 0
                        },
                    );
                    println!(
                        "{client}, refused: {:?}",
                        u.running.kafka_snapshot().unwrap()
                    );
                    gate.revoked.store(false, Ordering::Relaxed);
                    let refused = gate.refused.clone();
                    let k = u.finish();
                    assert!(
                        k.auth_failures > 0 && k.breaker_opens > 0,
                        "{client}: {k:?}"
                    );
                    assert!(refused.load(Ordering::Relaxed) > 0);
                }
            }

            #[test]
            #[ignore = "broker"]
            fn a_wrong_password_an_untrusted_or_expired_broker_certificate_fail_loudly_at_start() {
                let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
                let sb = Secured::start(true, false);
                sb.broker.create_topic("t-refused", 3);
                let base = klais::config::Security {
                    protocol: "sasl_ssl".into(),
                    ca_file: Some(sb.file("ca.pem")),
                    sasl_username: USER.0.into(),
                    sasl_password_file: Some(sb.write("wrong", "wrong\n")),
                    ..Default::default()
                };
                for client in CLIENTS {
                    for mech in ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] {
                        let sec = klais::config::Security {
                            sasl_mechanism: mech.into(),
                            ..base.clone()
                        };
                        let dir = tempfile::tempdir().unwrap();
                        let e = start_err(
                            &secure_cfg(&sb.brokers(), "t-refused", dir.path(), sec, client),
                            "a wrong password cannot start",
                        );
                        println!("{client}, {mech}, wrong password: {e}");
                        assert!(
                            e.contains("SASL")
                                && e.contains("refused")
                                && e.contains("\"klais\"")
                                && e.contains("output.kafka.security"),
                            "{client}, {mech}: {e}"
                        );
                    }
                    // A broker whose certificate does not chain to the CA given.
                    let sec = klais::config::Security {
                        ca_file: Some(sb.file("other-ca.pem")),
                        ..base.clone()
                    };
                    let dir = tempfile::tempdir().unwrap();
                    let e = start_err(
                        &secure_cfg(&sb.brokers(), "t-refused", dir.path(), sec, client),
                        "an untrusted broker cannot start",
                    );
                    println!("{client}, untrusted broker: {e}");
                    assert!(
                        e.contains("TLS")
                            && e.contains("certificate")
                            && e.contains("output.kafka.security"),
                        "{client}: {e}"
                    );
                }
                let refused = sb.gate.as_ref().unwrap().refused.load(Ordering::Relaxed);
                assert!(refused >= 6, "the broker refused every wrong password");
                // A broker whose certificate expired yesterday.
                let sb = Secured::start_expired();
                sb.broker.create_topic("t-expired", 3);
                for client in CLIENTS {
                    let sec = klais::config::Security {
                        ca_file: Some(sb.file("ca.pem")),
                        sasl_password_file: Some(sb.write("password", USER.1)),
                        ..base.clone()
                    };
                    let dir = tempfile::tempdir().unwrap();
                    let e = start_err(
                        &secure_cfg(&sb.brokers(), "t-expired", dir.path(), sec, client),
                        "an expired broker certificate cannot start",
                    );
                    println!("{client}, expired broker certificate: {e}");
                    assert!(
                        e.contains("expired") && e.contains("output.kafka.security"),
                        "{client}: {e}"
                    );
                }
            }

            #[test]
            #[ignore = "broker"]
            fn tls_with_a_client_certificate_delivers_and_without_one_is_refused() {
                let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
                let sb = Secured::start(false, true);
                for client in CLIENTS {
                    let topic = format!("t-mtls-{client}");
                    sb.broker.create_topic(&topic, 3);
                    let dir = tempfile::tempdir().unwrap();
                    let without = klais::config::Security {
                        protocol: "ssl".into(),
                        ca_file: Some(sb.file("ca.pem")),
                        ..Default::default()
                    };
                    let e = start_err(
                        &secure_cfg(&sb.brokers(), &topic, dir.path(), without.clone(), client),
                        "no client certificate, no start",
                    );
                    println!("{client}, no client certificate: {e}");
                    assert!(e.contains("refused"), "{client}: {e}");
                    let with = klais::config::Security {
                        cert_file: Some(sb.file("client.pem")),
                        key_file: Some(sb.file("client.key")),
                        ..without
                    };
                    let dir = tempfile::tempdir().unwrap();
                    deliver(
                        &secure_cfg(&sb.brokers(), &topic, dir.path(), with.clone(), client),
                        30,
                        100,
                    );
                    let py = serde_json::json!({
                        "security_protocol": "SSL",
                        "cafile": sb.file("ca.pem"),
                        "certfile": sb.file("client.pem"),
                        "keyfile": sb.file("client.key"),
                    });
                    python_exactly_once(&sb.brokers(), &topic, 30, 100, &py);
                    // klais's own reader (`klais kafka consume`), through TLS too.
                    let mut recs = Vec::new();
                    klais::kafka::consume::for_each_with(
                        &sb.brokers(),
                        &with,
                        &topic,
                        Some(3000),
                        Duration::from_secs(10),
                        |m| recs.push(m),
                    )
                    .unwrap();
                    assert_exactly_once(&recs, &format!("{topic}, klais kafka consume"), 30, 100);
                }
            }
        }
    }
}
