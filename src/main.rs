//! The `klais` command line. Exit codes: 0 ok, 2 usage or configuration error,
//! 1 runtime failure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use klais::config::{Config, ConfigError, SinkKind};
use klais::gen::{self, GenSpec};
use klais::runtime::{self, Running};

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
    Run(RunArgs),
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Send generated device traffic (protocol v1) to a klais.
    Gen(GenArgs),
    /// Run klais on the embedded default with generated traffic on loopback and
    /// live figures, then check that every message sent was accounted for.
    Demo(DemoArgs),
    /// The XDP filter: attach, detach, status, counters, benchmark.
    #[command(subcommand)]
    Xdp(XdpCmd),
    /// The machine's cores for placing klais: topology, NIC locality.
    #[command(subcommand)]
    Cores(CoresCmd),
    /// Read klais's topic back (checks, demos).
    #[command(subcommand)]
    Kafka(KafkaCmd),
    /// The spill journal: what waits for the broker.
    #[command(subcommand)]
    Journal(JournalCmd),
    /// The storm simulator: a seeded reconnection storm through the real Dam,
    /// PID controller and predictor, against the static-limit baseline; prints
    /// the KLAIS paper's Table 5.4 metrics and writes a PNG plot.
    Simulate(SimArgs),
    /// The models: train from the scenario generator, evaluate on the test
    /// split, load the classifier into a running XDP program.
    #[command(subcommand)]
    Model(klais::model::cli::ModelCmd),
    /// The benchmark harness: generated load against klais or the baselines,
    /// measured from the topic (throughput, loss, latency, CPU), JSON + PNG.
    #[command(subcommand)]
    Bench(Box<klais::bench::cli::BenchCmd>),
    /// Device keys for protocol v2.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// A live terminal view of a running klais from its /metrics: per-shard
    /// rates, verdicts, queues, latency, predictor state, broker health.
    Top {
        /// The admin server of the klais to watch (admin.listen).
        #[arg(long, default_value = "127.0.0.1:9464")]
        addr: SocketAddr,
        /// Seconds between scrapes.
        #[arg(long, default_value = "1", value_parser = parse_secs)]
        interval: f64,
        /// Print one frame as plain text and exit (no terminal needed).
        #[arg(long)]
        once: bool,
    },
    /// Print the version, commit and build profile.
    Version,
}

#[derive(Subcommand, Debug)]
enum CoresCmd {
    /// The topology as a tree: packages, NUMA nodes, cores and their SMT
    /// siblings, online / isolated / nohz_full CPUs, and with --iface the NIC's
    /// NUMA node, receive queues and their IRQs' affinity. HWLOC_XMLFILE=FILE
    /// shows a topology saved with `lstopo --of xml` instead of this machine's.
    Show {
        /// Also show this NIC's locality.
        #[arg(long)]
        iface: Option<String>,
        /// Print JSON for scripts instead of the tree.
        #[arg(long)]
        json: bool,
    },
    /// Plan a core map: shards on the NIC's node, one per receive queue, each
    /// on its own physical core; batcher and control on another core of the
    /// same node; CPU 0 left alone when there is room. Prints the map with the
    /// reason for each choice, or writes it with --write.
    Plan {
        /// The NIC the shards serve (its NUMA node and queue count).
        #[arg(long)]
        iface: Option<String>,
        /// Shards (default: one per receive queue).
        #[arg(long)]
        shards: Option<usize>,
        /// For a host described by HWLOC_XMLFILE: the NIC's NUMA node.
        #[arg(long)]
        nic_node: Option<usize>,
        /// For a host described by HWLOC_XMLFILE: the NIC's receive queues.
        #[arg(long)]
        queues: Option<usize>,
        /// Write the map to this file (e.g. numa/myhost.toml).
        #[arg(long, value_name = "FILE")]
        write: Option<PathBuf>,
    },
    /// Show each receive queue's IRQ, its affinity and the CPU of the shard
    /// that owns the queue; with --apply, pin each IRQ to that CPU (root).
    Irq {
        /// The NIC.
        #[arg(long)]
        iface: String,
        /// The core map whose shards own the queues (default: a fresh plan).
        #[arg(long, value_name = "FILE")]
        core_map: Option<PathBuf>,
        /// Write the affinities.
        #[arg(long)]
        apply: bool,
    },
    /// Check a core map against this machine (or HWLOC_XMLFILE): CPUs exist
    /// and are online, shards match queues, NUMA locality, SMT siblings.
    /// Prints each problem with its fix; exit 2 when any is an error.
    Check {
        /// The map.
        file: PathBuf,
        /// The NIC the shards serve.
        #[arg(long)]
        iface: Option<String>,
        /// For a host described by HWLOC_XMLFILE: the NIC's NUMA node.
        #[arg(long)]
        nic_node: Option<usize>,
        /// For a host described by HWLOC_XMLFILE: the NIC's receive queues.
        #[arg(long)]
        queues: Option<usize>,
    },
}

