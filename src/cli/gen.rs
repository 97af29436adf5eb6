//! `klais gen`: send generated device traffic (or a labeled scenario of the
//! traffic generator) to a klais, to load it or to exercise its filters.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use klais::gen as generator;

use super::{parse_secs, register_signals, usage_fail, Traffic};

#[derive(Args, Debug)]
pub(super) struct GenArgs {
    /// Where to send.
    #[arg(long, default_value = "127.0.0.1:7700")]
    to: SocketAddr,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10.0, value_parser = parse_secs)]
    duration: f64,
    /// Stop after this many datagrams.
    #[arg(long)]
    count: Option<u64>,
    /// Send a scenario of the traffic generator instead (normal, storm,
    /// flood, mixed: labeled devices, storms, floods, sweeps, replays) at its
    /// own pace, for at most --duration seconds.
    #[arg(long, value_name = "NAME")]
    scenario: Option<String>,
    /// Seed of --scenario.
    #[arg(long, default_value_t = 1)]
    scenario_seed: u64,
    /// Speed-up of --scenario (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    #[command(flatten)]
    traffic: Traffic,
}

/// Sends until done, --duration, --count or a signal; prints what was sent.
pub(super) fn run(args: &GenArgs) -> ExitCode {
    match &args.scenario {
        Some(name) => send_scenario(args, name),
        None => send_traffic(args),
    }
}

/// `--scenario NAME`: a preset of the scenario generator at its own pace.
fn send_scenario(args: &GenArgs, name: &str) -> ExitCode {
    let Some(spec) = klais::scenario::preset(name, args.scenario_seed) else {
        eprintln!(
            "error: --scenario {name:?}: one of {}",
            klais::scenario::PRESETS.join(", ")
        );
        return ExitCode::from(2);
    };
    let stop = Arc::new(AtomicBool::new(false));
    register_signals(&stop);
    match generator::run_scenario(
        spec,
        args.to,
        args.speed,
        Some(Duration::from_secs_f64(args.duration)),
        &stop,
    ) {
        Ok(r) => {
            let names = ["normal", "flood", "sweep", "replay", "malformed"];
            let parts: Vec<String> = names
                .iter()
                .zip(r.sent.iter())
                .map(|(n, c)| format!("{n} {c}"))
                .collect();
            eprintln!(
                "scenario {name} (seed {}): sent {} ({} send errors) in {:.2}s",
                args.scenario_seed,
                parts.join(", "),
                r.send_errors,
                r.elapsed_ns as f64 / 1e9
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: sending to {}: {e}", args.to);
            ExitCode::from(1)
        }
    }
}

/// The device traffic of the `Traffic` flags (protocol v1, or v2 with
/// --v2-keys).
fn send_traffic(args: &GenArgs) -> ExitCode {
    let mut spec = args.traffic.spec(args.to, Some(args.duration), args.count);
    match args.traffic.v2_keys() {
        Ok(k) => spec.v2_keys = k,
        Err(e) => return usage_fail(e),
    }
    let stop = Arc::new(AtomicBool::new(false));
    register_signals(&stop);
    match generator::run(&spec, &stop) {
        Ok(r) => {
            eprintln!(
                "sent {} valid + {} malformed datagrams ({} bytes, {} send errors) in {:.2}s: {:.0}/s",
                r.sent_valid,
                r.sent_malformed,
                r.bytes,
                r.send_errors,
                r.elapsed_ns as f64 / 1e9,
                (r.sent_valid + r.sent_malformed) as f64 / (r.elapsed_ns as f64 / 1e9).max(1e-9)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: sending to {}: {e}", args.to);
            ExitCode::from(1)
        }
    }
}
