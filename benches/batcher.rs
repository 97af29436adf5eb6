//! The Kafka batching core alone, against the test broker (tansu) on loopback.
//!
//! 1. Throughput: a shard ring pre-filled (untimed) with N records of 200-byte
//!    payloads from 10,000 devices; the batcher (this thread) drains it through
//!    DAPB into librdkafka (lz4, then zstd; idempotent, acks=all). Reported: messages per
//!    second *into librdkafka* (every record handed to the producer), messages
//!    per second *acknowledged* (every delivery report back), and batcher CPU per
//!    message. Median of the rounds.
//! 2. Added latency at 50% of the acknowledged rate: a feeder thread paces
//!    records into the ring, 1% of them from an urgent device; the batcher's
//!    histograms (ring pop → delivery report, µs) after a 1 s warm-up, normal and
//!    urgent class, P50 / P99 / P99.9.
//!
//! `cargo bench --bench batcher` (needs `scripts/broker.sh install`). Under
//! `cargo test` it runs one tiny round to prove it works. Results also go to
//! target/bench-results/batcher.json.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::sync::Arc;

use klais::config::Kafka;
use klais::dapb::{Class, Conditions, KnobFeed, Params, ShardKnobs};
use klais::handoff::{batch_ring, record_ring, RecordMeta};
use klais::kafka::native::NativeProducer;
use klais::kafka::{thread_cpu_ns, Batcher, KafkaSnapshot};
use klais::shard::produce::{BatchProducer, ProduceSettings};
use klais::wire::kafka::Compression;

const PAYLOAD: usize = 200;
const DEVICES: u32 = 10_000;

/// The broker tier's own helpers: the tansu binary, start on a free port,
/// topic creation (one copy for tests and benchmarks).
#[path = "../tests/common/broker.rs"]
#[allow(dead_code)]
mod broker;

/// The one way a test or a benchmark in test mode skips (KLAIS_NO_SKIP=1
/// makes it a failure).
#[path = "../tests/common/skip.rs"]
mod skip;

fn meta(i: u64, urgent: bool) -> RecordMeta {
    let mut raw_id = [0u8; 16];
    let id = if urgent {
        "urgent-0".to_string()
    } else {
        format!("dev-{:08}", i % u64::from(DEVICES))
    };
    raw_id[..id.len()].copy_from_slice(id.as_bytes());
    RecordMeta {
        raw_id,
        sequence: (i / u64::from(DEVICES)) as u32,
        recv_ts_ns: 1_795_000_000_000_000_000 + i,
        shard: 0,
        seq_event: 1,
        flags: 0,
    }
}

fn config(brokers: &str, dir: &std::path::Path) -> Kafka {
    let mut c = Kafka {
        brokers: brokers.into(),
        topic: "bench".into(),
        urgent_devices: vec!["urgent-0".into()],
        queue_high_water: 2_000_000,
        ..Kafka::default()
    };
    c.journal.dir = dir.to_path_buf();
    c
}

struct Round {
    into_rate: f64,
    acked_rate: f64,
    cpu_ns_per_msg: f64,
    snap: KafkaSnapshot,
}

/// The batcher as the runtime runs it: librdkafka's threads made unpinned,
/// then this thread pinned to the last CPU (the output core).
fn batcher(brokers: &str, dir: &std::path::Path) -> Batcher {
    batcher_with(brokers, dir, "lz4")
}

/// [`batcher`] with librdkafka compressing with `codec`.
fn batcher_with(brokers: &str, dir: &std::path::Path, codec: &str) -> Batcher {
    // SAFETY: a zeroed cpu_set_t with every CPU set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    let mut cfg = config(brokers, dir);
    cfg.compression = codec.into();
    let b = Batcher::new(&cfg).unwrap();
    let last = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
    core_affinity::set_for_current(core_affinity::CoreId { id: last });
    b
}

