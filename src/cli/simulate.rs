//! `klais simulate`: the storm simulator. A seeded reconnection storm runs
//! through the real Dam, PID controller and predictor (and optionally the
//! window model) against the static-limit baseline; prints the KLAIS paper's
//! Table 5.4 metrics and writes a PNG plot.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use klais::sim::{self, Variant};

#[derive(Args, Debug)]
pub(super) struct SimArgs {
    /// Seed (same seed, same output).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Devices.
    #[arg(long, default_value_t = 10_000)]
    devices: u32,
    /// Messages per second per device (Poisson).
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Seconds the network is away.
    #[arg(long, default_value_t = 30.0)]
    outage: f64,
    /// Share of devices reconnecting with their backlog, 0-1.
    #[arg(long, default_value_t = 1.0)]
    share: f64,
    /// Reconnections spread over this many seconds.
    #[arg(long, default_value_t = 0.5)]
    jitter: f64,
    /// Messages a device holds while offline.
    #[arg(long, default_value_t = 100)]
    backlog: u32,
    /// Messages per second a device flushes its backlog at.
    #[arg(long, default_value_t = 200.0)]
    flush_rate: f64,
    /// Downstream capacity, messages per second.
    #[arg(long, default_value_t = 500_000.0)]
    capacity: f64,
    /// Also run klais with this window model deciding storms (GGML Q4_0),
    /// e.g. models/window.json.
    #[arg(long, value_name = "FILE")]
    window: Option<PathBuf>,
    /// The PNG plot (backlog and admitted rate over time).
    #[arg(long, default_value = "storm.png")]
    plot: PathBuf,
}

/// Runs every variant on the scenario, prints the table, writes the plot.
pub(super) fn run(a: &SimArgs) -> ExitCode {
    let sc = sim::Scenario {
        seed: a.seed,
        devices: a.devices,
        rate_per_device: a.rate,
        outage_s: a.outage,
        reconnect_share: a.share,
        reconnect_jitter_s: a.jitter,
        backlog_max: a.backlog,
        flush_rate: a.flush_rate,
        capacity: a.capacity,
        ..sim::Scenario::default()
    };
    if !(0.0..=1.0).contains(&sc.reconnect_share) || sc.devices == 0 || sc.capacity <= 0.0 {
        eprintln!("error: --share must be 0-1, --devices and --capacity above 0");
        return ExitCode::from(2);
    }
    let window = match a
        .window
        .as_deref()
        .map(klais::model::load_window)
        .transpose()
    {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: --window: {e}");
            return ExitCode::from(2);
        }
    };
    let mut variants = vec![Variant::Klais];
    if window.is_some() {
        variants.push(Variant::KlaisWindow);
    }
    variants.extend([Variant::KlaisNoPrediction, Variant::Baseline]);
    let outs: Vec<_> = variants
        .into_iter()
        .map(|v| {
            sim::run_with(
                &sc,
                v,
                sim::Extras {
                    window: window.as_ref(),
                    ..sim::Extras::default()
                },
            )
        })
        .collect();
    print!("{}", sim::table(&sc, &outs));
    match sim::plot(&sc, &outs, &a.plot) {
        Ok(()) => {
            println!("plot: {}", a.plot.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: writing {}: {e}", a.plot.display());
            ExitCode::from(1)
        }
    }
}
