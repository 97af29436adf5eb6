//! `klais demo`: klais on the embedded default with generated traffic on
//! loopback and live figures, then a check that every datagram sent was
//! written or counted under a reject reason (and, with --brokers, read back
//! from Kafka in order). The quickest proof that klais works on a machine.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use klais::config::{Config, SinkKind};
use klais::gen::{self as generator, GenReport, GenSpec};
use klais::report;
use klais::runtime::{RunSummary, Running};

use super::kafka::consume_report;
use super::run::{start, wait_with_live_figures};
use super::{load_config, parse_secs, runtime_fail, usage_fail, Traffic, V2Keys};

#[derive(Args, Debug)]
pub(super) struct DemoArgs {
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

/// Starts klais, sends, stops and drains, then checks the counters.
pub(super) fn run(args: &DemoArgs) -> ExitCode {
    let journal_dir =
        std::env::temp_dir().join(format!("klais-demo-journal-{}", std::process::id()));
    let (cfg, keys) = match configure(args, &journal_dir) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let running = match start(&cfg) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let mut t = args.traffic.clone();
    if t.malformed_ppm == 0 {
        t.malformed_ppm = 10_000; // 1 %: shows the reject counters at work
    }
    let mut spec = t.spec(running.local_addr(), Some(args.duration), None);
    spec.v2_keys = keys;
    eprintln!(
        "demo: klais on udp {} ({}); sending {} pps from {} devices for {:.0}s, {} ppm malformed; records -> {}",
        running.local_addr(),
        running.placement(),
        spec.rate_pps,
        spec.devices,
        args.duration,
        spec.malformed_ppm,
        destination(args)
    );
    let sent = match send_while_watching(&running, &cfg, spec) {
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
        Err(e) => return runtime_fail(e),
    };
    eprint!("{}", report::summary_text(&summary));
    reconcile(args, &sent, &summary, &journal_dir)
}

/// The embedded default on loopback, records to --output, Kafka (--brokers,
/// journal in `journal_dir`) or counted only; with --v2-keys klais takes the
/// generator's key file. Returns it with the generator's keys.
fn configure(args: &DemoArgs, journal_dir: &Path) -> Result<(Config, Option<V2Keys>), ExitCode> {
    let mut cfg = load_config(None)?;
    cfg.ingest.listen = SocketAddr::from(([127, 0, 0, 1], cfg.ingest.listen.port()));
    cfg.protocol.validate_json = true;
    match (&args.output, &args.brokers) {
        (Some(p), _) => {
            cfg.output.sink = SinkKind::File;
            cfg.output.path = Some(p.clone());
        }
        (None, Some(b)) => {
            cfg.output.sink = SinkKind::Kafka;
            cfg.output.kafka.brokers = b.clone();
            cfg.output.kafka.topic = args.topic.clone();
            cfg.output.kafka.journal.dir = journal_dir.to_path_buf();
        }
        (None, None) => cfg.output.sink = SinkKind::Null,
    }
    // Authenticated devices: klais takes the generator's key file.
    let keys = args.traffic.v2_keys().map_err(usage_fail)?;
    if keys.is_some() {
        cfg.auth.keys = args.traffic.v2_keys.clone();
        // The generator starts every device at sequence 0 on each run: the
        // demo's replay windows are its own, not the appliance's.
        cfg.auth.replay_state = Some(journal_dir.with_extension("replay"));
    }
    Ok((cfg, keys))
}

/// Where the records go, in words.
fn destination(args: &DemoArgs) -> String {
    match (&args.output, &args.brokers) {
        (Some(p), _) => p.display().to_string(),
        (None, Some(b)) => format!("Kafka topic {} on {b}", args.topic),
        (None, None) => "counted and discarded".into(),
    }
}

/// Sends `spec` from a thread while printing live figures; returns when the
/// generator is done (or klais stopped), with the generator's result.
fn send_while_watching(
    running: &Running,
    cfg: &Config,
    spec: GenSpec,
) -> std::thread::Result<io::Result<GenReport>> {
    let gen_done = Arc::new(AtomicBool::new(false));
    let sender = {
        let (stop, done) = (running.stop_flag(), gen_done.clone());
        std::thread::spawn(move || {
            let r = generator::run(&spec, &stop);
            done.store(true, Ordering::Relaxed);
            r
        })
    };
    wait_with_live_figures(
        running,
        cfg.telemetry.stats_interval_ms,
        None,
        Some(&gen_done),
    );
    sender.join()
}

/// Compares what was sent with klais's counters (and, with --brokers, with
/// what the topic holds); exit 1 on any mismatch.
fn reconcile(
    args: &DemoArgs,
    sent: &GenReport,
    summary: &RunSummary,
    journal_dir: &Path,
) -> ExitCode {
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
            k.dropped(),
            args.topic
        );
        match consume_report(
            brokers,
            &Default::default(),
            &args.topic,
            Some(k.delivered),
            3,
            5.0,
        ) {
            Some((n, 0)) if n == k.delivered => {}
            _ => consistent = false,
        }
        if k.journaled == 0 {
            let _ = std::fs::remove_dir_all(journal_dir);
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
