//! `klais bench run | compare | plot`: the benchmark harness's command line
//! (arguments, their checks, output and exit codes); the harness itself is
//! `klais::bench`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use klais::bench::load::{PayloadSize, Rate, Shape};
use klais::bench::{self, Options, RateMode, Target, Topology};

/// The bench commands.
#[derive(Subcommand, Debug)]
pub(super) enum BenchCmd {
    /// One target under generated load, measured from the topic: throughput,
    /// loss, duplicates, reordering, latency percentiles, CPU; results as JSON
    /// and PNG plots. Local topology: makes a netns + veth pair, runs klais
    /// (af_xdp) on one end and the generator on the other, removes both after.
    Run(RunArgs),
    /// The same scenario against several targets (klais af_xdp, klais udp, the
    /// tokio + rdkafka and Python asyncio + aiokafka baselines), one table with
    /// ratios from this one run.
    Compare(CompareArgs),
    /// Re-render summary.txt and the PNG plots of a results folder from its
    /// result.json.
    Plot {
        /// The results folder.
        dir: PathBuf,
    },
}

/// Load and measurement options shared by run and compare.
#[derive(Args, Debug, Clone)]
struct Common {
    /// `local` (netns + veth made by the bench) or `remote` (a real NIC toward
    /// klais on another host: needs --iface, --target-addr, --brokers, --topic).
    #[arg(long, default_value = "local")]
    topology: String,
    /// Remote: the sending interface.
    #[arg(long)]
    iface: Option<String>,
    /// Remote: klais's listen address on the other host.
    #[arg(long)]
    target_addr: Option<std::net::SocketAddrV4>,
    /// Remote, AF_XDP TX: the next hop's MAC (else read from the neighbour table).
    #[arg(long)]
    dst_mac: Option<String>,
    /// Remote: the topic the appliance writes (read from its current end).
    #[arg(long)]
    topic: Option<String>,
    /// Kafka brokers (default: the cached local broker, restarted empty per trial).
    #[arg(long)]
    brokers: Option<String>,
    /// Generator: `af_xdp` (AF_XDP TX) or `udp` (sendmmsg, for machines without AF_XDP).
    #[arg(long, default_value = "af_xdp")]
    generator: String,
    /// AF_XDP TX in zero-copy mode (driver support needed; veth has none).
    #[arg(long)]
    zero_copy: bool,
    /// Generator threads (one TX queue each).
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Device population.
    #[arg(long, default_value_t = 10_000)]
    devices: u32,
    /// Fixed rate, messages/s (0: as fast as the generator can).
    #[arg(long, default_value_t = 50_000, conflicts_with_all = ["ramp", "find_max"])]
    rate: u64,
    /// A linear ramp FROM:TO messages/s over each trial.
    #[arg(long, value_name = "FROM:TO")]
    ramp: Option<String>,
    /// Search the highest zero-loss rate: double from --start-rate until a trial
    /// loses (or --max-rate), then bisect --search-steps times.
    #[arg(long)]
    find_max: bool,
    /// First rate of the search.
    #[arg(long, default_value_t = 10_000)]
    start_rate: u64,
    /// Highest rate the search tries.
    #[arg(long, default_value_t = 2_000_000)]
    max_rate: u64,
    /// Bisection steps after the first losing trial.
    #[arg(long, default_value_t = 4)]
    search_steps: u32,
    /// Arrival shape: periodic, poisson, bursts[:ON_MS:OFF_MS], storm[:AT:OUTAGE:FLUSH]
    /// (AT and OUTAGE as shares of the trial, FLUSH the catch-up speed-up).
    #[arg(long, default_value = "periodic")]
    shape: String,
    /// Payload bytes: N or MIN-MAX (uniform).
    #[arg(long, default_value = "200")]
    payload: String,
    /// Malformed datagrams per million (rejected by the receiver, not expected back).
    #[arg(long, default_value_t = 0)]
    malformed_ppm: u32,
    /// Seconds of load per trial.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// klais shard cores.
    #[arg(long, default_value_t = 1)]
    shards: u32,
    /// Topic partitions.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// Results root: a stamped folder is made inside.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Python with aiokafka for the Python baseline (scripts/baselines.sh makes it).
    #[arg(long)]
    python: Option<PathBuf>,
    /// klais configuration the klais targets start from (e.g. larger AF_XDP
    /// rings); the bench sets backend, shards, listen, output and xdp over it.
    #[arg(long, value_name = "FILE")]
    klais_config: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// A shell command started with each trial's load (perf/ scripts use it);
    /// its environment has KLAIS_BENCH_TARGET_PID, KLAIS_BENCH_SECONDS,
    /// KLAIS_BENCH_DIR (the results folder) and KLAIS_BENCH_TRIAL.
    #[arg(long, value_name = "CMD")]
    on_load: Option<String>,
}

