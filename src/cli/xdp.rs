//! `klais xdp`: the kernel filter on its own. Attach it (left attached, maps
//! pinned) and detach it, show its status and per-verdict counters, and
//! measure each verdict path through BPF_PROG_TEST_RUN.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Subcommand;

use klais::config::Config;
use klais::xdp::{self, AttachMode, KernelMaps, XdpProgram};

use super::{load_config, parse_secs, register_signals, runtime_fail, usage_fail};

#[derive(Subcommand, Debug)]
pub(super) enum XdpCmd {
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
        mode: Option<AttachMode>,
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

/// Runs a `klais xdp` command. Each step prints why it failed and returns
/// the exit code as its error.
pub(super) fn run(cmd: XdpCmd) -> ExitCode {
    let done = match cmd {
        XdpCmd::Attach {
            iface,
            mode,
            config,
        } => attach(&iface, mode, config.as_deref()),
        XdpCmd::Detach { iface } => detach(&iface),
        XdpCmd::Status { iface } => status(&iface),
        XdpCmd::Stats { iface, watch } => stats(&iface, watch),
        XdpCmd::Bench {
            repeat,
            rounds,
            redirect_iface,
            model,
        } => bench(repeat, rounds, redirect_iface.as_deref(), model.as_deref()),
    };
    done.unwrap_or_else(|code| code)
}

/// Loads the filter as the configuration says and leaves it attached.
fn attach(
    iface: &str,
    mode: Option<AttachMode>,
    config: Option<&Path>,
) -> Result<ExitCode, ExitCode> {
    let cfg = load_config(config)?;
    let opts = xdp::LoadOptions::from_config(&cfg);
    let limits = cfg.xdp.limits().map_err(runtime_fail)?;
    let program = XdpProgram::load(&opts, &limits).map_err(runtime_fail)?;
    load_classifier(&program, &cfg)?;
    let a = program
        .attach(iface, mode.unwrap_or(cfg.xdp.mode))
        .map_err(runtime_fail)?;
    if let Some(old) = a.recovered() {
        eprintln!("replaced the klais XDP program already on {iface} (id {old})");
    }
    println!(
        "klais XDP filter attached to {iface} ({} mode), ports {:?}; maps pinned under {}. `klais xdp detach --iface {iface}` removes it.",
        a.mode(),
        opts.ports,
        xdp::pin_dir(iface).display()
    );
    a.persist();
    Ok(ExitCode::SUCCESS)
}

/// Writes `model.classifier` (with its drop classes) into the program, when
/// configured; a bad model is a configuration error (exit 2).
fn load_classifier(program: &XdpProgram, cfg: &Config) -> Result<(), ExitCode> {
    let Some(path) = &cfg.model.classifier else {
        return Ok(());
    };
    klais::model::load_classifier(path)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            klais::model::with_drops(f, &cfg.model.drop_classes).map_err(|e| e.to_string())
        })
        .and_then(|f| {
            program
                .maps()
                .set_model(Some(&f))
                .map_err(|e| e.to_string())
        })
        .map(|_slot| ())
        .map_err(|e| usage_fail(format!("model.classifier: {e}")))
}

/// Detaches klais's filter and removes its pins.
fn detach(iface: &str) -> Result<ExitCode, ExitCode> {
    if xdp::detach_iface(iface).map_err(runtime_fail)? {
        println!("klais XDP filter detached from {iface}; pins removed");
    } else {
        println!("nothing of klais was attached to {iface}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What is attached to `iface`, whose it is, and klais's limits.
fn status(iface: &str) -> Result<ExitCode, ExitCode> {
    let st = xdp::status(iface).map_err(runtime_fail)?;
    println!("interface      {} (ifindex {})", st.iface, st.ifindex);
    if st.prog_id == 0 {
        println!("xdp program    none");
    } else {
        println!("xdp program    id {} ({} mode)", st.prog_id, st.mode);
    }
    let owner = match (st.prog_id != 0, st.klais_pinned) {
        (true, true) => {
            "klais (maps pinned under ".to_string()
                + &xdp::pin_dir(iface).display().to_string()
                + ")"
        }
        (true, false) => "not klais: klais will not touch it".to_string(),
        (false, true) => {
            "stale klais pins without a program: `klais xdp detach` cleans them".to_string()
        }
        (false, false) => "-".to_string(),
    };
    println!("owner          {owner}");
    if st.klais_pinned {
        if let Ok(l) = KernelMaps::from_pins(iface).and_then(|m| m.limits()) {
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
    Ok(ExitCode::SUCCESS)
}

/// The counters; with `watch`, rates every `watch` seconds until a signal.
fn stats(iface: &str, watch: Option<f64>) -> Result<ExitCode, ExitCode> {
    let maps = KernelMaps::from_pins(iface).map_err(runtime_fail)?;
    let stop = Arc::new(AtomicBool::new(false));
    register_signals(&stop);
    let mut prev = maps.counters().map_err(runtime_fail)?;
    print!("{}", klais::report::xdp_counters_text(&prev));
    let Some(secs) = watch else {
        return Ok(ExitCode::SUCCESS);
    };
    let every = Duration::from_secs_f64(secs);
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() < every {
            continue;
        }
        let now = maps.counters().map_err(runtime_fail)?;
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
    Ok(ExitCode::SUCCESS)
}

/// Measures each verdict path in the kernel and prints the table.
fn bench(
    repeat: u32,
    rounds: u32,
    redirect_iface: Option<&str>,
    model: Option<&Path>,
) -> Result<ExitCode, ExitCode> {
    let model = model
        .map(klais::model::load_classifier)
        .transpose()
        .map_err(usage_fail)?;
    if redirect_iface.is_some() && !xdp::kernel_allows_xdp_meta() {
        eprintln!("note: this kernel refuses bpf_xdp_adjust_meta, so marks travel in a frame prefix that BPF_PROG_TEST_RUN would keep across repeats: the redirect rows are left out (docs/xdp.md)");
    }
    let rows = xdp::bench::run(repeat, rounds.max(1), redirect_iface, model.as_ref())
        .map_err(runtime_fail)?;
    print!("{}", xdp::bench::table(&rows, repeat));
    Ok(ExitCode::SUCCESS)
}
