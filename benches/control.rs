//! The control logic's costs (criterion): Dam admission per message with
//! 100,000 active devices in the table, and one control tick (PID + predictor
//! + split) over 16 shards' reports.
//!
//! `cargo bench --bench control`.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

use klais::control::dam::{Admit, Dam, DamConfig};
use klais::control::pid::PidConfig;
use klais::control::predict::RuleConfig;
use klais::control::{ControlConfig, Controller, ShardReport};

fn dam_admit(c: &mut Criterion) {
    const DEVICES: usize = 100_000;
    let hashes: Vec<u64> = (0..DEVICES as u64)
        .map(|i| klais::wire::fnv1a64(format!("dev-{i:08}").as_bytes()))
        .collect();
    let mut dam: Dam<u32> = Dam::new(DamConfig {
        max_devices: 1 << 17,
        ..DamConfig::default()
    });
    // Every device known; 1 µs between messages: each device every 0.1 s,
    // under its 100 msg/s limit, so the common path (admit, pass) is measured.
    let mut now = 0u64;
    for h in &hashes {
        now += 1000;
        let _ = dam.admit(*h, false, now, 0);
    }
    let mut i = 0usize;
    c.bench_function("dam_admit_100k_devices", |b| {
        b.iter(|| {
            now += 1000;
            i = if i + 1 == DEVICES { 0 } else { i + 1 };
            match dam.admit(black_box(hashes[i]), false, now, 0u32) {
                Admit::Pass(x) => black_box(x),
                _ => 0,
            }
        })
    });
    let s = dam.stats();
    assert!(s.queued == 0 && s.dropped_queue_full == 0, "{s:?}");
}

fn control_tick(c: &mut Criterion) {
    let cfg = ControlConfig {
        backlog_target: 10_000.0,
        pid: PidConfig {
            kp: 20.0,
            ki: 40.0,
            kd: 0.0,
            min: 10_000.0,
            max: 1_000_000.0,
        },
        rule: RuleConfig::default(),
        dam: DamConfig::default(),
        storm_device_burst: 200.0,
        storm_device_rate: 400.0,
        capacity: 500_000.0,
    };
    let mut ctl = Controller::new(cfg);
    let mut reports = [ShardReport::default(); 16];
    for (s, r) in reports.iter_mut().enumerate() {
        r.offered = 1000 + s as u64;
        r.depth = 10 * s as u64;
        for (i, h) in r.id_hist.iter_mut().enumerate() {
            *h = ((i * 7 + s) % 13) as u32;
        }
    }
    let mut rates = [0.0f64; 16];
    let mut backlog = 5000.0;
    c.bench_function("control_tick_16_shards", |b| {
        b.iter(|| {
            backlog = if backlog > 20_000.0 {
                5000.0
            } else {
                backlog + 1.0
            };
            black_box(ctl.tick(black_box(&reports), backlog, 0.01, &mut rates));
        })
    });
}

criterion_group!(benches, dam_admit, control_tick);
criterion_main!(benches);
