//! The models' inference costs in user space: the per-flow feature update
//! and the int8 classifier (the Rust mirror of the kernel path), the float
//! classifier, and the window model through GGML Q4_0 (once per tick per
//! shard) against its float form. The kernel path is measured by
//! `klais xdp bench --model models/classifier.json` (BPF_PROG_TEST_RUN).

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use klais::model::features::{self, CpuState, FlowState};
use klais::model::window::{GgmlWindow, IN};

fn models(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let cls =
        klais::model::load_classifier(&dir.join("classifier.json")).expect("shipped classifier");
    let win = klais::model::load_window(&dir.join("window.json")).expect("shipped window model");

    let mut cpu = CpuState::default();
    let mut st: Option<FlowState> = None;
    let mut t = 0u64;
    let mut seq = 0u32;
    c.bench_function("classifier: flow feature update", |b| {
        b.iter(|| {
            t += 1_000_000;
            seq += 1;
            black_box(features::update(&mut cpu, &mut st, t, 120, seq))
        })
    });
    let x = features::update(&mut cpu, &mut st, t + 1_000_000, 120, seq + 1);
    c.bench_function("classifier: int8 inference (Rust mirror)", |b| {
        b.iter(|| black_box(cls.quant.infer(black_box(&x))))
    });
    let xf = cls.quant.norm.apply_float(&x);
    c.bench_function("classifier: float inference", |b| {
        b.iter(|| black_box(cls.float.forward(black_box(&xf))))
    });
    let mut g = GgmlWindow::new(&win).expect("fits GGML");
    let input = [0.3f32; IN];
    c.bench_function("window model: GGML Q4_0 inference", |b| {
        b.iter(|| black_box(g.infer(black_box(&input))))
    });
    c.bench_function("window model: float inference", |b| {
        b.iter(|| black_box(win.infer(black_box(&input))))
    });
}

criterion_group!(benches, models);
criterion_main!(benches);