fn throughput_round(brokers: &str, n: u64, codec: &str) -> Round {
    let dir = tempfile::tempdir().unwrap();
    let mut b = batcher_with(brokers, dir.path(), codec);
    // Connection and producer id first, untimed.
    let (mut tx, rx) = record_ring(((n as usize) * (PAYLOAD + 48)).max(1 << 20), 2048).unwrap();
    let mut rings = vec![rx];
    let payload = vec![b'x'; PAYLOAD];
    tx.push(&meta(0, false), &payload).unwrap();
    let t = Instant::now();
    while b.progress().2 < 1 {
        b.step(&mut rings);
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "broker never acknowledged"
        );
    }
    for i in 1..=n {
        tx.push(&meta(i, false), &payload).unwrap();
    }
    let (t0, c0) = (Instant::now(), klais::kafka::thread_cpu_ns());
    let mut into = None;
    loop {
        b.step(&mut rings);
        let s = b.progress();
        if into.is_none() && s.0 == n + 1 && s.1 == 0 {
            into = Some((t0.elapsed(), klais::kafka::thread_cpu_ns() - c0));
        }
        if s.2 == n + 1 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "stuck: {:?}",
            b.snapshot()
        );
    }
    let acked = t0.elapsed();
    let (into_t, cpu) = into.unwrap();
    let snap = b.shutdown().unwrap();
    Round {
        into_rate: n as f64 / into_t.as_secs_f64(),
        acked_rate: n as f64 / acked.as_secs_f64(),
        cpu_ns_per_msg: cpu as f64 / n as f64,
        snap,
    }
}

/// One round of the native client as the runtime runs it: a shard thread
/// encodes `n` records through its batch producer as fast as its buffer pool
/// lets it (its thread CPU per record is the shard-side cost), while the
/// output core, pinned like the batcher, sends the batches, publishes DAPB's
/// parameters every 10 ms and waits on io_uring when idle (its thread CPU
/// per record is the output core's cost).
struct NativeRound {
    encode_ns: f64,
    acked_rate: f64,
    out_cpu_ns: f64,
    batches: u64,
    batch_bytes: u64,
    requests: u64,
    sends: u64,
}

fn native_round(brokers: &str, n: u64, codec: Compression, class: Class) -> NativeRound {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(brokers, dir.path());
    let feed = Arc::new(KnobFeed::new(ShardKnobs {
        params: Params::compute(&cfg.dapb, &Conditions::default()),
        partitions: 0,
    }));
    let (tx, rx) = batch_ring(64, 64 << 10);
    let last = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
    core_affinity::set_for_current(core_affinity::CoreId { id: last });
    let mut p = NativeProducer::new(&cfg, vec![rx], feed.clone()).unwrap();
    p.start(Duration::from_secs(10)).unwrap();
    let shard = std::thread::spawn(move || {
        core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
        let mut shard = BatchProducer::new(
            tx,
            feed,
            ProduceSettings {
                gateway: b"bench".to_vec(),
                compression: codec,
                zstd_level: 3,
                default_class: class,
                urgent_devices: Vec::new(),
                latency_devices: Vec::new(),
            },
        )
        .unwrap();
        let payload = vec![b'x'; PAYLOAD];
        // The records' headers made before timing (a shard has them from
        // the parser; formatting device names is not the shard's cost).
        let metas: Vec<RecordMeta> = (0..u64::from(DEVICES)).map(|i| meta(i, false)).collect();
        let c0 = thread_cpu_ns();
        let mut waited = 0u64;
        for i in 0..n {
            let m = RecordMeta {
                sequence: (i / u64::from(DEVICES)) as u32,
                recv_ts_ns: 1_795_000_000_000_000_000 + i,
                ..metas[(i % u64::from(DEVICES)) as usize]
            };
            while shard.stage(&m, &payload).is_err() {
                // No free buffer: the output core has them (backpressure).
                let w = thread_cpu_ns();
                std::thread::yield_now();
                waited += thread_cpu_ns() - w;
            }
            if i % 32 == 31 {
                shard.flush(klais::clock::now_ns());
            }
        }
        shard.close_all();
        let cpu = thread_cpu_ns() - c0 - waited;
        (cpu, shard.stats())
    });
    let (t0, c0) = (Instant::now(), thread_cpu_ns());
    let mut next_tick = Instant::now();
    while p.progress().2 < n {
        p.step(200_000).unwrap();
        if Instant::now() >= next_tick {
            p.tick();
            next_tick += Duration::from_millis(10);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "stuck: {:?}",
            p.snapshot()
        );
    }
    let (t, cpu) = (t0.elapsed(), thread_cpu_ns() - c0);
    let (encode, st) = shard.join().unwrap();
    let snap = p.snapshot();
    NativeRound {
        requests: snap.produce_requests,
        sends: snap.sends,
        encode_ns: encode as f64 / n as f64,
        acked_rate: n as f64 / t.as_secs_f64(),
        out_cpu_ns: cpu as f64 / n as f64,
        batches: st.batches,
        batch_bytes: st.batch_bytes,
    }
}