/// Checks a core map against this machine and the configured interface, and
/// applies it to the configuration; refuses (exit 2) a map with errors.
fn apply_core_map(cfg: &mut Config, path: &std::path::Path) -> Result<(), ExitCode> {
    let map = klais::cores::plan::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    let topo = klais::cores::discover().map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(1)
    })?;
    let nic = cfg
        .xdp
        .iface
        .as_deref()
        .map(klais::cores::nic_info)
        .transpose()
        .map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(1)
        })?;
    let problems = klais::cores::plan::check(&map, &topo, nic.as_ref());
    for p in &problems {
        eprintln!(
            "core map {}: {}: {}; fix: {}",
            path.display(),
            if p.error { "error" } else { "warning" },
            p.what,
            p.fix
        );
    }
    if problems.iter().any(|p| p.error) {
        eprintln!(
            "refusing core map {}: it does not fit this machine",
            path.display()
        );
        return Err(ExitCode::from(2));
    }
    cfg.ingest.shards = map.shards.len() as u16;
    cfg.cores.shard_cpus = Some(map.shards.iter().map(|s| s.cpu).collect());
    cfg.cores.output_cpu = Some(map.batcher_cpu);
    cfg.cores.map = None;
    if let Err(errs) = cfg.validate() {
        return Err(config_errors(&errs));
    }
    Ok(())
}

/// The topology (this machine, or HWLOC_XMLFILE) and the NIC to plan or
/// check for; a failure is reported and becomes exit status 1.
fn topology_and_nic(
    iface: Option<&str>,
    nic_node: Option<usize>,
    queues: Option<usize>,
) -> Result<(klais::cores::HostTopology, Option<klais::cores::NicInfo>), ExitCode> {
    let topo = klais::cores::discover().map_err(runtime_fail)?;
    let nic = nic_for(iface, nic_node, queues).map_err(runtime_fail)?;
    Ok((topo, nic))
}

/// The NIC to plan or check for: a real interface, or one described by flags.
fn nic_for(
    iface: Option<&str>,
    nic_node: Option<usize>,
    queues: Option<usize>,
) -> Result<Option<klais::cores::NicInfo>, klais::xdp::XdpError> {
    match iface {
        Some(i) => {
            let mut n = klais::cores::nic_info(i)?;
            if nic_node.is_some() {
                n.numa_node = nic_node;
            }
            if let Some(q) = queues {
                n.rx_queues = q;
            }
            Ok(Some(n))
        }
        None if nic_node.is_some() || queues.is_some() => Ok(Some(klais::cores::NicInfo {
            iface: "nic".into(),
            numa_node: nic_node,
            rx_queues: queues.unwrap_or(0),
            irqs: Vec::new(),
        })),
        None => Ok(None),
    }
}

