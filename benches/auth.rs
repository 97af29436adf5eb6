//! Protocol v2 authentication: the MAC choice (SipHash-2-4 against
//! HMAC-SHA256 truncated to 64 bits, at telemetry sizes) and the shard's
//! whole per-message step for authenticated v2 against v1.
//!
//! The v2 step re-signs the datagram before each shard step (a new sequence
//! needs a new MAC, as each datagram a device sends carries its own): the
//! `mac/siphash24` figure at the same size is that signing's share, to
//! subtract for the shard's own cost.
//!
//! Run: `cargo bench --bench auth`. Figures go in the README.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hmac::{Hmac, Mac};
use klais::handoff::record_ring;
use klais::shard::auth::KeyTable;
use klais::shard::{Shard, ShardSettings};
use klais::wire::{self, ParseOptions, MAC_LEN, V2_HEADER_LEN};

const DEVICES: usize = 10_000;

fn hmac_sha256_64(key: &[u8; 16], msg: &[u8]) -> [u8; 8] {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    m.update(msg);
    let full = m.finalize().into_bytes();
    let mut out = [0u8; 8];
    out.copy_from_slice(&full[..8]);
    out
}

fn bench_macs(c: &mut Criterion) {
    let key = *b"0123456789abcdef";
    let mut g = c.benchmark_group("mac");
    for size in [64usize, 200, 1400] {
        let msg = vec![0x5au8; size - MAC_LEN];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("siphash24", size), &msg, |b, m| {
            b.iter(|| black_box(wire::mac(black_box(&key), black_box(m))))
        });
        g.bench_with_input(BenchmarkId::new("hmac_sha256_64", size), &msg, |b, m| {
            b.iter(|| black_box(hmac_sha256_64(black_box(&key), black_box(m))))
        });
    }
    g.finish();
}

fn settings() -> ShardSettings {
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

fn bench_shard_v2(c: &mut Criterion) {
    let ids: Vec<String> = (0..DEVICES).map(|i| format!("dev-{i:08}")).collect();
    let mut keyfile = String::new();
    for (i, id) in ids.iter().enumerate() {
        keyfile.push_str(&format!(
            "{id} {:032x}\n",
            (i as u128 + 1) * 0x9e37_79b9_7f4a_7c15
        ));
    }
    let table = KeyTable::parse(&keyfile).unwrap();
    let keys: Vec<wire::DeviceKey> = ids
        .iter()
        .map(|id| *table.key_of(&wire::raw_device_id(id).unwrap()).unwrap())
        .collect();
    let payload = vec![b'1'; 200 - V2_HEADER_LEN - MAC_LEN];
    let mut bufs: Vec<Vec<u8>> = ids
        .iter()
        .zip(&keys)
        .map(|(id, k)| {
            let mut b = vec![0u8; 200];
            wire::encode_v2(id, 0, 0, &payload, Some(k), &mut b).unwrap();
            b
        })
        .collect();
    let (tx, mut rx) = record_ring(1 << 20, 1400).unwrap();
    let overflow = record_ring(1 << 16, 1400).unwrap();
    let mut shard = Shard::standalone(settings(), tx, overflow).unwrap();
    shard.set_auth(&table);
    let mut g = c.benchmark_group("shard_per_message");
    g.throughput(Throughput::Elements(1));
    let (mut next, mut round) = (0usize, 1u32);
    g.bench_function("v2_authenticated_200B_sign_then_shard_step", |b| {
        b.iter(|| {
            let buf = &mut bufs[next];
            buf[18..22].copy_from_slice(&round.to_be_bytes());
            let tag = wire::mac(&keys[next], &buf[..200 - MAC_LEN]);
            buf[200 - MAC_LEN..].copy_from_slice(&tag);
            let r = shard.on_datagram(black_box(buf), 1);
            debug_assert_eq!(r, Ok(()));
            let _ = black_box(r);
            shard.pump();
            next += 1;
            if next == DEVICES {
                next = 0;
                round += 1;
            }
            black_box(rx.pop().map(|(m, p)| (m.sequence, p.len())))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_macs, bench_shard_v2);
criterion_main!(benches);
