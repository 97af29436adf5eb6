//! The `klais` command line: the parser, the command table and what several
//! commands share (logging, configuration errors, signals, generated
//! traffic). Each command lives in its own file beside this one, with its
//! arguments; `main` below only dispatches. Exit codes: 0 ok, 2 usage or
//! configuration error, 1 runtime failure (`klais bench`: 3 for loss).

mod bench;
mod config;
mod cores;
mod demo;
mod gen;
mod journal;
mod kafka;
mod keys;
mod model;
mod run;
mod simulate;
mod top;
mod version;
mod xdp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use klais::config::{Config, ConfigError};
use klais::gen::{self as generator, GenSpec};

#[derive(Parser, Debug)]
#[command(
    name = "klais",
    about = "klais: line-rate IoT telemetry ingestion (UDP devices -> pinned shard cores -> output)",
    long_about = "klais receives small UDP datagrams from IoT devices (magic 0xAA55, 16-byte device id, \
sequence, JSON payload), validates them, tracks each device's sequence, and hands every accepted \
message to an output stage on its own core.\n\n\
Start with `klais demo` to see it work on this machine, `klais run` to run it on the default \
configuration (config.toml, embedded), and `klais config check FILE` before deploying your own.",
    disable_version_flag = true
)]
struct Cli {
    /// More logging on standard error (-v info, -vv debug). KLAIS_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log format on standard error: text, or json (one object per line, for
    /// log shippers). KLAIS_LOG_FORMAT sets it too. Either way each log call
    /// site writes at most 10 lines per second (the rest are counted in
    /// /metrics as klais_log_lines_suppressed_total).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "KLAIS_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run klais: receive, validate, track and emit records until SIGINT/SIGTERM.
    ///
    /// Without --config it uses the embedded default configuration (the
    /// repository's config.toml: UDP port 7700, records to the Kafka topic
    /// klais-telemetry on 127.0.0.1:9092, spill journal in
    /// /var/lib/klais/journal). Live figures go to standard error every
    /// telemetry.stats_interval_ms; on SIGINT/SIGTERM klais drains what it
    /// accepted into Kafka (or the journal) and prints a summary of every
    /// counter.
    Run(run::RunArgs),
    /// Configuration files.
    #[command(subcommand)]
    Config(config::ConfigCmd),
    /// Send generated device traffic (protocol v1) to a klais.
    Gen(gen::GenArgs),
    /// Run klais on the embedded default with generated traffic on loopback and
    /// live figures, then check that every message sent was accounted for.
    Demo(demo::DemoArgs),
    /// The XDP filter: attach, detach, status, counters, benchmark.
    #[command(subcommand)]
    Xdp(xdp::XdpCmd),
    /// The machine's cores for placing klais: topology, NIC locality.
    #[command(subcommand)]
    Cores(cores::CoresCmd),
    /// Read klais's topic back (checks, demos).
    #[command(subcommand)]
    Kafka(kafka::KafkaCmd),
    /// The spill journal: what waits for the broker.
    #[command(subcommand)]
    Journal(journal::JournalCmd),
    /// The storm simulator: a seeded reconnection storm through the real Dam,
    /// PID controller and predictor, against the static-limit baseline; prints
    /// the KLAIS paper's Table 5.4 metrics and writes a PNG plot.
    Simulate(simulate::SimArgs),
    /// The models: train from the scenario generator, evaluate on the test
    /// split, load the classifier into a running XDP program.
    #[command(subcommand)]
    Model(model::ModelCmd),
    /// The benchmark harness: generated load against klais or the baselines,
    /// measured from the topic (throughput, loss, latency, CPU), JSON + PNG.
    #[command(subcommand)]
    Bench(Box<bench::BenchCmd>),
    /// Device keys for protocol v2.
    #[command(subcommand)]
    Keys(keys::KeysCmd),
    /// A live terminal view of a running klais from its /metrics: per-shard
    /// rates, verdicts, queues, latency, predictor state, broker health.
    Top(top::TopArgs),
    /// Print the version, commit and build profile.
    Version,
}

/// Parses the command line, sets up logging and runs the command.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_format);
    match cli.command {
        Command::Run(args) => run::run(&args, cli.verbose > 0),
        Command::Config(cmd) => config::run(cmd),
        Command::Gen(args) => gen::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Xdp(cmd) => xdp::run(cmd),
        Command::Cores(cmd) => cores::run(cmd),
        Command::Kafka(cmd) => kafka::run(cmd),
        Command::Journal(cmd) => journal::run(cmd),
        Command::Simulate(args) => simulate::run(&args),
        Command::Model(cmd) => model::run(cmd),
        Command::Bench(cmd) => bench::run(*cmd),
        Command::Keys(cmd) => keys::run(cmd),
        Command::Top(args) => top::run(&args),
        Command::Version => version::run(),
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn init_logging(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KLAIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let limit = || klais::telemetry::RateLimit::new(10);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(limit()),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(false)
                    .with_writer(std::io::stderr)
                    .with_filter(limit()),
            )
            .init(),
    }
}