#[derive(Subcommand, Debug)]
enum XdpCmd {
    /// Load the filter with the configuration's [xdp] settings and attach it
    /// to an interface, leaving it attached (maps pinned under
    /// /sys/fs/bpf/klais/IFACE) until `klais xdp detach`. `klais run` with
    /// xdp.iface attaches by itself and detaches when it exits.
    Attach {
        /// Interface.
        #[arg(long)]
        iface: String,
        /// native, generic or auto. Default: the configuration's xdp.mode.
        #[arg(long)]
        mode: Option<klais::xdp::AttachMode>,
        /// Configuration file for ports, rates and limits. Default: embedded.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Detach klais's filter from an interface and remove its pinned maps
    /// (also cleans up after a klais that died while attached). Never touches
    /// an XDP program klais did not attach.
    Detach {
        /// Interface.
        #[arg(long)]
        iface: String,
    },
    /// What XDP program is attached to an interface, in which mode, whether it
    /// is klais's, and its limits.
    Status {
        /// Interface.
        #[arg(long)]
        iface: String,
    },
    /// The filter's per-verdict counters, summed over CPUs.
    Stats {
        /// Interface.
        #[arg(long)]
        iface: String,
        /// Print again every SECS seconds with rates, until Ctrl-C.
        #[arg(long, value_name = "SECS", value_parser = parse_secs)]
        watch: Option<f64>,
    },
    /// Measure each verdict path in the kernel through BPF_PROG_TEST_RUN
    /// (ns per packet), next to an empty XDP program measured the same way.
    Bench {
        /// Runs per path (the kernel reports the average).
        #[arg(long, default_value_t = 2_000_000)]
        repeat: u32,
        /// Measurements per path; the median is reported.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Also measure the redirect path: bind an AF_XDP socket on queue 0 of
        /// this interface (e.g. a veth end) into the program's XSKMAP.
        #[arg(long, value_name = "IFACE")]
        redirect_iface: Option<String>,
        /// Also measure the known-device paths with this int8 classifier on
        /// (every class passed, so the exit is the same as without it).
        #[arg(long, value_name = "FILE")]
        model: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
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

#[derive(Args, Debug)]
struct SimArgs {
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

#[derive(Subcommand, Debug)]
enum KafkaCmd {
    /// Read the topic from the beginning of every partition (no offsets are
    /// committed): print the first records with key, partition and headers,
    /// then the count and per-device order check.
    Consume {
        /// Bootstrap brokers. Default: output.kafka.brokers of --config.
        #[arg(long)]
        brokers: Option<String>,
        /// Topic. Default: output.kafka.topic of --config.
        #[arg(long)]
        topic: Option<String>,
        /// Configuration file to take brokers and topic from.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<u64>,
        /// Records to print.
        #[arg(long, default_value_t = 3)]
        show: usize,
        /// Stop when nothing arrived for this many seconds.
        #[arg(long, default_value_t = 3.0, value_parser = parse_secs)]
        idle: f64,
    },
}

#[derive(Subcommand, Debug)]
enum JournalCmd {
    /// Records waiting in the spill journal (read only; klais may be running).
    Stat {
        /// Journal directory. Default: output.kafka.journal.dir of --config.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Configuration file to take the directory from.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Check a configuration file and print the effective configuration, or
    /// every error found (each naming its key and the fix). Exit 2 on errors.
    Check {
        /// The file to check. Default: the embedded config.toml.
        file: Option<PathBuf>,
    },
    /// Print the embedded default configuration, with its comments.
    Default,
}

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

#[derive(Args, Debug)]
struct GenArgs {
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

/// `klais keys …`
#[derive(Subcommand, Debug)]
enum KeysCmd {
    /// Write a key file (mode 600) with a random 128-bit key for each of the
    /// generated devices dev-00000000 … (for `auth.keys` and `klais gen
    /// --v2-keys`). Refuses to overwrite a file.
    Generate {
        /// Number of devices.
        #[arg(long, default_value_t = 10_000)]
        devices: u32,
        /// The key file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Seconds of traffic.
    #[arg(long, default_value_t = 10.0, value_parser = parse_secs)]
    duration: f64,
    /// Where records go (JSON lines). Default: Kafka with --brokers, else
    /// discard after counting.
    #[arg(long, value_name = "FILE", conflicts_with = "brokers")]
    output: Option<PathBuf>,
    /// Deliver to this Kafka broker (scripts/demo.sh starts one), then read the
    /// topic back.
    #[arg(long, value_name = "HOST:PORT")]
    brokers: Option<String>,
    /// Topic for --brokers.
    #[arg(long, default_value = "klais-demo")]
    topic: String,
    #[command(flatten)]
    traffic: Traffic,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_format);
    match cli.command {
        Command::Version => {
            println!("{}", klais::version_string());
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCmd::Default) => {
            print!("{}", klais::config::DEFAULT_CONFIG_TOML);
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCmd::Check { file }) => match Config::load(file.as_deref()) {
            Ok(cfg) => {
                let origin = file.map_or_else(
                    || "embedded default".to_string(),
                    |f| f.display().to_string(),
                );
                println!("# {origin}: OK. Effective configuration:");
                print!("{}", cfg.to_toml());
                ExitCode::SUCCESS
            }
            Err(errs) => config_errors(&errs),
        },
        Command::Run(args) => {
            let mut cfg = match Config::load(args.config.as_deref()) {
                Ok(c) => c,
                Err(errs) => return config_errors(&errs),
            };
            if let Some(map) = args.core_map.clone().or_else(|| cfg.cores.map.clone()) {
                if let Err(code) = apply_core_map(&mut cfg, &map) {
                    return code;
                }
            }
            run(
                &cfg,
                args.duration.map(Duration::from_secs_f64),
                None,
                args.print_topology || cli.verbose > 0,
            )
        }
        Command::Gen(args) if args.scenario.is_some() => {
            let name = args.scenario.clone().unwrap_or_default();
            let Some(spec) = klais::scenario::preset(&name, args.scenario_seed) else {
                eprintln!(
                    "error: --scenario {name:?}: one of {}",
                    klais::scenario::PRESETS.join(", ")
                );
                return ExitCode::from(2);
            };
            let stop = Arc::new(AtomicBool::new(false));
            register_signals(&stop);
            match gen::run_scenario(
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
        Command::Gen(args) => {
            let mut spec = spec_from(&args.traffic, args.to, Some(args.duration), args.count);
            match v2_keys(&args.traffic) {
                Ok(k) => spec.v2_keys = k,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
            let stop = Arc::new(AtomicBool::new(false));
            register_signals(&stop);
            match gen::run(&spec, &stop) {
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
        Command::Demo(args) => demo(args),
        Command::Model(cmd) => klais::model::cli::run(cmd),
        Command::Bench(cmd) => klais::bench::cli::run(*cmd),
        Command::Keys(KeysCmd::Generate { devices, out }) => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt;
            let text = match gen::generate_keys(devices) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: reading random bytes: {e}");
                    return ExitCode::from(1);
                }
            };
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out);
            match file.and_then(|mut f| f.write_all(text.as_bytes())) {
                Ok(()) => {
                    eprintln!(
                        "wrote {devices} device keys to {} (mode 600): set auth.keys to it; `klais gen --v2-keys {}` sends as those devices",
                        out.display(),
                        out.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}: {e} (it must not exist yet)", out.display());
                    ExitCode::from(1)
                }
            }
        }
        Command::Top {
            addr,
            interval,
            once,
        } => match klais::top::run(addr, Duration::from_secs_f64(interval), once) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Command::Simulate(a) => {
            let sc = klais::sim::Scenario {
                seed: a.seed,
                devices: a.devices,
                rate_per_device: a.rate,
                outage_s: a.outage,
                reconnect_share: a.share,
                reconnect_jitter_s: a.jitter,
                backlog_max: a.backlog,
                flush_rate: a.flush_rate,
                capacity: a.capacity,
                ..klais::sim::Scenario::default()
            };
            if !(0.0..=1.0).contains(&sc.reconnect_share) || sc.devices == 0 || sc.capacity <= 0.0 {
                eprintln!("error: --share must be 0-1, --devices and --capacity above 0");
                return ExitCode::from(2);
            }
            use klais::sim::Variant;
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
                    klais::sim::run_with(
                        &sc,
                        v,
                        klais::sim::Extras {
                            window: window.as_ref(),
                            ..klais::sim::Extras::default()
                        },
                    )
                })
                .collect();
            print!("{}", klais::sim::table(&sc, &outs));
            match klais::sim::plot(&sc, &outs, &a.plot) {
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
        Command::Kafka(KafkaCmd::Consume {
            brokers,
            topic,
            config,
            count,
            show,
            idle,
        }) => {
            let cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(errs) => return config_errors(&errs),
            };
            let brokers = brokers.unwrap_or(cfg.output.kafka.brokers);
            let topic = topic.unwrap_or(cfg.output.kafka.topic);
            kafka_consume(&brokers, &topic, count, show, idle)
        }
        Command::Journal(JournalCmd::Stat { dir, config }) => {
            let cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(errs) => return config_errors(&errs),
            };
            let dir = dir.unwrap_or(cfg.output.kafka.journal.dir);
            match klais::kafka::journal::read_all(&dir) {
                Ok(recs) => {
                    let bytes: usize = recs.iter().map(|(_, p)| p.len()).sum();
                    let devices: std::collections::HashSet<_> =
                        recs.iter().map(|(m, _)| m.raw_id).collect();
                    println!(
                        "{}: {} records ({} payload bytes) from {} devices waiting for delivery",
                        dir.display(),
                        recs.len(),
                        bytes,
                        devices.len()
                    );
                    if let (Some(f), Some(l)) = (recs.first(), recs.last()) {
                        println!(
                            "  first: {} seq {}; last: {} seq {}",
                            f.0.device_id(),
                            f.0.sequence,
                            l.0.device_id(),
                            l.0.sequence
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("{}: no journal (nothing ever spilled)", dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: reading {}: {e}", dir.display());
                    ExitCode::from(1)
                }
            }
        }
        Command::Xdp(cmd) => xdp_cmd(cmd),
        Command::Cores(CoresCmd::Plan {
            iface,
            shards,
            nic_node,
            queues,
            write,
        }) => {
            let (topo, nic) = match topology_and_nic(iface.as_deref(), nic_node, queues) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let host = write
                .as_ref()
                .and_then(|w| w.file_stem())
                .map_or(topo.source.clone(), |s| s.to_string_lossy().into_owned());
            match klais::cores::plan::plan(&topo, nic.as_ref(), shards, &host) {
                Ok(p) => {
                    let text = p.to_toml();
                    match write {
                        Some(path) => match std::fs::write(&path, &text) {
                            Ok(()) => {
                                println!("wrote {}", path.display());
                                ExitCode::SUCCESS
                            }
                            Err(e) => runtime_fail(format!("cannot write {}: {e}", path.display())),
                        },
                        None => {
                            print!("{text}");
                            ExitCode::SUCCESS
                        }
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Cores(CoresCmd::Check {
            file,
            iface,
            nic_node,
            queues,
        }) => {
            let map = match klais::cores::plan::load(&file) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let (topo, nic) = match topology_and_nic(iface.as_deref(), nic_node, queues) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let problems = klais::cores::plan::check(&map, &topo, nic.as_ref());
            for p in &problems {
                println!(
                    "{}: {}; fix: {}",
                    if p.error { "error" } else { "warning" },
                    p.what,
                    p.fix
                );
            }
            if problems.iter().any(|p| p.error) {
                ExitCode::from(2)
            } else {
                println!("{}: OK for {}", file.display(), topo.source);
                ExitCode::SUCCESS
            }
        }
        Command::Cores(CoresCmd::Irq {
            iface,
            core_map,
            apply,
        }) => {
            let nic = match klais::cores::nic_info(&iface) {
                Ok(n) => n,
                Err(e) => return runtime_fail(e),
            };
            let map = match core_map {
                Some(path) => match klais::cores::plan::load(&path) {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => {
                    let topo = match klais::cores::discover() {
                        Ok(t) => t,
                        Err(e) => return runtime_fail(e),
                    };
                    match klais::cores::plan::plan(&topo, Some(&nic), None, &topo.source) {
                        Ok(p) => p.map,
                        Err(e) => {
                            eprintln!("error: {e}");
                            return ExitCode::from(2);
                        }
                    }
                }
            };
            let placements = klais::cores::plan::irq_placements(&nic, &map);
            if placements.is_empty() {
                println!("{iface} exposes no queue interrupts (a virtual device?): nothing to pin");
                return ExitCode::SUCCESS;
            }
            let mut failed = false;
            for p in &placements {
                let want = p
                    .shard_cpu
                    .map_or("no shard".to_string(), |c| format!("CPU {c}"));
                print!(
                    "queue {:>3}  irq {:>4}  {:<24} affinity {:<10} shard {}",
                    p.queue,
                    p.irq,
                    p.name,
                    klais::cores::list(&p.current),
                    want
                );
                match (apply, p.shard_cpu) {
                    (true, Some(cpu)) => match klais::cores::plan::set_irq_affinity(p.irq, cpu) {
                        Ok(()) => println!("  -> set"),
                        Err(e) => {
                            failed = true;
                            println!("  -> not set: {e} (needs root; managed IRQs refuse)");
                        }
                    },
                    _ => println!(),
                }
            }
            if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Cores(CoresCmd::Show { iface, json }) => {
            let topo = match klais::cores::discover() {
                Ok(t) => t,
                Err(e) => return runtime_fail(e),
            };
            let nic = match iface.as_deref().map(klais::cores::nic_info).transpose() {
                Ok(n) => n,
                Err(e) => return runtime_fail(e),
            };
            if json {
                let v = serde_json::json!({ "topology": topo, "nic": nic });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", klais::cores::tree_text(&topo, nic.as_ref()));
            }
            ExitCode::SUCCESS
        }
    }
}

fn runtime_fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(1)
}

fn xdp_cmd(cmd: XdpCmd) -> ExitCode {
    use klais::xdp;
    match cmd {
        XdpCmd::Attach {
            iface,
            mode,
            config,
        } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(errs) => return config_errors(&errs),
            };
            let opts = xdp::LoadOptions {
                ports: cfg.xdp.effective_ports(&cfg.ingest.listen),
                enforce: cfg.xdp.enforce,
                events: cfg.xdp.events,
                reset_window: cfg.sequence.reset_window,
                max_devices: cfg.xdp.max_devices,
                flow_entries: if cfg.model.classifier.is_some() {
                    cfg.xdp.max_devices
                } else {
                    1 << 16
                },
            };
            let limits = match cfg.xdp.limits() {
                Ok(l) => l,
                Err(e) => return runtime_fail(e),
            };
            let program = match xdp::XdpProgram::load(&opts, &limits) {
                Ok(p) => p,
                Err(e) => return runtime_fail(e),
            };
            if let Some(path) = &cfg.model.classifier {
                let f = klais::model::load_classifier(path)
                    .map_err(|e| e.to_string())
                    .and_then(|f| klais::model::with_drops(f, &cfg.model.drop_classes));
                let loaded = match f {
                    Ok(f) => program
                        .maps()
                        .set_model(Some(&f))
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                if let Err(e) = loaded {
                    eprintln!("error: model.classifier: {e}");
                    return ExitCode::from(2);
                }
            }
            match program.attach(&iface, mode.unwrap_or(cfg.xdp.mode)) {
                Ok(a) => {
                    if let Some(old) = a.recovered() {
                        eprintln!("replaced the klais XDP program already on {iface} (id {old})");
                    }
                    println!(
                        "klais XDP filter attached to {iface} ({} mode), ports {:?}; maps pinned under {}. `klais xdp detach --iface {iface}` removes it.",
                        a.mode(),
                        opts.ports,
                        xdp::pin_dir(&iface).display()
                    );
                    a.persist();
                    ExitCode::SUCCESS
                }
                Err(e) => runtime_fail(e),
            }
        }
        XdpCmd::Detach { iface } => match xdp::detach_iface(&iface) {
            Ok(true) => {
                println!("klais XDP filter detached from {iface}; pins removed");
                ExitCode::SUCCESS
            }
            Ok(false) => {
                println!("nothing of klais was attached to {iface}");
                ExitCode::SUCCESS
            }
            Err(e) => runtime_fail(e),
        },
        XdpCmd::Status { iface } => match xdp::status(&iface) {
            Ok(st) => {
                println!("interface      {} (ifindex {})", st.iface, st.ifindex);
                if st.prog_id == 0 {
                    println!("xdp program    none");
                } else {
                    println!("xdp program    id {} ({} mode)", st.prog_id, st.mode);
                }
                let owner = match (st.prog_id != 0, st.klais_pinned) {
                    (true, true) => {
                        "klais (maps pinned under ".to_string()
                            + &xdp::pin_dir(&iface).display().to_string()
                            + ")"
                    }
                    (true, false) => "not klais: klais will not touch it".to_string(),
                    (false, true) => {
                        "stale klais pins without a program: `klais xdp detach` cleans them"
                            .to_string()
                    }
                    (false, false) => "-".to_string(),
                };
                println!("owner          {owner}");
                if st.klais_pinned {
                    if let Ok(l) = xdp::KernelMaps::from_pins(&iface).and_then(|m| m.limits()) {
                        let rate = |r: Option<xdp::Rate>| {
                            r.map_or("none".to_string(), |r| {
                                format!("{} pps, burst {}", r.pps(), r.burst())
                            })
                        };
                        println!("device limit   {}", rate(l.device));
                        println!("global budget  {}", rate(l.global));
                        println!("event cap      {}/s", l.events_per_sec);
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => runtime_fail(e),
        },
        XdpCmd::Stats { iface, watch } => {
            let maps = match xdp::KernelMaps::from_pins(&iface) {
                Ok(m) => m,
                Err(e) => return runtime_fail(e),
            };
            let stop = Arc::new(AtomicBool::new(false));
            register_signals(&stop);
            let mut prev = match maps.counters() {
                Ok(c) => c,
                Err(e) => return runtime_fail(e),
            };
            print!("{}", runtime::xdp_counters_text(&prev));
            let Some(secs) = watch else {
                return ExitCode::SUCCESS;
            };
            let every = Duration::from_secs_f64(secs);
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                if last.elapsed() < every {
                    continue;
                }
                let now = match maps.counters() {
                    Ok(c) => c,
                    Err(e) => return runtime_fail(e),
                };
                let dt = last.elapsed().as_secs_f64();
                last = Instant::now();
                let mut line = String::new();
                for v in xdp::Verdict::ALL {
                    let d = now.get(v) - prev.get(v);
                    if d > 0 || now.get(v) > 0 {
                        line.push_str(&format!("{} {:.0}/s  ", v.name(), d as f64 / dt));
                    }
                }
                println!(
                    "{}",
                    if line.is_empty() {
                        "no packets".to_string()
                    } else {
                        line
                    }
                );
                prev = now;
            }
            ExitCode::SUCCESS
        }
        XdpCmd::Bench {
            repeat,
            rounds,
            redirect_iface,
            model,
        } => {
            let model = match model.map(|p| klais::model::load_classifier(&p)).transpose() {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            match klais::xdp::bench::run(
                repeat,
                rounds.max(1),
                redirect_iface.as_deref(),
                model.as_ref(),
            ) {
                Ok(rows) => {
                    print!("{}", klais::xdp::bench::table(&rows, repeat));
                    ExitCode::SUCCESS
                }
                Err(e) => runtime_fail(e),
            }
        }
    }
}

/// The v2 keys of `--v2-keys`, one per generated device; the error says what
/// is wrong with the file.
fn v2_keys(t: &Traffic) -> Result<Option<Arc<Vec<klais::wire::DeviceKey>>>, String> {
    let Some(path) = &t.v2_keys else {
        return Ok(None);
    };
    let table = klais::shard::auth::KeyTable::load(path).map_err(|e| format!("--v2-keys: {e}"))?;
    gen::keys_for_devices(&table, t.devices.max(1))
        .map(|k| Some(Arc::new(k)))
        .map_err(|e| format!("--v2-keys: {e}"))
}

fn spec_from(t: &Traffic, to: SocketAddr, duration: Option<f64>, count: Option<u64>) -> GenSpec {
    GenSpec {
        v2_keys: None,
        target: to,
        devices: t.devices.max(1),
        rate_pps: t.rate,
        count,
        duration: duration.map(Duration::from_secs_f64),
        payload_bytes: usize::from(t.payload_bytes),
        malformed_ppm: t.malformed_ppm,
        seed: t.seed,
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

/// How logs are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

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

/// SIGINT/SIGTERM set `stop`; a second one exits at once (status 1).
fn register_signals(stop: &Arc<AtomicBool>) {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone());
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
}

/// Runs until a signal, `duration`, or `until` turns true; prints live figures
/// and the summary. Returns the exit code.
fn run(
    cfg: &Config,
    duration: Option<Duration>,
    until: Option<&AtomicBool>,
    topology: bool,
) -> ExitCode {
    // A signal during start-up (which can wait seconds for the broker) stops
    // klais as soon as it runs, with the usual drain.
    let early = Arc::new(AtomicBool::new(false));
    register_signals(&early);
    let running = match runtime::start(cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(code) = after_start(&running, cfg) {
        // Stop cleanly: drain what was accepted, detach the filter.
        if let Err(e) = running.stop() {
            eprintln!("error: stopping: {e}");
        }
        return code;
    }
    // Handlers first: once the line below is printed, a SIGTERM must drain.
    let stop = running.stop_flag();
    register_signals(&stop);
    if early.load(Ordering::Relaxed) {
        stop.store(true, Ordering::Relaxed);
    }
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
        eprint!("{}", runtime::topology_text(&running, cfg));
    }
    eprintln!(
        "klais listening on {} ({} backend, {}); output: {}. Ctrl-C stops and drains.",
        running.local_addr(),
        cfg.ingest.backend.name(),
        running.placement(),
        cfg.output.sink.name()
    );
    wait_with_live_figures(&running, cfg.telemetry.stats_interval_ms, duration, until);
    finish(running)
}

fn wait_with_live_figures(
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
                let kafka = running.kafka_snapshot().map_or(String::new(), |k| {
                    format!(
                        "  | kafka delivered {} in flight {} journal {} breaker {:?}{}",
                        k.delivered,
                        k.in_flight + k.buffered,
                        k.journaled,
                        k.breaker,
                        if k.dropped_journal_full + k.dropped_rejected + k.journal_lost > 0 {
                            format!(
                                " DROPPED {}",
                                k.dropped_journal_full + k.dropped_rejected + k.journal_lost
                            )
                        } else {
                            String::new()
                        }
                    )
                });
                eprintln!(
                    "{}{kafka}",
                    runtime::live_line(start.elapsed(), last.elapsed(), &prev, &now)
                );
            }
            prev = now;
            last = Instant::now();
        }
    }
}

fn finish(running: Running) -> ExitCode {
    match running.stop() {
        Ok(summary) => {
            eprint!("{}", runtime::summary_text(&summary));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Reads the topic back; prints a few records, the count, and whether every
/// device's sequence numbers arrived in order.
fn kafka_consume(
    brokers: &str,
    topic: &str,
    count: Option<u64>,
    show: usize,
    idle: f64,
) -> ExitCode {
    match consume_report(brokers, topic, count, show, idle) {
        Some(_) => ExitCode::SUCCESS,
        None => ExitCode::from(1),
    }
}

/// (records read, out of order), or None after printing the error.
fn consume_report(
    brokers: &str,
    topic: &str,
    count: Option<u64>,
    show: usize,
    idle: f64,
) -> Option<(u64, u64)> {
    use std::collections::HashMap;
    let mut shown = 0;
    let mut last_seq: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut out_of_order = 0u64;
    let mut devices = 0u64;
    let started = Instant::now();
    let r = klais::kafka::consume::for_each(
        brokers,
        topic,
        count,
        Duration::from_secs_f64(idle),
        |m| {
            if shown < show {
                println!(
                    "  partition {} offset {} key {:?} headers {{{}}} value {}",
                    m.partition,
                    m.offset,
                    String::from_utf8_lossy(&m.key),
                    m.headers
                        .iter()
                        .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    String::from_utf8_lossy(&m.payload)
                );
                shown += 1;
            }
            if let Some(seq) = m.header("sequence").and_then(|s| s.parse::<u64>().ok()) {
                match last_seq.insert(m.key.clone(), seq) {
                    Some(prev) if prev >= seq => out_of_order += 1,
                    None => devices += 1,
                    _ => {}
                }
            }
        },
    );
    match r {
        Ok(n) => {
            println!(
                "{topic} on {brokers}: {n} records from {devices} devices read in {:.1}s; per-device sequence out of order: {out_of_order}",
                started.elapsed().as_secs_f64()
            );
            Some((n, out_of_order))
        }
        Err(e) => {
            eprintln!("error: reading {topic} from {brokers}: {e}");
            None
        }
    }
}

fn demo(args: DemoArgs) -> ExitCode {
    let mut cfg = match Config::load(None) {
        Ok(c) => c,
        Err(errs) => return config_errors(&errs),
    };
    // The embedded default, on loopback, records to a file or counted only.
    cfg.ingest.listen = SocketAddr::from(([127, 0, 0, 1], cfg.ingest.listen.port()));
    cfg.protocol.validate_json = true;
    let journal_dir =
        std::env::temp_dir().join(format!("klais-demo-journal-{}", std::process::id()));
    match (&args.output, &args.brokers) {
        (Some(p), _) => {
            cfg.output.sink = SinkKind::File;
            cfg.output.path = Some(p.clone());
        }
        (None, Some(b)) => {
            cfg.output.sink = SinkKind::Kafka;
            cfg.output.kafka.brokers = b.clone();
            cfg.output.kafka.topic = args.topic.clone();
            cfg.output.kafka.journal.dir = journal_dir.clone();
        }
        (None, None) => cfg.output.sink = SinkKind::Null,
    }
    // Authenticated devices: klais takes the generator's key file.
    let keys = match v2_keys(&args.traffic) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if keys.is_some() {
        cfg.auth.keys = args.traffic.v2_keys.clone();
        // The generator starts every device at sequence 0 on each run: the
        // demo's replay windows are its own, not the appliance's.
        cfg.auth.replay_state = Some(journal_dir.with_extension("replay"));
    }
    let early = Arc::new(AtomicBool::new(false));
    register_signals(&early);
    let running = match runtime::start(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(code) = after_start(&running, &cfg) {
        // Stop cleanly: drain what was accepted, detach the filter.
        if let Err(e) = running.stop() {
            eprintln!("error: stopping: {e}");
        }
        return code;
    }
    let stop = running.stop_flag();
    register_signals(&stop);
    if early.load(Ordering::Relaxed) {
        stop.store(true, Ordering::Relaxed);
    }
    let mut t = args.traffic.clone();
    if t.malformed_ppm == 0 {
        t.malformed_ppm = 10_000; // 1 %: shows the reject counters at work
    }
    let mut spec = spec_from(&t, running.local_addr(), Some(args.duration), None);
    spec.v2_keys = keys;
    eprintln!(
        "demo: klais on udp {} ({}); sending {} pps from {} devices for {:.0}s, {} ppm malformed; records -> {}",
        running.local_addr(),
        running.placement(),
        spec.rate_pps,
        spec.devices,
        args.duration,
        spec.malformed_ppm,
        match (&args.output, &args.brokers) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(b)) => format!("Kafka topic {} on {b}", args.topic),
            (None, None) => "counted and discarded".into(),
        }
    );
    let gen_done = Arc::new(AtomicBool::new(false));
    let sender = {
        let (stop, done) = (stop.clone(), gen_done.clone());
        std::thread::spawn(move || {
            let r = gen::run(&spec, &stop);
            done.store(true, Ordering::Relaxed);
            r
        })
    };
    wait_with_live_figures(
        &running,
        cfg.telemetry.stats_interval_ms,
        None,
        Some(&gen_done),
    );
    let sent = match sender.join() {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("error: generator: {e}");
            let _ = running.stop();
            return ExitCode::from(1);
        }
        Err(_) => {
            eprintln!("error: generator panicked");
            return ExitCode::from(1);
        }
    };
    // Let the last datagrams land, then stop and drain.
    std::thread::sleep(Duration::from_millis(200));
    let summary = match running.stop() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    eprint!("{}", runtime::summary_text(&summary));
    let total_sent = sent.sent_valid + sent.sent_malformed;
    let sh = &summary.shards;
    let lost_in_kernel = total_sent.saturating_sub(sh.received);
    eprintln!(
        "demo: sent {} ({} valid, {} malformed); klais received {}, accepted {}, rejected {}, sink wrote {}; \
         lost before klais (socket buffer) {}",
        total_sent, sent.sent_valid, sent.sent_malformed, sh.received, sh.accepted, sh.rejects.total(),
        summary.sink.records, lost_in_kernel
    );
    let mut consistent =
        sh.accepted == summary.sink.records && sh.accepted + sh.rejects.total() == sh.received;
    if let (Some(k), Some(brokers)) = (&summary.kafka, &args.brokers) {
        let (l, r) = k.reconcile();
        consistent &= l == r && k.delivered == k.accepted + k.recovered;
        eprintln!(
            "demo: Kafka delivered {} of {} accepted ({} journaled, {} dropped); reading topic {} back:",
            k.delivered,
            k.accepted,
            k.journaled,
            k.dropped_journal_full + k.dropped_rejected + k.journal_lost,
            args.topic
        );
        match consume_report(brokers, &args.topic, Some(k.delivered), 3, 5.0) {
            Some((n, 0)) if n == k.delivered => {}
            _ => consistent = false,
        }
        if k.journaled == 0 {
            let _ = std::fs::remove_dir_all(&journal_dir);
        }
    }
    if consistent {
        eprintln!(
            "demo: OK: every received datagram is either written or counted under a reject reason"
        );
        ExitCode::SUCCESS
    } else {
        eprintln!("demo: MISMATCH between counters (see above)");
        ExitCode::from(1)
    }
}

/// Once klais is up: drop capabilities (`privilege.drop_capabilities`) and
/// say where the metrics are. A failed drop stops klais: running with more
/// privilege than documented is not an option.
fn after_start(running: &runtime::Running, cfg: &Config) -> Result<(), ExitCode> {
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
