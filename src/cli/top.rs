//! `klais top`: a live terminal view of a running klais, read from its
//! /metrics, so an operator can watch an appliance without a dashboard.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{parse_secs, runtime_fail};

// No `///` here: on an `Args` struct it would become help text.
#[derive(Args, Debug)]
pub(super) struct TopArgs {
    /// The admin server of the klais to watch (admin.listen).
    #[arg(long, default_value = "127.0.0.1:9464")]
    addr: SocketAddr,
    /// Seconds between scrapes.
    #[arg(long, default_value = "1", value_parser = parse_secs)]
    interval: f64,
    /// Print one frame as plain text and exit (no terminal needed).
    #[arg(long)]
    once: bool,
}

/// Scrapes and draws until quit (or once with --once).
pub(super) fn run(args: &TopArgs) -> ExitCode {
    match klais::top::run(args.addr, Duration::from_secs_f64(args.interval), args.once) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => runtime_fail(e),
    }
}
