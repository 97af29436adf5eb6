//! The native Kafka client against librdkafka's in-process mock cluster (a
//! Kafka protocol implementation klais did not write), with faults the test
//! injects: retriable produce errors, a permanent one, the broker down. A
//! shard's batch producer on this thread encodes; the output core's
//! `NativeProducer` sends; librdkafka's consumer reads the topic back.
//! Plain tier: no external broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use klais::config::Kafka;
use klais::dapb::{Class, Conditions, KnobFeed, Params, ShardKnobs};
use klais::handoff::{batch_ring, RecordMeta};
use klais::kafka::consume::for_each;
use klais::kafka::native::NativeProducer;
use klais::kafka::KafkaSnapshot;
use klais::shard::produce::{BatchProducer, ProduceSettings};
use klais::wire::kafka::Compression;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const DEVICES: u32 = 16;

struct Rig {
    out: NativeProducer,
    shard: BatchProducer,
    brokers: String,
    sent: u32,
}

fn rig(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    dir: &std::path::Path,
    max_in_flight: u32,
) -> Rig {
    rig_with(cluster, dir, max_in_flight, |_| {})
}

/// `rig` with the configuration changed by `set`.
fn rig_with(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    dir: &std::path::Path,
    max_in_flight: u32,
    set: impl FnOnce(&mut Kafka),
) -> Rig {
    cluster.create_topic("native", 3, 1).unwrap();
    let mut cfg = Kafka {
        brokers: cluster.bootstrap_servers(),
        topic: "native".into(),
        client: "native".into(),
        request_timeout_ms: 2000,
        max_in_flight,
        ..Kafka::default()
    };
    set(&mut cfg);
    cfg.journal.dir = dir.to_path_buf();
    cfg.journal.segment_bytes = 1 << 20;
    let feed = Arc::new(KnobFeed::new(ShardKnobs {
        params: Params::compute(&cfg.dapb, &Conditions::default()),
        partitions: 0,
    }));
    let (tx, rx) = batch_ring(64, 64 << 10);
    let mut out = NativeProducer::new(&cfg, vec![rx], feed.clone()).unwrap();
    out.start(Duration::from_secs(10)).unwrap();
    let shard = BatchProducer::new(
        tx,
        feed,
        ProduceSettings {
            gateway: b"gw-mock".to_vec(),
            compression: Compression::Lz4,
            zstd_level: 3,
            default_class: Class::Adaptive,
            urgent_devices: Vec::new(),
            latency_devices: Vec::new(),
        },
    )
    .unwrap();
    Rig {
        out,
        shard,
        brokers: cfg.brokers,
        sent: 0,
    }
}

impl Rig {
    /// Encodes `n` more records (device `i % 16`, sequence `i / 16`),
    /// stepping the output core between them; a shard without a free buffer
    /// waits for the output core (as its overflow queue would).
    fn push(&mut self, n: u32) {
        for _ in 0..n {
            let i = self.sent;
            let mut raw_id = [0u8; 16];
            let id = format!("dev-{}", i % DEVICES);
            raw_id[..id.len()].copy_from_slice(id.as_bytes());
            let m = RecordMeta {
                raw_id,
                sequence: i / DEVICES,
                recv_ts_ns: 1_795_000_000_000_000_000 + u64::from(i),
                shard: 0,
                seq_event: 1,
                flags: 0,
            };
            let payload = format!("{{\"i\":{i}}}");
            let t = Instant::now();
            while self.shard.stage(&m, payload.as_bytes()).is_err() {
                self.out.step(100_000).unwrap();
                assert!(t.elapsed() < Duration::from_secs(60), "no buffer came back");
            }
            self.sent += 1;
            if i % 64 == 63 {
                self.shard.flush(klais::clock::now_ns());
                self.out.step(0).unwrap();
            }
        }
        self.shard.close_all();
    }

    /// Steps until `done` holds (60 s at most).
    fn until(&mut self, what: &str, done: impl Fn(&KafkaSnapshot) -> bool) -> KafkaSnapshot {
        let t = Instant::now();
        loop {
            self.shard.flush(klais::clock::now_ns());
            self.out.step(100_000).unwrap();
            self.out.tick();
            let s = self.out.snapshot();
            if done(&s) {
                return s;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "{what}: {s:?}");
        }
    }

