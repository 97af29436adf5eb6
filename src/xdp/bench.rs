//! `klais xdp bench`: the cost of each verdict path of the XDP filter,
//! measured in the kernel through `BPF_PROG_TEST_RUN` with `repeat` (the
//! kernel reports the average ns per run), next to an empty XDP program
//! measured the same way, so figures can be read net of the harness.
//!
//! Frames are 200-byte v1 datagrams (22-byte header, 178-byte JSON payload)
//! in IPv4/UDP/Ethernet, the size the user-space figures use.

use std::time::Duration;

use super::frame::{self, UdpFrame};
use super::{EmptyProgram, Limits, LoadOptions, Rate, Verdict, XdpError, XdpProgram};
use crate::wire;

/// One measured path.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRow {
    /// What the packet is.
    pub path: &'static str,
    /// The verdict it gets (None for the empty program).
    pub verdict: Option<Verdict>,
    /// Median over rounds of the kernel's average ns per run.
    pub ns: f64,
}

fn payload(id: &str) -> Vec<u8> {
    let mut body = br#"{"ts_ns":1764000000000000000,"seq":1,"temp":21.5,"pad":""#.to_vec();
    while body.len() < 178 - 2 {
        body.push(b'x');
    }
    body.extend_from_slice(b"\"}");
    let mut b = vec![0u8; wire::HEADER_LEN + body.len()];
    let _ = wire::encode(id, 1, &body, &mut b);
    b
}