/// Prints every configuration error; exit status 2.
fn config_errors(errs: &[ConfigError]) -> ExitCode {
    eprintln!(
        "configuration error{}:",
        if errs.len() > 1 { "s" } else { "" }
    );
    for e in errs {
        eprintln!("  - {e}");
    }
    ExitCode::from(2)
}

/// Reads every file `cfg` names, once ([`klais::runtime::preflight`]), and
/// applies its core map: the effective configuration and what was loaded.
/// Each error is printed with its key and fix and the result is exit status
/// 2; a core map's warnings are printed and the map is used.
fn preflight(cfg: &Config) -> Result<(Config, klais::runtime::Loaded), ExitCode> {
    use klais::runtime::PreflightError;
    let loaded = match klais::runtime::preflight(cfg) {
        Ok(l) => l,
        Err(errs) => {
            for e in &errs {
                match e {
                    PreflightError::CoreMapMisfit { path, problems } => {
                        print_core_map_problems(path, problems);
                        eprintln!(
                            "refusing core map {}: it does not fit this machine",
                            path.display()
                        );
                    }
                    e => eprintln!("error: {e}"),
                }
            }
            return Err(ExitCode::from(2));
        }
    };
    if let Some(m) = &loaded.core_map {
        print_core_map_problems(&m.path, &m.warnings);
    }
    match loaded.effective_config(cfg) {
        Ok(c) => Ok((c, loaded)),
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// A core map's problems, one line each, with the fix.
fn print_core_map_problems(path: &std::path::Path, problems: &[klais::cores::plan::Problem]) {
    for p in problems {
        eprintln!(
            "core map {}: {}: {}; fix: {}",
            path.display(),
            if p.error { "error" } else { "warning" },
            p.what,
            p.fix
        );
    }
}

/// The configuration of `--config` (default: the embedded one); errors are
/// printed and become exit status 2.
fn load_config(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errs| config_errors(&errs))
}

/// Prints a runtime failure; exit status 1.
fn runtime_fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(1)
}

/// Prints a usage error (a bad flag value or input file); exit status 2.
fn usage_fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

/// SIGINT/SIGTERM set `stop`; a second one exits at once (status 1).
fn register_signals(stop: &Arc<AtomicBool>) {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone());
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
}

/// A duration in seconds: finite, positive, at most a year.
fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v.is_finite() && v > 0.0 && v <= 365.0 * 86400.0 {
        Ok(v)
    } else {
        Err(format!("{s} is not a positive number of seconds"))
    }
}

// The generated traffic of `klais gen` and `klais demo` (no `///`: on an
// `Args` struct it would become help text).
#[derive(Args, Debug, Clone)]
struct Traffic {
    /// Number of devices (ids dev-00000000, dev-00000001, ...).
    #[arg(long, default_value_t = 10_000)]
    devices: u32,
    /// Datagrams per second (0: as fast as possible).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Payload bytes per datagram (JSON with the send time and sequence), 64..=65485.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(64..=65485))]
    payload_bytes: u16,
    /// Malformed datagrams per million (too short / bad magic / bad JSON in turn).
    #[arg(long, default_value_t = 0)]
    malformed_ppm: u32,
    /// Seed of the malformed choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Send protocol v2, authenticated with each device's key from this key
    /// file (`klais keys generate` writes one for the generated devices). With
    /// `klais demo`, klais takes the same file as `auth.keys`.
    #[arg(long, value_name = "FILE")]
    v2_keys: Option<PathBuf>,
}

/// The device keys of `--v2-keys`.
type V2Keys = Arc<Vec<klais::wire::DeviceKey>>;

impl Traffic {
    /// The v2 keys of `--v2-keys`, one per generated device; the error says
    /// what is wrong with the file.
    fn v2_keys(&self) -> Result<Option<V2Keys>, String> {
        let Some(path) = &self.v2_keys else {
            return Ok(None);
        };
        let table =
            klais::shard::auth::KeyTable::load(path).map_err(|e| format!("--v2-keys: {e}"))?;
        generator::keys_for_devices(&table, self.devices.max(1))
            .map(|k| Some(Arc::new(k)))
            .map_err(|e| format!("--v2-keys: {e}"))
    }

    /// The generator's spec for this traffic toward `to` (without v2 keys).
    fn spec(&self, to: SocketAddr, duration: Option<f64>, count: Option<u64>) -> GenSpec {
        GenSpec {
            v2_keys: None,
            target: to,
            devices: self.devices.max(1),
            rate_pps: self.rate,
            count,
            duration: duration.map(Duration::from_secs_f64),
            payload_bytes: usize::from(self.payload_bytes),
            malformed_ppm: self.malformed_ppm,
            seed: self.seed,
        }
    }
}
