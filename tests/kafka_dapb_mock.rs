//! Fault injection with librdkafka's in-process mock cluster: the real batcher
//! (DAPB, producer, journal) fed through a real shard ring, against a broker
//! whose round trip and errors the test sets. The DAPB parameters must move the
//! way the paper says: a longer T(t) and a larger B(t) under higher RTT and
//! under errors; urgent messages are sent at once, also while T(t) is long.

use std::time::{Duration, Instant};

use klais::config::Kafka;
use klais::handoff::{record_ring, RecordMeta, RecordRx, RecordTx};
use klais::kafka::{dapb::Params, Batcher, KafkaSnapshot};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

fn meta(id: &str, seq: u32) -> RecordMeta {
    let mut raw_id = [0u8; 16];
    raw_id[..id.len()].copy_from_slice(id.as_bytes());
    RecordMeta {
        raw_id,
        sequence: seq,
        recv_ts_ns: 1_700_000_000_000_000_000 + u64::from(seq),
        shard: 0,
        seq_event: 1,
        flags: 0,
    }
}

struct Rig {
    b: Batcher,
    tx: RecordTx,
    rx: Vec<RecordRx>,
    seq: u32,
}

impl Rig {
    fn push(&mut self, id: &str) {
        self.tx
            .push(&meta(id, self.seq), b"{\"v\":1}")
            .expect("ring has room");
        self.seq += 1;
    }

    /// Sends `n` messages from a few devices over about `secs`, then steps
    /// until every one is delivered; returns the snapshot.
    fn load(&mut self, n: u32, secs: f64) -> KafkaSnapshot {
        let start = Instant::now();
        for i in 0..n {
            self.push(&format!("dev-{}", i % 16));
            let due = Duration::from_secs_f64(secs * f64::from(i) / f64::from(n));
            while start.elapsed() < due {
                self.b.step(&mut self.rx);
            }
        }
        self.settle()
    }

    fn settle(&mut self) -> KafkaSnapshot {
        let t = Instant::now();
        loop {
            self.b.step(&mut self.rx);
            let s = self.b.snapshot();
            if s.delivered == s.accepted {
                // Two more statistics windows so ρ(t) sees this load.
                let w = Instant::now();
                while w.elapsed() < Duration::from_millis(600) {
                    self.b.step(&mut self.rx);
                }
                return self.b.snapshot();
            }
            assert!(t.elapsed() < Duration::from_secs(60), "no delivery: {s:?}");
        }
    }
}

fn rig(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    dir: &std::path::Path,
    t_floor_us: u64,
) -> Rig {
    cluster.create_topic("dapb", 3, 1).unwrap();
    let mut cfg = Kafka {
        brokers: cluster.bootstrap_servers(),
        topic: "dapb".into(),
        urgent_devices: vec!["urgent-1".into()],
        ..Kafka::default()
    };
    cfg.journal.dir = dir.to_path_buf();
    cfg.journal.segment_bytes = 1 << 20;
    cfg.dapb.t_min_us = t_floor_us;
    cfg.dapb.t_base_us = t_floor_us;
    cfg.dapb.t_max_us = t_floor_us.max(2_000_000);
    let (tx, rx) = record_ring(1 << 22, 1024).unwrap();
    Rig {
        b: Batcher::new(&cfg).unwrap(),
        tx,
        rx: vec![rx],
        seq: 0,
    }
}

fn params(s: &KafkaSnapshot) -> Params {
    s.params.expect("params")
}

#[test]
fn higher_rtt_and_errors_lengthen_t_and_grow_b() {
    let cluster = MockCluster::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut r = rig(&cluster, dir.path(), 1000);
    let calm = r.load(3000, 1.5);
    cluster
        .broker_round_trip_time(1, Duration::from_millis(80))
        .unwrap();
    let slow = r.load(3000, 1.5);
    println!(
        "calm {:?} {:?}\nslow {:?} {:?}",
        calm.conditions,
        params(&calm),
        slow.conditions,
        params(&slow)
    );
    assert!(slow.conditions.rtt_us > calm.conditions.rtt_us + 40_000.0);
    assert!(
        params(&slow).t_us > params(&calm).t_us,
        "T(t) grows with RTT"
    );
    assert!(
        params(&slow).b_adaptive > params(&calm).b_adaptive,
        "B(t) grows with RTT"
    );
    // Errors: produce requests fail and are retried by librdkafka.
    cluster
        .broker_round_trip_time(1, Duration::from_millis(1))
        .unwrap();
    let before = r.load(2000, 1.0);
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 30],
    );
    let errs = r.load(2000, 1.0);
    println!(
        "before errors {:?} {:?}\nwith errors {:?} {:?}",
        before.conditions,
        params(&before),
        errs.conditions,
        params(&errs)
    );
    assert!(errs.conditions.error_pct > 0.0, "retries counted: {errs:?}");
    assert!(
        params(&errs).t_us > params(&before).t_us,
        "T(t) grows with the error rate"
    );
    // Nothing lost on the way, every delivery by report.
    assert_eq!(errs.accepted, errs.delivered);
    assert_eq!(errs.reconcile().0, errs.reconcile().1);
}

