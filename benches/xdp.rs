//! The XDP filter's verdict paths through `BPF_PROG_TEST_RUN` (criterion):
//! each iteration is one run of the program in the kernel; criterion gets the
//! kernel's own time per run (`iter_custom`), so the figures exclude the
//! syscall. 200-byte v1 datagrams in IPv4/UDP/Ethernet. Needs root (loading
//! BPF): without it the bench skips (`SKIPPED: ...`; a failure with
//! KLAIS_NO_SKIP=1, as in scripts/test.sh).
//!
//! `cargo bench --bench xdp` (the redirect path needs an interface with an
//! AF_XDP socket: `klais xdp bench --redirect-iface IFACE`).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use klais::xdp::frame::{udp, UdpFrame};
use klais::xdp::{EmptyProgram, Limits, LoadOptions, Rate, XdpProgram};

/// The one way a test or a benchmark in test mode skips (KLAIS_NO_SKIP=1
/// makes it a failure).
#[path = "../tests/common/skip.rs"]
mod skip;

fn datagram(id: &str) -> Vec<u8> {
    let mut body = br#"{"ts_ns":1764000000000000000,"seq":1,"temp":21.5,"pad":""#.to_vec();
    body.resize(176, b'x');
    body.extend_from_slice(b"\"}");
    let mut b = vec![0u8; klais::wire::HEADER_LEN + body.len()];
    klais::wire::encode(id, 1, &body, &mut b).expect("a valid datagram");
    b
}

fn frame(port: u16, payload: &[u8]) -> Vec<u8> {
    udp(&UdpFrame {
        dst_port: port,
        payload,
        ..Default::default()
    })
}

/// One path: its name, how to run a frame `n` times, the frame.
type Case<'a> = (
    &'a str,
    Box<dyn Fn(&[u8], u32) -> (u32, Duration) + 'a>,
    Vec<u8>,
);

fn xdp(c: &mut Criterion) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip::skip("the XDP benches load BPF programs and need root");
        return;
    }
    let opts = LoadOptions::default();
    let rate = |pps: u64| Limits {
        device: Some(Rate::new(pps, pps).expect("a valid rate")),
        ..Limits::default()
    };
    let unlimited = XdpProgram::load(&opts, &Limits::default()).expect("load");
    let bucketed = XdpProgram::load(&opts, &rate(1_000_000_000)).expect("load");
    let limited = XdpProgram::load(&opts, &rate(1)).expect("load");
    let empty = EmptyProgram::load().expect("load");
    let classifying = XdpProgram::load(&opts, &rate(1_000_000_000)).expect("load");
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/classifier.json");
    let with_model = match klais::model::load_classifier(&model) {
        Ok(mut m) => {
            // Every class passes: each run goes through features and inference
            // and on to the same exit as without the model.
            m.actions = [klais::model::classifier::Action::Pass; 4];
            classifying.maps().set_model(Some(&m)).expect("model loads");
            true
        }
        Err(e) => {
            skip::skip(&format!("the classifier path: {e}"));
            false
        }
    };
    let known = frame(7700, &datagram("dev-00000042"));
    let mut bad = datagram("dev-00000042");
    bad[0] = 0x12;
    let short = datagram("dev-00000042");
    let mut cases: Vec<Case<'_>> = vec![
        (
            "empty XDP program (harness floor)",
            Box::new(|f, n| empty.test_run(f, n).expect("run")),
            known.clone(),
        ),
        (
            "not klais traffic -> pass",
            Box::new(|f, n| unlimited.test_run(f, n).expect("run")),
            frame(53, &known[42..]),
        ),
        (
            "too short -> drop",
            Box::new(|f, n| unlimited.test_run(f, n).expect("run")),
            frame(7700, &short[..21]),
        ),
        (
            "bad magic -> drop",
            Box::new(|f, n| unlimited.test_run(f, n).expect("run")),
            frame(7700, &bad),
        ),
        (
            "known device, no limit -> pass",
            Box::new(|f, n| unlimited.test_run(f, n).expect("run")),
            known.clone(),
        ),
        (
            "known device, token bucket -> pass",
            Box::new(|f, n| bucketed.test_run(f, n).expect("run")),
            known.clone(),
        ),
        (
            "known device over its rate -> drop",
            Box::new(|f, n| limited.test_run(f, n).expect("run")),
            known.clone(),
        ),
    ];
    if with_model {
        cases.push((
            "known device, token bucket + int8 classifier -> pass",
            Box::new(|f, n| classifying.test_run(f, n).expect("run")),
            known.clone(),
        ));
    }
    let mut g = c.benchmark_group("xdp");
    g.sample_size(20).measurement_time(Duration::from_secs(2));
    for (name, run, f) in &cases {
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                // The kernel caps one test run's repeat count; split if needed.
                let mut left = iters;
                let mut total = Duration::ZERO;
                while left > 0 {
                    let n = left.min(1 << 20) as u32;
                    let (_, per) = run(f, n);
                    total += per * n;
                    left -= u64::from(n);
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, xdp);
criterion_main!(benches);