fn udp_frame(port: u16, payload: &[u8]) -> Vec<u8> {
    frame::udp(&UdpFrame {
        dst_port: port,
        payload,
        ..Default::default()
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn measure(
    mut f: impl FnMut() -> Result<(u32, Duration), XdpError>,
    rounds: u32,
) -> Result<(u32, f64), XdpError> {
    // One warm-up run (creates buckets, warms caches).
    let (action, _) = f()?;
    let mut ns = Vec::new();
    for _ in 0..rounds {
        ns.push(f()?.1.as_nanos() as f64);
    }
    Ok((action, median(ns)))
}

/// Measures every path. Needs root. With `redirect_iface`, an AF_XDP socket is
/// opened on its queue 0 and bound in a program's XSKMAP, so the known-device
/// path is also measured all the way to `XDP_REDIRECT` — on kernels that
/// allow the XDP metadata area ([`super::kernel_allows_xdp_meta`]); where the
/// mark goes in a frame prefix those rows are left out (the prefix would
/// accumulate across `BPF_PROG_TEST_RUN` repeats).
///
/// With `model`, the known-device path is also measured with the int8
/// classifier on (every class's action set to pass, so each run goes through
/// features, inference and on to the same exit as without it).
pub fn run(
    repeat: u32,
    rounds: u32,
    redirect_iface: Option<&str>,
    model: Option<&crate::model::classifier::ClassifierFile>,
) -> Result<Vec<BenchRow>, XdpError> {
    let port = 7700;
    let opts = LoadOptions::default();
    let unlimited = XdpProgram::load(&opts, &Limits::default())?;
    let bucketed = XdpProgram::load(
        &opts,
        &Limits {
            device: Some(Rate::new(1_000_000_000, 1_000_000_000)?),
            ..Limits::default()
        },
    )?;
    let limited = XdpProgram::load(
        &opts,
        &Limits {
            device: Some(Rate::new(1, 1)?),
            ..Limits::default()
        },
    )?;
    let denying = XdpProgram::load(&opts, &Limits::default())?;
    let bucket_limits = Limits {
        device: Some(Rate::new(1_000_000_000, 1_000_000_000)?),
        ..Limits::default()
    };
    let all_pass = model.map(|m| {
        let mut m = m.clone();
        m.actions = [crate::model::classifier::Action::Pass; 4];
        m
    });
    let classifying = match &all_pass {
        Some(m) => {
            let p = XdpProgram::load(&opts, &bucket_limits)?;
            p.maps().set_model(Some(m))?;
            Some(p)
        }
        None => None,
    };
    let empty = EmptyProgram::load()?;
    denying.maps().set_denied(
        wire::device_hash(&wire::raw_device_id("banned-device").unwrap_or([0; 16])),
        true,
    )?;

    let known = udp_frame(port, &payload("dev-00000042"));
    let mut bad_magic = payload("dev-00000042");
    bad_magic[0] = 0x12;
    let mut cases: Vec<(&'static str, &XdpProgram, Vec<u8>)> = vec![
        (
            "UDP to another port (not klais) -> pass",
            &unlimited,
            udp_frame(53, &payload("x")),
        ),
        (
            "payload of 21 bytes -> drop too_short",
            &unlimited,
            udp_frame(port, &payload("x")[..21]),
        ),
        ("bad magic -> drop", &unlimited, udp_frame(port, &bad_magic)),
        (
            "device on the deny list -> drop",
            &denying,
            udp_frame(port, &payload("banned-device")),
        ),
        (
            "known device, policy map in use -> XSKMAP lookup -> pass",
            &denying,
            known.clone(),
        ),
        (
            "known device, no device limit -> XSKMAP lookup -> pass",
            &unlimited,
            known.clone(),
        ),
        (
            "known device, token bucket (CAS) -> XSKMAP lookup -> pass",
            &bucketed,
            known.clone(),
        ),
        (
            "known device over its rate -> drop rate_limited",
            &limited,
            known.clone(),
        ),
    ];
    if let Some(p) = &classifying {
        cases.push((
            "known device, token bucket + int8 classifier -> XSKMAP lookup -> pass",
            p,
            known.clone(),
        ));
    }
    // The socket is kept alive until the measurements are done.
    let (_xsk, redirecting, redirect_classifying) =
        redirect_programs(&opts, redirect_iface, &bucket_limits, all_pass.as_ref())?;
    if let Some(prog) = &redirecting {
        cases.push((
            "known device, token bucket (CAS) -> XSKMAP hit -> redirect",
            prog,
            known.clone(),
        ));
    }
    // The same with the classifier on (its mark written in the metadata);
    // queue 1 of the interface, as queue 0 holds the first socket.
    // The same with the classifier on (its mark written in the metadata),
    // the same socket bound in this program's XSKMAP too.
    if let Some(prog) = &redirect_classifying {
        cases.push((
            "known device, token bucket + int8 classifier -> redirect",
            prog,
            known.clone(),
        ));
    }
    measure_cases(&empty, &known, cases, repeat, rounds)
}

/// With `iface`, an AF_XDP socket on its queue 0 and the programs that
/// redirect to it: token bucket only, and with the classifier (when given),
/// the same socket bound in both programs' XSKMAPs.
#[allow(clippy::type_complexity)]
fn redirect_programs(
    opts: &LoadOptions,
    iface: Option<&str>,
    bucket_limits: &Limits,
    all_pass: Option<&crate::model::classifier::ClassifierFile>,
) -> Result<
    (
        Option<crate::ingest::af_xdp::XskSocket>,
        Option<XdpProgram>,
        Option<XdpProgram>,
    ),
    XdpError,
> {
    // On a kernel that marks by prefix, BPF_PROG_TEST_RUN keeps the context
    // between repeats: the prefix one run pushes stays for the next, which
    // then parses as not-klais. Those rows would measure the wrong path.
    let Some(iface) = iface.filter(|_| super::kernel_allows_xdp_meta()) else {
        return Ok((None, None, None));
    };
    let prog = XdpProgram::load(
        opts,
        &Limits {
            device: Some(Rate::new(1_000_000_000, 1_000_000_000)?),
            ..Limits::default()
        },
    )?;
    let mut sock = crate::ingest::af_xdp::XskSocket::open(
        iface,
        0,
        &crate::ingest::af_xdp::XskConfig::default(),
    )
    .map_err(|e| XdpError::Io {
        what: format!("opening an AF_XDP socket on {iface} queue 0"),
        source: std::io::Error::other(e.to_string()),
    })?;
    prog.maps().bind_xsk(0, &mut sock)?;
    let classifying = match all_pass {
        Some(m) => {
            let p = XdpProgram::load(opts, bucket_limits)?;
            p.maps().set_model(Some(m))?;
            p.maps().bind_xsk(0, &mut sock)?;
            Some(p)
        }
        None => None,
    };
    Ok((Some(sock), Some(prog), classifying))
}

/// The harness cost (an empty program), then every case with the verdict it
/// counted most.
fn measure_cases(
    empty: &EmptyProgram,
    known: &[u8],
    cases: Vec<(&'static str, &XdpProgram, Vec<u8>)>,
    repeat: u32,
    rounds: u32,
) -> Result<Vec<BenchRow>, XdpError> {
    let mut rows = Vec::new();
    let (_, ns) = measure(|| empty.test_run(known, repeat), rounds)?;
    rows.push(BenchRow {
        path: "empty XDP program (harness cost)",
        verdict: None,
        ns,
    });
    for (path, prog, frame) in cases {
        let before = prog.maps().counters()?;
        let (_, ns) = measure(|| prog.test_run(&frame, repeat), rounds)?;
        let after = prog.maps().counters()?;
        let verdict = Verdict::ALL
            .iter()
            .copied()
            .max_by_key(|&v| after.get(v) - before.get(v));
        rows.push(BenchRow { path, verdict, ns });
    }
    Ok(rows)
}

/// The table `klais xdp bench` prints.
pub fn table(rows: &[BenchRow], repeat: u32) -> String {
    let base = rows.first().map_or(0.0, |r| r.ns);
    let mut t = format!(
        "BPF_PROG_TEST_RUN, {repeat} runs per measurement, median of rounds; 200-byte v1 datagram in IPv4/UDP\n\
         {:<62} {:>14} {:>10} {:>12}\n",
        "path", "verdict", "ns/pkt", "over empty"
    );
    for r in rows {
        t.push_str(&format!(
            "{:<62} {:>14} {:>10.1} {:>12}\n",
            r.path,
            r.verdict.map_or("-", Verdict::name),
            r.ns,
            if r.verdict.is_some() {
                format!("{:+.1}", r.ns - base)
            } else {
                "0".to_string()
            }
        ));
    }
    t
}