/// Median (by acknowledged rate) of `rounds` native rounds.
fn native_median(
    brokers: &str,
    n: u64,
    codec: Compression,
    class: Class,
    rounds: usize,
) -> NativeRound {
    let mut rs: Vec<NativeRound> = (0..rounds)
        .map(|_| native_round(brokers, n, codec, class))
        .collect();
    rs.sort_by(|a, b| a.acked_rate.total_cmp(&b.acked_rate));
    rs.swap_remove(rs.len() / 2)
}

fn print_native(what: &str, r: &NativeRound) {
    println!(
        "  {what:<28} shard encode {:>6.1} ns/msg   acknowledged {:>10.0} msg/s   output core CPU {:>6.1} ns/msg   {} batches, {:.0} B each, {:.2} per request, {:.2} requests per send",
        r.encode_ns,
        r.acked_rate,
        r.out_cpu_ns,
        r.batches,
        r.batch_bytes as f64 / r.batches.max(1) as f64,
        r.batches as f64 / r.requests.max(1) as f64,
        r.requests as f64 / r.sends.max(1) as f64,
    );
}

/// Both clients, one after the other, against the same broker.
fn clients_side_by_side(brokers: &str, n: u64, rounds: usize) -> serde_json::Value {
    let mut out = serde_json::json!({});
    for codec in ["lz4", "zstd"] {
        let mut lib: Vec<Round> = (0..rounds)
            .map(|_| throughput_round(brokers, n, codec))
            .collect();
        lib.sort_by(|a, b| a.acked_rate.total_cmp(&b.acked_rate));
        let l = &lib[lib.len() / 2];
        println!(
            "  {:<28} batcher CPU {:>6.1} ns/msg   acknowledged {:>10.0} msg/s",
            format!("librdkafka, {codec}"),
            l.cpu_ns_per_msg,
            l.acked_rate
        );
        out[format!("librdkafka_{codec}")] = serde_json::json!({"acknowledged_msg_per_s": l.acked_rate, "output_cpu_ns_per_msg": l.cpu_ns_per_msg});
    }
    for codec in [
        Compression::None,
        Compression::Lz4,
        Compression::Zstd,
        Compression::Snappy,
        Compression::Gzip,
    ] {
        let r = native_median(brokers, n, codec, Class::Adaptive, rounds);
        print_native(&format!("native, {}", codec.name()), &r);
        out[format!("native_{}", codec.name())] = native_json(&r);
    }
    // The throughput class (B(t) = B_max): the same bytes in fewer, larger
    // batches, so the output core's per-batch work is spread wider.
    let r = native_median(brokers, n, Compression::Lz4, Class::Throughput, rounds);
    print_native("native, lz4, throughput class", &r);
    out["native_lz4_throughput_class"] = native_json(&r);
    out
}

fn native_json(r: &NativeRound) -> serde_json::Value {
    serde_json::json!({
        "acknowledged_msg_per_s": r.acked_rate, "output_cpu_ns_per_msg": r.out_cpu_ns,
        "shard_encode_ns_per_msg": r.encode_ns, "batches": r.batches,
        "mean_batch_bytes": r.batch_bytes as f64 / r.batches.max(1) as f64,
        "produce_requests": r.requests, "sends": r.sends,
    })
}

fn quantiles(h: &hdrhistogram::Histogram<u64>) -> [u64; 4] {
    [
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.len(),
    ]
}

