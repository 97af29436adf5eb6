//! Per-message cost on a shard core: parse + FNV-1a device hash + sequence
//! tracking of a 200-byte message (issue target: < 40 ns median without JSON
//! validation), the same with JSON validation, the whole shard step including
//! the record ring, and the JSON validators compared on the same payloads (the
//! choice in `wire::is_json`).
//!
//! Each iteration writes the next device's id and sequence into one receive
//! buffer, as a receive call would, so the packet is cache-hot as it is on a
//! shard after recv; 10,000 devices take turns with rising sequences.
//!
//! Run: `cargo bench --bench wire`. Figures go in the README.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use klais::handoff::record_ring;
use klais::shard::{SeqTracker, Shard, ShardSettings};
use klais::wire::{self, ParseOptions, HEADER_LEN};

const DEVICES: usize = 10_000;

/// The traffic: N raw ids and one 200-byte datagram (178-byte JSON payload).
struct Traffic {
    ids: Vec<[u8; 16]>,
    buf: Vec<u8>,
    next: usize,
    round: u32,
}

impl Traffic {
    fn new() -> Self {
        Self::with_devices(DEVICES)
    }

    fn with_devices(devices: usize) -> Self {
        let ids = (0..devices)
            .map(|i| wire::raw_device_id(&format!("dev-{i:08}")).unwrap())
            .collect();
        let mut payload = String::from(
            "{\"ts_ns\":1764000000000000000,\"seq\":123456,\"temp\":21.5,\"hum\":40.25,\"bat\":3.71,\"pad\":\"",
        );
        while payload.len() < 200 - HEADER_LEN - 2 {
            payload.push('x');
        }
        payload.push_str("\"}");
        let mut buf = vec![0u8; 200];
        assert_eq!(
            wire::encode("dev-0", 0, payload.as_bytes(), &mut buf),
            Ok(200)
        );
        Self {
            ids,
            buf,
            next: 0,
            round: 0,
        }
    }

    /// "Receives" the next datagram into the buffer.
    #[inline]
    fn recv(&mut self) -> &[u8] {
        self.buf[2..18].copy_from_slice(&self.ids[self.next]);
        self.buf[18..22].copy_from_slice(&self.round.to_be_bytes());
        self.next += 1;
        if self.next == self.ids.len() {
            self.next = 0;
            self.round += 1;
        }
        &self.buf
    }
}

fn parse_hash_track(c: &mut Criterion, name: &str, validate_json: bool) {
    let mut t = Traffic::new();
    let opts = ParseOptions {
        max_payload: 1400,
        validate_json,
    };
    // The default shard table (sequence.max_devices = 2^20).
    let mut tracker = SeqTracker::new(1 << 20, 4).unwrap();
    let mut g = c.benchmark_group("shard_per_message");
    g.throughput(Throughput::Elements(1));
    g.bench_function(name, |b| {
        b.iter(|| {
            let d = wire::parse(black_box(t.recv()), &opts).unwrap();
            black_box(tracker.track(d.device_hash(), d.sequence))
        })
    });
    g.finish();
}

fn bench_parse_hash_track(c: &mut Criterion) {
    parse_hash_track(c, "parse_hash_seq_200B", false);
    parse_hash_track(c, "parse_hash_seq_200B_json_validated", true);
}

fn bench_parts(c: &mut Criterion) {
    let mut t = Traffic::new();
    let opts = ParseOptions {
        max_payload: 1400,
        validate_json: false,
    };
    let mut g = c.benchmark_group("shard_parts");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_only_200B", |b| {
        b.iter(|| black_box(wire::parse(black_box(t.recv()), &opts).map(|d| d.sequence)))
    });
    g.bench_function("fnv1a64_device_hash", |b| {
        b.iter(|| {
            let buf = t.recv();
            let raw: &[u8; 16] = buf[2..18].try_into().unwrap();
            black_box(wire::device_hash(black_box(raw)))
        })
    });
    g.finish();
}

