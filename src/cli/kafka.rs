//! `klais kafka`: read klais's topic back, to check (and show in demos) that
//! what was accepted arrived, each device's sequence in order.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Subcommand;

use super::{load_config, parse_secs};

#[derive(Subcommand, Debug)]
pub(super) enum KafkaCmd {
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
        /// Configuration file to take brokers, topic and
        /// [output.kafka.security] (TLS, SASL) from.
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

/// Runs a `klais kafka` command.
pub(super) fn run(cmd: KafkaCmd) -> ExitCode {
    match cmd {
        KafkaCmd::Consume {
            brokers,
            topic,
            config,
            count,
            show,
            idle,
        } => {
            let cfg = match load_config(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let brokers = brokers.unwrap_or(cfg.output.kafka.brokers);
            let topic = topic.unwrap_or(cfg.output.kafka.topic);
            let sec = &cfg.output.kafka.security;
            match consume_report(&brokers, sec, &topic, count, show, idle) {
                Some(_) => ExitCode::SUCCESS,
                None => ExitCode::from(1),
            }
        }
    }
}

/// Reads the topic back; prints a few records, the count, and whether every
/// device's sequence numbers arrived in order. Returns (records read, out of
/// order), or None after printing the error.
pub(super) fn consume_report(
    brokers: &str,
    sec: &klais::config::Security,
    topic: &str,
    count: Option<u64>,
    show: usize,
    idle: f64,
) -> Option<(u64, u64)> {
    let mut shown = 0;
    let mut last_seq: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut out_of_order = 0u64;
    let mut devices = 0u64;
    let started = Instant::now();
    let r = klais::kafka::consume::for_each_with(
        brokers,
        sec,
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