fn latency_phase(
    brokers: &str,
    rate: f64,
    secs: f64,
) -> ([u64; 4], [u64; 4], [u64; 4], KafkaSnapshot) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = batcher(brokers, dir.path());
    let (mut tx, rx) = record_ring(64 << 20, 2048).unwrap();
    let mut rings = vec![rx];
    let total = (rate * (secs + 1.0)) as u64;
    let feeder = std::thread::spawn(move || {
        let payload = vec![b'y'; PAYLOAD];
        let start = Instant::now();
        // Paced in 200 µs steps with sleeps: a spinning feeder would take a
        // whole core from the batcher, librdkafka and the broker.
        let mut i = 0;
        while i < total {
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            while i < due.min(total) {
                while tx.push(&meta(i, i % 100 == 7), &payload).is_err() {
                    std::thread::yield_now();
                }
                i += 1;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    let start = Instant::now();
    let mut reset = false;
    while !feeder.is_finished() {
        b.step(&mut rings);
        if !reset && start.elapsed() > Duration::from_secs(1) {
            b.reset_latency();
            reset = true;
        }
    }
    feeder.join().unwrap();
    let t = Instant::now();
    while b.progress().2 < total && t.elapsed() < Duration::from_secs(120) {
        b.step(&mut rings);
    }
    let (n, u, r) = b.latency();
    let (n, u, r) = (quantiles(n), quantiles(u), quantiles(r));
    (n, u, r, b.shutdown().unwrap())
}

/// Percentiles of one latency phase: normal, urgent, round trip (µs).
fn print_latency(norm: &[u64; 4], urg: &[u64; 4], rtt: &[u64; 4]) {
    for (name, q) in [("normal", norm), ("urgent", urg)] {
        println!(
            "  {name}  P50 {:>7}  P99 {:>7}  P99.9 {:>7}  (n={})",
            q[0], q[1], q[2], q[3]
        );
    }
    println!(
        "  round trip (handed to librdkafka -> report)  P50 {:>7}  P99 {:>7}  P99.9 {:>7}",
        rtt[0], rtt[1], rtt[2]
    );
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (rounds, n, secs) = if bench {
        (5, 500_000u64, 10.0)
    } else {
        (1, 2_000u64, 0.5)
    };
    // KLAIS_BENCH_MOCK=1: librdkafka's in-process mock broker instead of tansu,
    // to tell the batcher's and librdkafka's share of latency from the broker's.
    let mock = std::env::var_os("KLAIS_BENCH_MOCK").map(|_| {
        let m = rdkafka::mocking::MockCluster::new(1).unwrap();
        m.create_topic("bench", 3, 1).unwrap();
        m
    });
    let (_broker, brokers) = match &mock {
        Some(m) => (None, m.bootstrap_servers()),
        None => {
            if let Err(why) = broker::binary() {
                skip::skip(&why);
                return;
            }
            let b = broker::Broker::start(None);
            b.create_topic("bench", 3);
            let s = b.brokers();
            (Some(b), s)
        }
    };
    println!(
        "broker: {}",
        if mock.is_some() {
            "librdkafka mock cluster (in process)"
        } else {
            "tansu on loopback"
        }
    );
    // KLAIS_BENCH_NATIVE_PROFILE=1: only the native client, lz4, against a
    // discarding broker, for a profiler (`perf record`) to watch.
    if std::env::var_os("KLAIS_BENCH_NATIVE_PROFILE").is_some() {
        let d = broker::Broker::start_discarding();
        d.create_topic("bench", 3);
        let r = native_median(&d.brokers(), n, Compression::Lz4, Class::Adaptive, rounds);
        print_native("native, lz4, tansu null://", &r);
        return;
    }
    let mut rs: Vec<Round> = (0..rounds)
        .map(|_| throughput_round(&brokers, n, "lz4"))
        .collect();
    rs.sort_by(|a, b| a.acked_rate.total_cmp(&b.acked_rate));
    let m = &rs[rs.len() / 2];
    println!(
        "batcher alone, {n} x {PAYLOAD}-byte messages, lz4, acks=all, idempotent (median of {rounds}):"
    );
    println!(
        "  into librdkafka {:>10.0} msg/s   acknowledged {:>10.0} msg/s   batcher CPU {:.0} ns/msg (into librdkafka)",
        m.into_rate, m.acked_rate, m.cpu_ns_per_msg
    );
    let into: Vec<String> = rs.iter().map(|r| format!("{:.0}", r.into_rate)).collect();
    println!("  every round, into librdkafka msg/s: {}", into.join(", "));
    println!(
        "  DAPB: {} batches, mean {:.0} msgs/batch, efficiency {:.1}%, releases urgent/full/timeout/drain {:?}",
        m.snap.dapb.batches,
        m.snap.dapb.messages as f64 / m.snap.dapb.batches.max(1) as f64,
        100.0 * m.snap.dapb.efficiency(),
        m.snap.dapb.by_reason
    );
    // The two clients side by side: against the same broker (it stores),
    // then against one that discards (tansu null://), so the broker is not
    // what limits the producer.
    let native_rounds = if bench { 3 } else { 1 };
    println!("\nboth clients, {n} x {PAYLOAD}-byte messages, acks=all, idempotent (median of {native_rounds}), tansu memory://:");
    let stored = clients_side_by_side(&brokers, n, native_rounds);
    let discarding = if mock.is_none() {
        let d = broker::Broker::start_discarding();
        d.create_topic("bench", 3);
        println!("the same, tansu null:// (acknowledges and discards):");
        Some(clients_side_by_side(&d.brokers(), n, native_rounds))
    } else {
        None
    };
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../bench-results");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(
        out.join("batcher-clients.json"),
        serde_json::json!({"messages": n, "payload_bytes": PAYLOAD, "rounds": native_rounds,
            "tansu_memory": stored, "tansu_null": discarding})
        .to_string(),
    );
    if std::env::var_os("KLAIS_BENCH_THROUGHPUT_ONLY").is_some() {
        return;
    }
    let rate = (m.acked_rate * 0.5).max(1000.0);
    let (norm, urg, rtt, snap) = latency_phase(&brokers, rate, secs);
    println!(
        "added latency at {rate:.0} msg/s (50% of acknowledged), ring pop -> delivery report, us:"
    );
    print_latency(&norm, &urg, &rtt);
    println!(
        "  DAPB then: B(t) {} B, T(t) {} us, RTT {:.2} ms, jitter {:.2} ms, errors {:.2}%",
        snap.params.map_or(0, |p| p.b_adaptive),
        snap.params.map_or(0, |p| p.t_us),
        snap.conditions.rtt_us / 1000.0,
        snap.conditions.jitter_us / 1000.0,
        snap.conditions.error_pct
    );
    // The same at a light load, to separate the broker's own round trip from
    // queueing on this 2-core machine.
    let light = if bench { 10_000.0 } else { 1000.0 };
    let (lnorm, lurg, lrtt, _) = latency_phase(&brokers, light, secs);
    println!("added latency at {light:.0} msg/s, us:");
    print_latency(&lnorm, &lurg, &lrtt);
    let json = serde_json::json!({
        "messages": n, "payload_bytes": PAYLOAD, "rounds": rounds,
        "into_librdkafka_msg_per_s": m.into_rate,
        "into_librdkafka_rounds": rs.iter().map(|r| r.into_rate).collect::<Vec<f64>>(), "acknowledged_msg_per_s": m.acked_rate,
        "batcher_cpu_ns_per_msg": m.cpu_ns_per_msg,
        "latency_rate_msg_per_s": rate,
        "normal_us": {"p50": norm[0], "p99": norm[1], "p999": norm[2], "n": norm[3]},
        "urgent_us": {"p50": urg[0], "p99": urg[1], "p999": urg[2], "n": urg[3]},
        "light_rate_msg_per_s": light,
        "light_normal_us": {"p50": lnorm[0], "p99": lnorm[1], "p999": lnorm[2], "n": lnorm[3]},
        "light_urgent_us": {"p50": lurg[0], "p99": lurg[1], "p999": lurg[2], "n": lurg[3]},
        "round_trip_us": {"p50": rtt[0], "p99": rtt[1], "p999": rtt[2]},
        "light_round_trip_us": {"p50": lrtt[0], "p99": lrtt[1], "p999": lrtt[2]},
        "broker": if mock.is_some() { "librdkafka mock" } else { "tansu" },
    });
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../bench-results");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("batcher.json"), json.to_string());
}
