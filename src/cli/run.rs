//! `klais run`: the appliance itself. Loads the configuration (and a core
//! map), starts the cores, prints live figures until a signal or
//! `--duration`, then drains and prints the summary. `klais demo` starts and
//! watches klais through the same steps.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use klais::config::Config;
use klais::runtime::{self, Running};

use super::{load_config, parse_secs, preflight, register_signals, runtime_fail};

#[derive(Args, Debug)]
pub(super) struct RunArgs {
    /// Configuration file (TOML). Default: the embedded config.toml.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Stop by itself after this many seconds (default: run until a signal).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    duration: Option<f64>,
    /// Print the running topology (cores, queues, rings, XDP) at start.
    /// `-v` prints it too.
    #[arg(long)]
    print_topology: bool,
    /// Place the cores by this core map (numa/*.toml); overrides cores.map.
    /// It is checked against the machine first and refused if it fails.
    #[arg(long, value_name = "FILE")]
    core_map: Option<PathBuf>,
}

/// `klais run`; `verbose` (-v) prints the topology as --print-topology does.
pub(super) fn run(args: &RunArgs, verbose: bool) -> ExitCode {
    let mut cfg = match load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(map) = &args.core_map {
        cfg.cores.map = Some(map.clone());
    }
    let running = match start(&cfg) {
        Ok(r) => r,
        Err(code) => return code,
    };
    announce(&running, &cfg, args.print_topology || verbose);
    wait_with_live_figures(
        &running,
        cfg.telemetry.stats_interval_ms,
        args.duration.map(Duration::from_secs_f64),
        None,
    );
    finish(running)
}

/// Starts klais on `cfg`, drops capabilities and says where the metrics
/// are. From its return on, SIGINT/SIGTERM stop klais with the usual drain;
/// so does a signal during start-up (which can wait seconds for the broker),
/// as soon as klais runs.
pub(super) fn start(cfg: &Config) -> Result<Running, ExitCode> {
    let (cfg, loaded) = preflight(cfg)?;
    let cfg = &cfg;
    let early = Arc::new(AtomicBool::new(false));
    register_signals(&early);
    let running = runtime::start_loaded(cfg, loaded).map_err(runtime_fail)?;
    if let Err(code) = after_start(&running, cfg) {
        // Stop cleanly: drain what was accepted, detach the filter.
        if let Err(e) = running.stop() {
            eprintln!("error: stopping: {e}");
        }
        return Err(code);
    }
    // Handlers first: once klais says it listens, a SIGTERM must drain.
    let stop = running.stop_flag();
    register_signals(&stop);
    if early.load(Ordering::Relaxed) {
        stop.store(true, Ordering::Relaxed);
    }
    Ok(running)
}

/// Once klais is up: drop capabilities (`privilege.drop_capabilities`) and
/// say where the metrics are. A failed drop stops klais: running with more
/// privilege than documented is not an option.
fn after_start(running: &Running, cfg: &Config) -> Result<(), ExitCode> {
    if cfg.privilege.drop_capabilities {
        match running.drop_capabilities() {
            Ok(kept) if kept.is_empty() => eprintln!("capabilities: none kept"),
            Ok(kept) => eprintln!("capabilities: kept only {}", kept.join(", ")),
            Err(e) => {
                eprintln!("error: {e}");
                return Err(ExitCode::from(1));
            }
        }
    }
    if let Some(a) = running.admin_addr() {
        eprintln!(
            "metrics: http://{a}/metrics (health /health, readiness /ready, admin API /admin/...)"
        );
    }
    Ok(())
}

/// Says what runs: the XDP filter (or its absence), the topology when asked,
/// the listening address, backend, placement and output.
fn announce(running: &Running, cfg: &Config, topology: bool) {
    match running.xdp() {
        Some((iface, mode, recovered)) => eprintln!(
            "XDP filter attached to {iface} ({mode} mode){}; detached when klais exits",
            recovered.map_or(String::new(), |id| format!(
                ", replacing klais program id {id} already there"
            ))
        ),
        None => {
            eprintln!("XDP: off (no xdp.iface configured); all filtering happens in user space")
        }
    }
    if topology {
        eprint!("{}", klais::report::topology_text(running, cfg));
    }
    eprintln!(
        "klais listening on {} ({} backend, {}); output: {}. Ctrl-C stops and drains.",
        running.local_addr(),
        cfg.ingest.backend.name(),
        running.placement(),
        cfg.output.sink.name()
    );
}

/// Prints a live line every `interval_ms` (none when 0) until klais stops,
/// `duration` passes, or `until` turns true.
pub(super) fn wait_with_live_figures(
    running: &Running,
    interval_ms: u64,
    duration: Option<Duration>,
    until: Option<&AtomicBool>,
) {
    let stop = running.stop_flag();
    let start = Instant::now();
    let interval = Duration::from_millis(if interval_ms == 0 { 1000 } else { interval_ms });
    let mut prev = running.snapshot();
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed)
        && !running.has_exited()
        && !duration.is_some_and(|d| start.elapsed() >= d)
        && !until.is_some_and(|u| u.load(Ordering::Relaxed))
    {
        std::thread::sleep(Duration::from_millis(20));
        if last.elapsed() >= interval {
            let now = running.snapshot();
            if interval_ms != 0 {
                let kafka = kafka_live(running);
                eprintln!(
                    "{}{kafka}",
                    klais::report::live_line(start.elapsed(), last.elapsed(), &prev, &now)
                );
            }
            prev = now;
            last = Instant::now();
        }
    }
}

/// The Kafka part of a live line (empty without Kafka output).
fn kafka_live(running: &Running) -> String {
    running.kafka_snapshot().map_or(String::new(), |k| {
        let dropped = k.dropped();
        format!(
            "  | kafka delivered {} in flight {} journal {} breaker {:?}{}",
            k.delivered,
            k.in_flight + k.buffered,
            k.journaled,
            k.breaker,
            if dropped > 0 {
                format!(" DROPPED {dropped}")
            } else {
                String::new()
            }
        )
    })
}

/// Stops and drains klais and prints the summary.
fn finish(running: Running) -> ExitCode {
    match running.stop() {
        Ok(summary) => {
            eprint!("{}", klais::report::summary_text(&summary));
            ExitCode::SUCCESS
        }
        Err(e) => runtime_fail(e),
    }
}