/// `klais bench run`.
#[derive(Args, Debug)]
pub(super) struct RunArgs {
    /// What receives: klais-af_xdp, klais-udp, tokio, python (remote: ignored).
    #[arg(long, default_value = "klais-af_xdp")]
    target: String,
    #[command(flatten)]
    common: Common,
}

/// `klais bench compare`.
#[derive(Args, Debug)]
pub(super) struct CompareArgs {
    /// Targets, comma-separated.
    #[arg(
        long,
        default_value = "klais-af_xdp,klais-udp,tokio,python",
        value_delimiter = ','
    )]
    targets: Vec<String>,
    #[command(flatten)]
    common: Common,
}

fn parse_shape(s: &str) -> Result<Shape, String> {
    let mut parts = s.split(':');
    let name = parts.next().unwrap_or_default();
    let nums: Vec<f64> = parts
        .map(|p| {
            p.parse::<f64>()
                .map_err(|_| format!("--shape {s}: {p:?} is not a number"))
        })
        .collect::<Result<_, _>>()?;
    let get = |i: usize, d: f64| nums.get(i).copied().unwrap_or(d);
    Ok(match name {
        "periodic" => Shape::Periodic,
        "poisson" => Shape::Poisson,
        "bursts" => Shape::Bursts {
            on_ms: get(0, 100.0) as u64,
            off_ms: get(1, 400.0) as u64,
        },
        "storm" => {
            let (at, outage, flush) = (get(0, 0.3), get(1, 0.2), get(2, 4.0));
            if at < 0.0 || outage <= 0.0 || at + outage >= 1.0 || flush <= 1.0 {
                return Err(format!(
                    "--shape {s}: storm:AT:OUTAGE:FLUSH needs 0 <= AT, 0 < OUTAGE, AT + OUTAGE < 1, FLUSH > 1"
                ));
            }
            Shape::Storm { at, outage, flush }
        }
        _ => {
            return Err(format!(
            "--shape {s}: one of periodic, poisson, bursts[:ON_MS:OFF_MS], storm[:AT:OUTAGE:FLUSH]"
        ))
        }
    })
}

/// Turns the arguments into [`Options`]; errors name the flag and the fix.
fn options(c: &Common) -> Result<Options, String> {
    let mut o = Options::local_defaults();
    o.topology = match c.topology.as_str() {
        "local" => Topology::Local,
        "remote" => Topology::Remote {
            iface: c
                .iface
                .clone()
                .ok_or("--topology remote needs --iface (the sending NIC)")?,
            target: c.target_addr.ok_or(
                "--topology remote needs --target-addr (klais's listen address on the other host)",
            )?,
            dst_mac: match &c.dst_mac {
                Some(m) => Some(
                    bench::frame::parse_mac(m)
                        .ok_or_else(|| format!("--dst-mac {m}: expected aa:bb:cc:dd:ee:ff"))?,
                ),
                None => None,
            },
        },
        t => return Err(format!("--topology {t}: local or remote")),
    };
    o.brokers = c.brokers.clone();
    o.topic = c.topic.clone();
    o.af_xdp_tx = match c.generator.as_str() {
        "af_xdp" => true,
        "udp" => false,
        g => return Err(format!("--generator {g}: af_xdp or udp")),
    };
    o.zero_copy = c.zero_copy;
    if c.zero_copy && !o.af_xdp_tx {
        return Err("--zero-copy needs --generator af_xdp".into());
    }
    o.threads = c.threads;
    o.devices = c.devices;
    o.rate = if c.find_max {
        if c.start_rate == 0 || c.max_rate < c.start_rate {
            return Err("--find-max needs 0 < --start-rate <= --max-rate".into());
        }
        RateMode::FindMax {
            start: c.start_rate,
            max: c.max_rate,
            steps: c.search_steps,
        }
    } else if let Some(r) = &c.ramp {
        let (a, b) = r
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .ok_or_else(|| {
                format!("--ramp {r}: expected FROM:TO in messages/s, e.g. 10000:200000")
            })?;
        RateMode::Run {
            rate: Rate::Ramp { from: a, to: b },
        }
    } else {
        RateMode::Run {
            rate: Rate::Fixed { pps: c.rate },
        }
    };
    o.shape = parse_shape(&c.shape)?;
    o.payload = PayloadSize::parse(&c.payload).map_err(|e| format!("--payload: {e}"))?;
    o.malformed_ppm = c.malformed_ppm;
    if !(c.duration > 0.0 && c.duration <= 3600.0) {
        return Err(format!(
            "--duration {}: between 0 and 3600 seconds",
            c.duration
        ));
    }
    o.duration = Duration::from_secs_f64(c.duration);
    o.seed = c.seed;
    o.shards = c.shards;
    o.partitions = c.partitions;
    o.out = c.out.clone();
    o.progress = !c.quiet;
    o.on_load = c.on_load.clone();
    o.klais_config = c.klais_config.clone();
    if let Some(p) = &c.python {
        o.python = p.clone();
    }
    // The baselines' sources: beside the repository the binary was built from,
    // or ./benches/baselines when run from a checkout elsewhere.
    if !o.baselines.exists() {
        o.baselines = PathBuf::from("benches/baselines");
    }
    Ok(o)
}