#[test]
fn urgent_messages_are_sent_at_once_while_t_is_long() {
    let cluster = MockCluster::new(1).unwrap();
    cluster
        .broker_round_trip_time(1, Duration::from_millis(50))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // T(t) at least 30 s: nothing leaves by timeout during this test.
    let mut r = rig(&cluster, dir.path(), 30_000_000);
    r.push("dev-a");
    r.push("dev-b");
    r.b.step(&mut r.rx);
    let s = r.b.snapshot();
    assert_eq!(s.buffered, 2, "normal messages wait for B(t) or T(t)");
    assert_eq!(s.dapb.batches, 0);
    r.push("urgent-1");
    r.b.step(&mut r.rx);
    let s = r.b.snapshot();
    assert_eq!(s.buffered, 0, "the urgent message sent its buffer at once");
    assert_eq!(s.dapb.by_reason[0], 1, "released for urgency (eq. 6)");
    assert_eq!(
        s.dapb.messages, 3,
        "the waiting messages went with it, in order"
    );
    let t = Instant::now();
    while r.b.snapshot().delivered < 3 {
        r.b.step(&mut r.rx);
        assert!(t.elapsed() < Duration::from_secs(30));
    }
    let s = r.b.snapshot();
    assert_eq!(s.latency_urgent_us[4], 1, "one urgent delivery measured");
}

#[test]
fn the_breaker_spills_while_the_broker_is_down_and_replays_in_order_after() {
    let cluster = MockCluster::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut r = rig(&cluster, dir.path(), 1000);
    let first = r.load(500, 0.2);
    assert_eq!(first.delivered, 500);
    cluster.broker_down(1).unwrap();
    // Load while the broker is down: librdkafka reports all brokers down and
    // the breaker sends what follows to the journal.
    let t = Instant::now();
    let mut pushed = 0;
    while r.b.snapshot().breaker_opens == 0 || pushed < 2000 {
        if pushed < 20_000 {
            r.push(&format!("dev-{}", pushed % 16));
            pushed += 1;
        }
        r.b.step(&mut r.rx);
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{:?}",
            r.b.snapshot()
        );
    }
    let down = r.b.snapshot();
    assert!(down.journal.appended > 0, "{down:?}");
    assert_eq!(down.reconcile().0, down.reconcile().1, "{down:?}");
    cluster.broker_up(1).unwrap();
    let t = Instant::now();
    loop {
        r.b.step(&mut r.rx);
        let s = r.b.snapshot();
        if s.delivered == s.accepted && s.journaled == 0 {
            assert_eq!(s.breaker, klais::kafka::Breaker::Closed);
            assert!(s.replayed > 0);
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "{s:?}");
    }
    let end = r.b.shutdown().unwrap();
    assert_eq!(end.accepted, 500 + pushed as u64);
    assert_eq!(end.delivered, end.accepted, "nothing lost: {end:?}");
    // Read back from the mock broker: every record once, each device in order.
    let mut last: std::collections::HashMap<Vec<u8>, u32> = Default::default();
    let mut n = 0u64;
    klais::kafka::consume::for_each(
        &cluster.bootstrap_servers(),
        "dapb",
        None,
        Duration::from_secs(3),
        |m| {
            n += 1;
            let seq: u32 = m.header("sequence").unwrap().parse().unwrap();
            if let Some(prev) = last.insert(m.key.clone(), seq) {
                assert!(prev < seq, "{:?}: {prev} then {seq}", m.key);
            }
        },
    )
    .unwrap();
    assert_eq!(n, end.accepted, "exactly once");
}

#[test]
fn a_journaled_record_the_broker_refuses_for_good_is_dropped_and_counted_not_retried_forever() {
    let cluster = MockCluster::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut r = rig(&cluster, dir.path(), 1000);
    r.load(100, 0.1);
    cluster.broker_down(1).unwrap();
    let t = Instant::now();
    let mut pushed = 0u64;
    while r.b.snapshot().journal.appended < 500 {
        r.push(&format!("dev-{}", pushed % 16));
        pushed += 1;
        r.b.step(&mut r.rx);
        assert!(t.elapsed() < Duration::from_secs(60));
    }
    // The first produce requests after the broker returns — the direct ones
    // librdkafka held, then replayed ones — are refused for good.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP; 40],
    );
    cluster.broker_up(1).unwrap();
    let t = Instant::now();
    loop {
        r.b.step(&mut r.rx);
        let s = r.b.snapshot();
        if s.journaled == 0
            && s.in_flight == 0
            && s.buffered == 0
            && s.breaker == klais::kafka::Breaker::Closed
        {
            assert!(s.dropped_rejected > 0, "{s:?}");
            assert!(
                s.replay_failures > 0,
                "replayed records were refused: {s:?}"
            );
            assert_eq!(s.delivered + s.dropped_rejected, s.accepted, "{s:?}");
            assert_eq!(s.reconcile().0, s.reconcile().1, "{s:?}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "stuck: {s:?}");
    }
}

/// A record the in-kernel classifier marked (flags from the AF_XDP metadata)
/// carries its class in the `model` header; an unmarked one has no such
/// header.
#[test]
fn a_classifier_mark_becomes_the_model_header() {
    let cluster = MockCluster::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut r = rig(&cluster, dir.path(), 1000);
    let mut marked = meta("dev-marked", 1);
    marked.flags = klais::handoff::FLAG_MODEL_MARK | (3 << 4); // replay
    r.tx.push(&marked, b"{\"v\":1}").unwrap();
    r.tx.push(&meta("dev-plain", 1), b"{\"v\":2}").unwrap();
    let s = r.settle();
    assert_eq!(s.delivered, 2);
    r.b.shutdown().unwrap();
    let mut seen = std::collections::HashMap::new();
    klais::kafka::consume::for_each(
        &cluster.bootstrap_servers(),
        "dapb",
        None,
        Duration::from_secs(3),
        |m| {
            seen.insert(
                String::from_utf8(m.key.clone()).unwrap(),
                m.header("model").map(str::to_string),
            );
        },
    )
    .unwrap();
    assert_eq!(seen.get("dev-marked"), Some(&Some("replay".to_string())));
    assert_eq!(seen.get("dev-plain"), Some(&None));
}