    /// Nothing dropped, the accounting identity holds, and the topic reads
    /// back exactly the `n` records.
    fn assert_exactly_delivered(&self, s: &KafkaSnapshot, n: u32) {
        assert_eq!(s.dropped(), 0, "{s:?}");
        assert_eq!(s.reconcile().0, s.reconcile().1, "{s:?}");
        self.read_back(n);
    }

    /// The topic read back: every device's sequences in order, each once.
    fn read_back(&self, expect: u32) {
        let mut per: Vec<Vec<u32>> = vec![Vec::new(); DEVICES as usize];
        for_each(&self.brokers, "native", None, Duration::from_secs(2), |m| {
            let id = String::from_utf8(m.key.clone()).unwrap();
            let d: usize = id.trim_start_matches("dev-").parse().unwrap();
            per[d].push(m.header("sequence").unwrap().parse().unwrap());
        })
        .unwrap();
        let total: usize = per.iter().map(Vec::len).sum();
        assert_eq!(
            total, expect as usize,
            "exactly the delivered records, once each"
        );
        for (d, seqs) in per.iter().enumerate() {
            let want: Vec<u32> = (0..self.sent / DEVICES).collect();
            assert_eq!(seqs, &want, "dev-{d}: order, completeness");
        }
    }
}

#[test]
fn retriable_produce_errors_are_retried_in_order_without_duplicates() {
    let cluster = MockCluster::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One batch per lane in flight: the mock checks idempotent sequences only
    // for transactional producers, so with more in flight a batch after a
    // failed one would be written ahead of it (a real broker refuses it,
    // OUT_OF_ORDER_SEQUENCE_NUMBER; the broker tier runs tansu, which does).
    let mut r = rig(&cluster, dir.path(), 1);
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        ],
    );
    r.push(4000);
    let s = r.until("delivery", |s| s.delivered == 4000);
    assert!(s.retries > 0, "the errors were seen and retried: {s:?}");
    r.assert_exactly_delivered(&s, 4000);
}

#[test]
fn with_acks_0_every_batch_is_delivered_once_written_and_read_back_intact() {
    // acks = 0: no response comes, so a batch is delivered when the kernel
    // has taken its whole request, and only then does its buffer go back to
    // the shard (which reuses it at once here: a buffer given back early
    // would be overwritten before it was sent).
    let cluster = MockCluster::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut r = rig_with(&cluster, dir.path(), 5, |k| {
        k.acks = "0".into();
        k.idempotence = false;
    });
    r.push(4000);
    let s = r.until("delivery", |s| s.delivered == 4000);
    assert!(s.produce_requests > 0 && s.sends > 0, "{s:?}");
    r.assert_exactly_delivered(&s, 4000);
}

#[test]
fn a_batch_the_broker_refuses_for_good_is_dropped_and_counted_and_the_rest_delivered() {
    let cluster = MockCluster::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut r = rig(&cluster, dir.path(), 5);
    r.push(1000);
    r.until("the first 1,000", |s| s.delivered == 1000);
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    r.push(2000);
    let s = r.until("everything answered", |s| {
        s.delivered + s.dropped_rejected == 3000
    });
    assert!(s.dropped_rejected > 0, "one batch refused: {s:?}");
    assert!(
        s.producer_resets > 0,
        "a new producer id after the gap: {s:?}"
    );
    assert_eq!(s.reconcile().0, s.reconcile().1, "{s:?}");
    // What was delivered is read back once each and in order per device
    // (the refused batch's records are missing, nothing else).
    let mut total = 0;
    for_each(&r.brokers, "native", None, Duration::from_secs(2), |_| {
        total += 1
    })
    .unwrap();
    assert_eq!(total, s.delivered, "{s:?}");
}

#[test]
fn with_the_broker_down_batches_go_to_the_journal_and_replay_in_order_after() {
    let cluster = MockCluster::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut r = rig(&cluster, dir.path(), 5);
    r.push(1000);
    r.until("the first 1,000", |s| s.delivered == 1000);
    cluster.broker_down(1).unwrap();
    r.push(3000);
    let down = r.until("the breaker open and batches journaled", |s| {
        s.breaker_opens > 0 && s.journal.appended > 0 && s.in_flight == 0
    });
    cluster.broker_up(1).unwrap();
    let s = r.until("the journal delivered", |s| {
        s.delivered == 4000 && s.journaled == 0
    });
    println!("down: {down:?}\nafter: {s:?}");
    r.assert_exactly_delivered(&s, 4000);
}