/// Runs a bench command.
pub(super) fn run(cmd: BenchCmd) -> ExitCode {
    if let BenchCmd::Plot { dir } = &cmd {
        return match bench::replot(dir) {
            Ok(r) => {
                print!("{}", bench::summary(&r));
                println!("re-plotted: {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: bench plot: {e}");
                ExitCode::from(1)
            }
        };
    }
    let res = match &cmd {
        BenchCmd::Run(a) => options(&a.common).and_then(|o| {
            let t = if matches!(o.topology, Topology::Remote { .. }) {
                Target::Remote
            } else {
                Target::parse(&a.target)?
            };
            bench::run(&o, t)
        }),
        BenchCmd::Compare(a) => options(&a.common).and_then(|o| {
            if matches!(o.topology, Topology::Remote { .. }) {
                return Err("compare starts every target itself: local topology only".into());
            }
            let ts = a
                .targets
                .iter()
                .map(|t| Target::parse(t))
                .collect::<Result<Vec<_>, _>>()?;
            if ts.is_empty() {
                return Err("--targets: at least one".into());
            }
            bench::compare(&o, &ts)
        }),
        BenchCmd::Plot { .. } => unreachable!("handled above"),
    };
    match res {
        Ok((report, dir)) => {
            print!("{}", bench::summary(&report));
            println!("results: {}/{{result.json,summary.txt,throughput.png,latency.png,latency-cdf.png}}", dir.display());
            let all_ok = report
                .targets
                .iter()
                .all(|r| r.zero_loss_pps.is_some() || r.trials.iter().all(|t| t.zero_loss));
            if all_ok {
                ExitCode::SUCCESS
            } else {
                // Loss in a fixed-rate run is a finding, not a failure of the
                // bench; exit 3 lets scripts tell it from errors (1, 2).
                ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("error: bench: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_with_defaults_and_refuse_nonsense() {
        assert_eq!(parse_shape("periodic"), Ok(Shape::Periodic));
        assert_eq!(
            parse_shape("bursts"),
            Ok(Shape::Bursts {
                on_ms: 100,
                off_ms: 400
            })
        );
        assert_eq!(
            parse_shape("bursts:50:50"),
            Ok(Shape::Bursts {
                on_ms: 50,
                off_ms: 50
            })
        );
        assert_eq!(
            parse_shape("storm:0.5:0.2:3"),
            Ok(Shape::Storm {
                at: 0.5,
                outage: 0.2,
                flush: 3.0
            })
        );
        assert!(parse_shape("storm:0.9:0.2:3")
            .unwrap_err()
            .contains("AT + OUTAGE < 1"));
        assert!(parse_shape("wave").unwrap_err().contains("periodic"));
        assert!(parse_shape("bursts:x")
            .unwrap_err()
            .contains("not a number"));
    }
}