/// The whole shard step, including the copy into the record ring (drained
/// by the same thread each iteration, so the ring stays warm).
fn bench_shard_step(c: &mut Criterion) {
    let mut t = Traffic::new();
    let (tx, mut rx) = record_ring(1 << 20, 1400).unwrap();
    let overflow = record_ring(1 << 16, 1400).unwrap();
    let mut shard = Shard::standalone(shard_settings(), tx, overflow).unwrap();
    let mut g = c.benchmark_group("shard_per_message");
    g.throughput(Throughput::Elements(1));
    g.bench_function("shard_step_200B_with_ring_push_pop", |b| {
        b.iter(|| {
            let _ = black_box(shard.on_datagram(black_box(t.recv()), 1));
            // Publication is per batch in the shard loops; here per message,
            // the worst case.
            shard.pump();
            black_box(rx.pop().map(|(m, p)| (m.sequence, p.len())))
        })
    });
    g.finish();
}

fn shard_settings() -> ShardSettings {
    ShardSettings {
        parse: ParseOptions {
            max_payload: 1400,
            validate_json: false,
        },
        max_devices: 1 << 20,
        reset_window: 4,
        admission: None,
        dam: None,
        policy: Default::default(),
    }
}

/// Issue 4's figure: the shard pipeline without I/O, 100,000 active devices,
/// a receive batch of 32 prefetched then processed and published at once, as
/// the AF_XDP loop does; the output ring drained by the same thread.
fn bench_shard_pipeline_100k(c: &mut Criterion) {
    let mut t = Traffic::with_devices(100_000);
    // The default pipeline.ring_bytes.
    let (tx, mut rx) = record_ring(16 << 20, 1400).unwrap();
    let mut shard =
        Shard::standalone(shard_settings(), tx, record_ring(1 << 16, 1400).unwrap()).unwrap();
    let mut g = c.benchmark_group("shard_pipeline");
    g.throughput(Throughput::Elements(32));
    // A receive batch: 32 datagrams present at once, as in an AF_XDP RX ring.
    let mut batch = vec![[0u8; 200]; 32];
    let mut hashes = [None; 32];
    g.bench_function("batch_of_32_200B_100k_devices", |b| {
        b.iter(|| {
            for slot in batch.iter_mut() {
                slot.copy_from_slice(t.recv());
            }
            for (slot, h) in batch.iter().zip(hashes.iter_mut()) {
                *h = shard.prefetch(slot);
            }
            for (slot, h) in batch.iter().zip(hashes.iter()) {
                let _ = black_box(shard.on_prefetched(black_box(slot), 1, *h));
            }
            shard.pump();
            while let Some((m, _)) = rx.pop() {
                black_box(m.sequence);
            }
        })
    });
    g.finish();
}

/// The cross-shard path: every message arrives on shard 0 for a device shard 1
/// owns, crosses the mesh ring, and shard 1 admits it; per batch of 32.
fn bench_cross_shard(c: &mut Criterion) {
    let ids: Vec<[u8; 16]> = (0..200_000)
        .map(|i| wire::raw_device_id(&format!("dev-{i:08}")).unwrap())
        .filter(|id| wire::device_hash(id) % 2 == 1)
        .take(10_000)
        .collect();
    let mut t = Traffic::new();
    t.ids = ids;
    let (o0, _r0) = record_ring(1 << 22, 1400).unwrap();
    let (o1, mut r1) = record_ring(1 << 22, 1400).unwrap();
    let (m01, m01r) = record_ring(1 << 20, 1400).unwrap();
    let (m10, m10r) = record_ring(1 << 20, 1400).unwrap();
    let rings = |out, tx: Vec<Option<klais::handoff::RecordTx>>, rx| klais::shard::ShardRings {
        out,
        overflow: record_ring(1 << 16, 1400).unwrap(),
        mesh_tx: tx,
        mesh_rx: vec![rx],
    };
    let mut s0 = Shard::new(
        0,
        2,
        shard_settings(),
        rings(o0.into(), vec![None, Some(m01)], m10r),
    )
    .unwrap();
    let mut s1 = Shard::new(
        1,
        2,
        shard_settings(),
        rings(o1.into(), vec![Some(m10), None], m01r),
    )
    .unwrap();
    let mut g = c.benchmark_group("shard_pipeline");
    g.throughput(Throughput::Elements(32));
    g.bench_function("cross_shard_batch_of_32_200B", |b| {
        b.iter(|| {
            for _ in 0..32 {
                let _ = black_box(s0.on_datagram(black_box(t.recv()), 1));
            }
            s0.pump();
            s1.pump();
            while let Some((m, _)) = r1.pop() {
                black_box(m.sequence);
            }
        })
    });
    g.finish();
}

