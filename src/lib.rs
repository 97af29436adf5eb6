//! klais: a line-rate IoT telemetry ingestion appliance.
//!
//! Devices send small UDP datagrams (wire protocol v1, [`wire`]); klais receives
//! them on pinned shard cores ([`ingest`], [`shard`]), hands accepted messages
//! over lock-free SPSC rings ([`handoff`]) to the Kafka batching core
//! ([`kafka`]: adaptive batching, spill journal) or a debug sink ([`sink`]), and
//! reports what it did ([`telemetry`]). [`runtime`] wires the cores together;
//! [`config`] is the operator's contract; [`gen`] makes device traffic; [`xdp`]
//! is the kernel filter; [`cores`] plans core maps.
//!
//! [`control`] holds the Dam, the PID controller and the storm predictor (pure
//! logic), and [`sim`] the storm simulator that drives them; [`train`] trains
//! the [`model`]s; [`report`] renders a run's figures as text.
//!
//! docs/architecture.md describes the data flow and the layers this crate
//! keeps (checked by tests/layers.rs).

#![deny(missing_docs)]

pub mod admin;
pub mod bench;
pub mod clock;
pub mod config;
pub mod control;
pub mod cores;
pub mod dapb;
pub mod gen;
pub mod handoff;
pub mod ingest;
pub mod kafka;
pub mod model;
pub mod privilege;
pub mod report;
pub mod runtime;
pub mod scenario;
pub mod shard;
pub mod sim;
pub mod sink;
pub mod telemetry;
pub mod top;
pub mod train;
pub mod wire;
pub mod xdp;

/// Version string: crate version, commit, build profile.
pub fn version_string() -> String {
    format!(
        "klais {} (commit {}, {} build, {})",
        env!("CARGO_PKG_VERSION"),
        env!("KLAIS_COMMIT"),
        env!("KLAIS_PROFILE"),
        env!("KLAIS_TARGET")
    )
}