fn bench_json_validators(c: &mut Criterion) {
    let t = Traffic::new();
    let payload = &t.buf[HEADER_LEN..];
    let mut g = c.benchmark_group("json_validate_178B");
    g.throughput(Throughput::Elements(1));
    g.bench_function("serde_json_ignored_any", |b| {
        b.iter(|| wire::is_json(black_box(payload)))
    });
    let mut scratch = vec![0u8; 2048];
    let mut buffers = simd_json::Buffers::new(2048);
    g.bench_function("simd_json_tape_reused_buffers", |b| {
        b.iter(|| {
            // simd-json parses in place: it needs a mutable copy.
            let s = &mut scratch[..payload.len()];
            s.copy_from_slice(black_box(payload));
            simd_json::to_tape_with_buffers(s, &mut buffers).is_ok()
        })
    });
    g.finish();
}

/// The native Kafka client's shard side: one accepted 200-byte record
/// encoded into its partition's open RecordBatch (3 partitions, 10,000
/// devices, the runtime's record headers), batches closed by DAPB's default
/// B(t) and compressed; the output core's part is played by giving each
/// batch's buffer straight back. Per message, with each codec.
fn bench_batch_encode(c: &mut Criterion) {
    use klais::dapb::{Class, Conditions, KnobFeed, Params, ShardKnobs};
    use klais::handoff::{batch_ring, RecordMeta};
    use klais::shard::produce::{BatchProducer, ProduceSettings};
    use klais::wire::kafka::Compression;
    let dapb = klais::config::Dapb::default();
    let mut g = c.benchmark_group("kafka_batch_encode");
    g.throughput(Throughput::Elements(1));
    let metas: Vec<RecordMeta> = (0..10_000u32)
        .map(|i| {
            let mut raw_id = [0u8; 16];
            let id = format!("dev-{i:08}");
            raw_id[..id.len()].copy_from_slice(id.as_bytes());
            RecordMeta {
                raw_id,
                sequence: i,
                recv_ts_ns: 1_795_000_000_000_000_000 + u64::from(i),
                shard: 0,
                seq_event: 1,
                flags: 1,
            }
        })
        .collect();
    let payload = vec![b'x'; 200];
    for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let feed = std::sync::Arc::new(KnobFeed::new(ShardKnobs {
            params: Params::compute(&dapb, &Conditions::default()),
            partitions: 3,
        }));
        let (tx, mut rx) = batch_ring(16, 64 << 10);
        let mut p = BatchProducer::new(
            tx,
            feed,
            ProduceSettings {
                gateway: b"gateway-01".to_vec(),
                compression: codec,
                zstd_level: 3,
                default_class: Class::Adaptive,
                urgent_devices: Vec::new(),
                latency_devices: Vec::new(),
            },
        )
        .unwrap();
        let mut i = 0usize;
        g.bench_function(format!("record_200B_{}", codec.name()), |b| {
            b.iter(|| {
                i = (i + 1) % metas.len();
                if p.stage(black_box(&metas[i]), black_box(&payload)).is_err() {
                    while let Some(done) = rx.pop() {
                        rx.give_back(done.bytes);
                    }
                    p.stage(&metas[i], &payload).unwrap();
                }
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_batch_encode,
    bench_parse_hash_track,
    bench_parts,
    bench_shard_step,
    bench_shard_pipeline_100k,
    bench_cross_shard,
    bench_json_validators
);
criterion_main!(benches);
