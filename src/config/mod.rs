//! The configuration: one TOML file, every field documented where it is declared
//! (those `///` comments are the user documentation), defaults from named
//! functions, unknown keys refused, and one [`Config::validate`] that reports
//! every cross-field conflict at once, each naming its keys and the fix.
//!
//! `config.toml` at the repository root is the default configuration, embedded
//! in the binary: `klais run` without `--config` uses it. A test keeps the file
//! and [`Config::default`] identical.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod kafka;
pub mod rate;
pub use kafka::{Dapb, Journal, Kafka, Security, OWNED_LIBRDKAFKA_KEYS};

use crate::handoff::RECORD_HEADER_LEN;
use crate::wire::{HEADER_LEN, MAX_DATAGRAM};

/// The default configuration file, as shipped (repository root `config.toml`).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config.toml");

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where datagrams come from.
    #[serde(default)]
    pub ingest: Ingest,
    /// Wire protocol checks.
    #[serde(default)]
    pub protocol: Protocol,
    /// Per-device sequence tracking.
    #[serde(default)]
    pub sequence: Sequence,
    /// Rings between cores.
    #[serde(default)]
    pub pipeline: Pipeline,
    /// Shard-wide admission (the shard bucket, of the Dam when `[dam]` is on).
    #[serde(default)]
    pub admission: Admission,
    /// The Dam: per-device buckets and the overflow queue on every shard.
    #[serde(default)]
    pub dam: DamSection,
    /// Which CPU runs which role.
    #[serde(default)]
    pub cores: Cores,
    /// Where accepted records go.
    #[serde(default)]
    pub output: Output,
    /// Counters and live figures.
    #[serde(default)]
    pub telemetry: Telemetry,
    /// The XDP filter in the kernel.
    #[serde(default)]
    pub xdp: Xdp,
    /// The models: in-kernel classifier, per-shard window model.
    #[serde(default)]
    pub model: ModelSection,
    /// Device authentication (protocol v2): keys and per-port policy.
    #[serde(default)]
    pub auth: AuthSection,
    /// The HTTP server of the control core: /metrics, /health, /ready and
    /// the admin API.
    #[serde(default)]
    pub admin: Admin,
    /// Capabilities kept after start-up.
    #[serde(default)]
    pub privilege: Privilege,
}

/// `[auth]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Key file for protocol v2 devices: one per line, `<device id> <32 hex
    /// digits>` (a 128-bit SipHash-2-4 key), `#` comments. Must not be
    /// readable by group or others (`chmod 600`). Omitted: no v2 device can
    /// authenticate (their datagrams are dropped as `unknown_device`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<PathBuf>,
    /// What every port not listed in `ports` takes: `"v1"` (protocol v1
    /// only), `"v2"` (authenticated v2 only) or `"both"`.
    #[serde(default)]
    pub policy: crate::wire::policy::Policy,
    /// Per-port exceptions, e.g. `ports = { "7701" = "v2" }` (at most 16).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub ports: std::collections::BTreeMap<String, crate::wire::policy::Policy>,
    /// File where each v2 device's highest authenticated sequence is saved
    /// at a clean stop and read at start, so datagrams captured before a
    /// restart are replays after it (default /var/lib/klais/replay-state).
    /// After a crash the windows start from the last clean stop's state.
    #[serde(
        default = "default_replay_state",
        skip_serializing_if = "Option::is_none"
    )]
    pub replay_state: Option<PathBuf>,
}

fn default_replay_state() -> Option<PathBuf> {
    Some(PathBuf::from("/var/lib/klais/replay-state"))
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            keys: None,
            policy: crate::wire::policy::Policy::default(),
            ports: std::collections::BTreeMap::new(),
            replay_state: default_replay_state(),
        }
    }
}

impl AuthSection {
    /// The policies the shards apply (ports already validated).
    pub fn port_policies(&self) -> crate::wire::policy::PortPolicies {
        let ports: Vec<(u16, crate::wire::policy::Policy)> = self
            .ports
            .iter()
            .filter_map(|(p, pol)| p.parse().ok().map(|p| (p, *pol)))
            .collect();
        crate::wire::policy::PortPolicies::new(self.policy, &ports)
    }
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Serve /metrics, /health, /ready and the admin API.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address of the HTTP server. Loopback by default: anything else exposes
    /// the metrics and the (token-protected) admin API to the network.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// File holding the bearer token that admin writes need (`Authorization:
    /// Bearer <token>`); must not be readable by group or others. Omitted:
    /// every write is refused (the API is read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            enabled: true,
            listen: default_admin_listen(),
            token_file: None,
        }
    }
}

/// `[privilege]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Privilege {
    /// After the XDP filter is attached and every socket is open, drop every
    /// capability but those still needed (docs/operating.md, "Least privilege"):
    /// CAP_BPF and CAP_NET_ADMIN with the XDP filter, none without it.
    #[serde(default = "default_true")]
    pub drop_capabilities: bool,
}

impl Default for Privilege {
    fn default() -> Self {
        Privilege {
            drop_capabilities: true,
        }
    }
}

/// What decides storms in the control core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PredictorKind {
    /// The rule-based predictor (src/control/predict.rs).
    #[default]
    Rule,
    /// Each shard's GGML window model (`model.window`).
    Window,
}

/// `[model]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The in-kernel int8 classifier to load into the XDP program at start
    /// (needs `xdp.iface`). Omitted: off. `klais model load` swaps it live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<std::path::PathBuf>,
    /// Classes the classifier drops in the kernel (flood, sweep, replay);
    /// the others are marked (Kafka header `model`). Default: none dropped.
    #[serde(default)]
    pub drop_classes: Vec<String>,
    /// What decides storm onset and end in the control core: "rule" or
    /// "window" (every shard runs `window` through GGML once per tick; needs
    /// the control core, i.e. `[dam]` on).
    #[serde(default)]
    pub predictor: PredictorKind,
    /// The window model file (read when `predictor = "window"`).
    #[serde(default = "default_window_model")]
    pub window: std::path::PathBuf,
}

fn default_window_model() -> std::path::PathBuf {
    "models/window.json".into()
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            classifier: None,
            drop_classes: Vec::new(),
            predictor: PredictorKind::Rule,
            window: default_window_model(),
        }
    }
}

/// `[xdp]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Xdp {
    /// Interface to attach the XDP filter to. Omitted: klais runs without XDP
    /// (and says so once at start). Needs root or CAP_BPF + CAP_NET_ADMIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// `"native"` (in the driver), `"generic"` (any interface, slower) or
    /// `"auto"` (native when the driver supports it).
    #[serde(default)]
    pub mode: AttachMode,
    /// UDP ports that carry klais traffic (1 to 8). Omitted: the port of
    /// `ingest.listen`. Everything else passes the filter untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u16>>,
    /// Drop what the filter refuses. false: count it and let it through (dry run).
    #[serde(default = "default_true")]
    pub enforce: bool,
    /// Per-device rate in packets per second. Omitted: no per-device limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_rate_pps: Option<u64>,
    /// Per-device burst, packets. Only with `device_rate_pps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_burst: Option<u64>,
    /// Budget for all klais traffic, packets per second (split evenly per
    /// CPU). Omitted: no global budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_budget_pps: Option<u64>,
    /// Global burst, packets. Only with `global_budget_pps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_burst: Option<u64>,
    /// Send sampled device events (new device, sequence reset, rate limited)
    /// to user space.
    #[serde(default = "default_true")]
    pub events: bool,
    /// Cap on those events per second; events over it are counted, not sent.
    #[serde(default = "default_events_per_sec")]
    pub events_per_sec: u64,
    /// Devices the kernel keeps token buckets for: max_devices / 4 sets of 4
    /// ways, 32 bytes each; the way admitted least recently goes to a new
    /// device, never one that is over its rate.
    #[serde(default = "default_xdp_max_devices")]
    pub max_devices: u32,
}

fn default_true() -> bool {
    true
}
fn default_events_per_sec() -> u64 {
    1000
}
fn default_xdp_max_devices() -> u32 {
    1 << 20
}

impl Default for Xdp {
    fn default() -> Self {
        Self {
            iface: None,
            mode: AttachMode::Auto,
            ports: None,
            enforce: true,
            device_rate_pps: None,
            device_burst: None,
            global_budget_pps: None,
            global_burst: None,
            events: true,
            events_per_sec: default_events_per_sec(),
            max_devices: default_xdp_max_devices(),
        }
    }
}

impl Xdp {
    /// The ports the filter treats as klais traffic.
    pub fn effective_ports(&self, listen: &SocketAddr) -> Vec<u16> {
        self.ports.clone().unwrap_or_else(|| vec![listen.port()])
    }

    /// The run-time limits these settings describe.
    pub fn limits(&self) -> Result<rate::Limits, rate::RateError> {
        use rate::Rate;
        let rate =
            |pps: Option<u64>, burst: Option<u64>| -> Result<Option<Rate>, rate::RateError> {
                match pps {
                    Some(p) => Rate::new(p, burst.unwrap_or(p.max(1))).map(Some),
                    None => Ok(None),
                }
            };
        let l = rate::Limits {
            device: rate(self.device_rate_pps, self.device_burst)?,
            global: rate(self.global_budget_pps, self.global_burst)?,
            events_per_sec: self.events_per_sec,
        };
        l.validate()?;
        Ok(l)
    }
}

/// How datagrams are received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// A UDP socket per shard (SO_REUSEPORT, large receive buffer) driven by
    /// io_uring through glommio. Works everywhere, needs no XDP.
    Udp,
    /// An AF_XDP socket per NIC queue (shard i owns queue i), fed by the XDP
    /// filter on `xdp.iface`. Needs root and `xdp.iface`.
    AfXdp,
}

/// `[ingest.af_xdp]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfXdp {
    /// UMEM frames per socket (power of two). Memory: frames x frame_size.
    #[serde(default = "default_xsk_frames")]
    pub frames: u32,
    /// Bytes per UMEM frame: 2048 or 4096.
    #[serde(default = "default_xsk_frame_size")]
    pub frame_size: u32,
    /// RX ring descriptors (power of two, at most `frames`).
    #[serde(default = "default_xsk_rx_ring")]
    pub rx_ring: u32,
    /// Frames taken per receive call.
    #[serde(default = "default_xsk_batch")]
    pub batch: u32,
}

fn default_xsk_frames() -> u32 {
    8192
}
fn default_xsk_frame_size() -> u32 {
    2048
}
fn default_xsk_rx_ring() -> u32 {
    4096
}
fn default_xsk_batch() -> u32 {
    64
}

impl Default for AfXdp {
    fn default() -> Self {
        Self {
            frames: default_xsk_frames(),
            frame_size: default_xsk_frame_size(),
            rx_ring: default_xsk_rx_ring(),
            batch: default_xsk_batch(),
        }
    }
}

/// `[admission]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Admission {
    /// Messages per second each shard admits (a token bucket on the shard);
    /// over it: `rate_limited`. Omitted: no shard-wide limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_rate_pps: Option<u64>,
    /// Burst of that bucket, messages. Only with `shard_rate_pps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_burst: Option<u64>,
}

/// `[dam]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DamSection {
    /// Messages per second each device may send; over it (and its burst) its
    /// messages wait in the shard's Dam queue and leave round-robin as budgets
    /// allow. Omitted: the Dam is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_rate_pps: Option<u64>,
    /// Messages a device may send at once above its rate. Omitted: twice the
    /// rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_burst: Option<u64>,
    /// Messages each shard's Dam queue holds in normal operation (the control
    /// core may enlarge it up to `queue_bytes`); over it: `queue_full`.
    #[serde(default = "default_dam_queue_messages")]
    pub queue_messages: u64,
    /// Memory of each shard's Dam queue for payloads, bytes (256-byte chunks).
    #[serde(default = "default_dam_queue_bytes")]
    pub queue_bytes: u64,
    /// Devices each shard's Dam tracks (a bounded table).
    #[serde(default = "default_dam_max_devices")]
    pub max_devices: u64,
}

fn default_dam_queue_messages() -> u64 {
    65_536
}
fn default_dam_queue_bytes() -> u64 {
    64 << 20
}
fn default_dam_max_devices() -> u64 {
    1 << 17
}

impl Default for DamSection {
    fn default() -> Self {
        DamSection {
            device_rate_pps: None,
            device_burst: None,
            queue_messages: default_dam_queue_messages(),
            queue_bytes: default_dam_queue_bytes(),
            max_devices: default_dam_max_devices(),
        }
    }
}

/// `[ingest]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingest {
    /// Receive backend. `"udp"` today; `"af_xdp"` arrives with the kernel data plane.
    #[serde(default = "default_backend")]
    pub backend: Backend,
    /// Address and UDP port devices send to.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Socket receive buffer per shard, bytes (SO_RCVBUF). Above
    /// `net.core.rmem_max` klais uses SO_RCVBUFFORCE (needs CAP_NET_ADMIN) and
    /// warns if it still gets less.
    #[serde(default = "default_recv_buffer_bytes")]
    pub recv_buffer_bytes: usize,
    /// UDP backend: a shard waits up to this many microseconds for 32
    /// datagrams before it wakes for what has come (0: it wakes for the
    /// first). 0 to 1000.
    #[serde(default = "default_coalesce_us")]
    pub coalesce_us: u32,
    /// Shards: pinned cores each owning one receive queue (an AF_XDP socket on
    /// NIC queue i, or one SO_REUSEPORT UDP socket) and the devices whose
    /// hash falls to it. 1 to 64.
    #[serde(default = "default_shards")]
    pub shards: u16,
    /// AF_XDP socket sizes (backend = "af_xdp").
    #[serde(default)]
    pub af_xdp: AfXdp,
}

fn default_shards() -> u16 {
    1
}

/// `[protocol]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    /// Longest payload accepted, bytes; longer datagrams are rejected as
    /// `payload_too_large`. At most 65485 (the largest UDP payload minus the
    /// 22-byte header).
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Reject payloads that are not valid JSON (`payload_not_json`). Costs a
    /// JSON parse per message (see docs/figures.md).
    #[serde(default)]
    pub validate_json: bool,
}

/// `[sequence]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sequence {
    /// Devices whose sequence state each shard keeps; beyond this the least
    /// recently seen device of a full set is forgotten (counted as an eviction).
    /// Memory: about 48 bytes per device.
    #[serde(default = "default_max_devices")]
    pub max_devices: usize,
    /// A sequence number at or below this value arriving behind the device's
    /// highest is a restart (`reset`, a reconnection-storm signal), not a
    /// duplicate.
    #[serde(default = "default_reset_window")]
    pub reset_window: u32,
}

/// `[pipeline]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Capacity of each shard → output ring, bytes. A record takes 40 bytes plus
    /// its payload; when the ring is full new messages are dropped as `queue_full`.
    #[serde(default = "default_ring_bytes")]
    pub ring_bytes: usize,
    /// Each shard's overflow queue, bytes: where records wait, in order, while
    /// the output ring is full. Full too: `queue_full`.
    #[serde(default = "default_overflow_bytes")]
    pub overflow_bytes: usize,
    /// Capacity of each ring between two shards (messages for devices another
    /// shard owns), bytes.
    #[serde(default = "default_mesh_bytes")]
    pub mesh_bytes: usize,
}

fn default_overflow_bytes() -> usize {
    4 << 20
}
fn default_mesh_bytes() -> usize {
    1 << 20
}

/// `[cores]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Cores {
    /// A core map (numa/*.toml, from `klais cores plan`): shard CPUs and
    /// queues, batcher CPU. Checked against the machine at start; a map that
    /// fails the check is refused. Not with `shard_cpus` / `output_cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<PathBuf>,
    /// CPUs the shard executors are pinned to, one per shard in shard order.
    /// Omit to let klais choose: the highest online CPUs (CPU 0 usually
    /// carries housekeeping and IRQs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_cpus: Option<Vec<usize>>,
    /// CPU the output (batcher) stage is pinned to. Omit to let klais choose:
    /// another online CPU than the shard's when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cpu: Option<usize>,
}

/// Where accepted records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// One JSON object per line on standard output (debug sink).
    Stdout,
    /// One JSON object per line appended to `output.path` (debug sink).
    File,
    /// Count and discard: measures the ingest path alone (benchmarks, perf).
    Null,
    /// The Kafka producer (`[output.kafka]`), with adaptive batching and the
    /// spill journal.
    Kafka,
}

/// `[output]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// `"kafka"`, or a debug sink: `"stdout"`, `"file"` or `"null"`.
    #[serde(default = "default_sink")]
    pub sink: SinkKind,
    /// File the `"file"` sink appends to. Only with `sink = "file"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The Kafka producer (used with `sink = "kafka"`).
    #[serde(default)]
    pub kafka: Kafka,
}

/// `[telemetry]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// How often shards publish their counters and `klais run` prints live
    /// figures (to standard error), milliseconds. 0 disables the live line.
    #[serde(default = "default_stats_interval_ms")]
    pub stats_interval_ms: u64,
}

fn default_backend() -> Backend {
    Backend::Udp
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7700))
}
fn default_coalesce_us() -> u32 {
    500
}

fn default_recv_buffer_bytes() -> usize {
    32 << 20
}
fn default_max_payload_bytes() -> usize {
    1400
}
fn default_max_devices() -> usize {
    1 << 20
}
fn default_reset_window() -> u32 {
    4
}
fn default_ring_bytes() -> usize {
    16 << 20
}
fn default_sink() -> SinkKind {
    SinkKind::Kafka
}
fn default_stats_interval_ms() -> u64 {
    1000
}

impl Default for Ingest {
    fn default() -> Self {
        Self {
            backend: default_backend(),
            listen: default_listen(),
            recv_buffer_bytes: default_recv_buffer_bytes(),
            coalesce_us: default_coalesce_us(),
            shards: default_shards(),
            af_xdp: AfXdp::default(),
        }
    }
}
impl Default for Protocol {
    fn default() -> Self {
        Self {
            max_payload_bytes: default_max_payload_bytes(),
            validate_json: false,
        }
    }
}
impl Default for Sequence {
    fn default() -> Self {
        Self {
            max_devices: default_max_devices(),
            reset_window: default_reset_window(),
        }
    }
}
impl Default for Pipeline {
    fn default() -> Self {
        Self {
            ring_bytes: default_ring_bytes(),
            overflow_bytes: default_overflow_bytes(),
            mesh_bytes: default_mesh_bytes(),
        }
    }
}
impl Default for Output {
    fn default() -> Self {
        Self {
            sink: default_sink(),
            path: None,
            kafka: Kafka::default(),
        }
    }
}
impl Default for Telemetry {
    fn default() -> Self {
        Self {
            stats_interval_ms: default_stats_interval_ms(),
        }
    }
}

/// How to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    /// In the driver (fastest; the driver must support XDP).
    Native,
    /// In the generic network stack (any interface; slower).
    Generic,
    /// Native if the driver supports it, else generic.
    #[default]
    Auto,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Auto => "auto",
        })
    }
}

impl std::str::FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(AttachMode::Native),
            "generic" => Ok(AttachMode::Generic),
            "auto" => Ok(AttachMode::Auto),
            _ => Err(format!(
                "unknown XDP mode {s:?}: use native, generic or auto"
            )),
        }
    }
}

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// File path.
        path: String,
        /// OS error.
        reason: String,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type; toml's message
    /// names the key, line and column.
    #[error("{origin}: {message}")]
    Parse {
        /// File path or "<embedded default>".
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// A value out of range or in conflict with another.
    #[error("{keys}: {problem}; fix: {fix}")]
    Invalid {
        /// The key or keys involved, dotted.
        keys: String,
        /// What is wrong, with the numbers.
        problem: String,
        /// What to change.
        fix: String,
    },
}

fn invalid(keys: &str, problem: String, fix: &str) -> ConfigError {
    ConfigError::Invalid {
        keys: keys.to_string(),
        problem,
        fix: fix.to_string(),
    }
}

impl Config {
    /// Parses a configuration from TOML text. `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, Vec<ConfigError>> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            vec![ConfigError::Parse {
                origin: origin.to_string(),
                message: e.to_string().trim_end().to_string(),
            }]
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a file; `None` means the embedded default.
    pub fn load(path: Option<&Path>) -> Result<Config, Vec<ConfigError>> {
        match path {
            None => Config::from_toml(DEFAULT_CONFIG_TOML, "<embedded default config.toml>"),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    vec![ConfigError::Read {
                        path: p.display().to_string(),
                        reason: e.to_string(),
                    }]
                })?;
                Config::from_toml(&text, &p.display().to_string())
            }
        }
    }

    /// Every range and cross-field problem, all at once.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errs = Vec::new();
        self.check_protocol(&mut errs);
        self.check_auth_and_models(&mut errs);
        self.check_ingest_and_cores(&mut errs);
        self.check_rings_and_admission(&mut errs);
        self.check_output_and_dam(&mut errs);
        self.check_xdp(&mut errs);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// The protocol section.
    fn check_protocol(&self, errs: &mut Vec<ConfigError>) {
        let max_payload_limit = MAX_DATAGRAM - HEADER_LEN;
        let p = &self.protocol;
        if p.max_payload_bytes > max_payload_limit {
            errs.push(invalid(
                "protocol.max_payload_bytes",
                format!(
                    "{} exceeds the largest UDP payload after the header ({max_payload_limit})",
                    p.max_payload_bytes
                ),
                "set it to 65485 or less",
            ));
        }
    }

    /// Device authentication and the models (their files are read by `runtime::preflight`).
    fn check_auth_and_models(&self, errs: &mut Vec<ConfigError>) {
        let a = &self.auth;
        if a.ports.len() > crate::wire::policy::MAX_PORT_POLICIES {
            errs.push(invalid(
                "auth.ports",
                format!(
                    "{} ports listed; at most {} may have their own policy",
                    a.ports.len(),
                    crate::wire::policy::MAX_PORT_POLICIES
                ),
                "give the common policy to auth.policy and list only the exceptions",
            ));
        }
        for p in a.ports.keys() {
            if p.parse::<u16>().map_or(true, |p| p == 0) {
                errs.push(invalid(
                    &format!("auth.ports.{p}"),
                    format!("{p:?} is not a UDP port"),
                    "use a port number 1-65535 as the key, e.g. ports = { \"7701\" = \"v2\" }",
                ));
            }
        }
        let needs_keys = a.policy == crate::wire::policy::Policy::V2
            || a.ports
                .values()
                .any(|p| *p == crate::wire::policy::Policy::V2);
        if needs_keys && a.keys.is_none() {
            errs.push(invalid(
                "auth.policy, auth.keys",
                "a port requires authenticated v2 but no key file is set".into(),
                "set auth.keys to the device key file, or allow v1 on that port",
            ));
        }
        // The files themselves (keys, token, models, core map) are read once,
        // by `runtime::preflight`, not here: validation is pure.
        if self.model.classifier.is_some() && self.xdp.iface.is_none() {
            errs.push(invalid(
                "model.classifier",
                "the classifier runs inside the XDP filter, which is off".to_string(),
                "set xdp.iface to the interface devices send to, or remove model.classifier",
            ));
        }
        if self.model.predictor == PredictorKind::Window && self.dam.device_rate_pps.is_none() {
            errs.push(invalid(
                "model.predictor",
                "\"window\" feeds the control core, which runs only with the Dam on".to_string(),
                "set dam.device_rate_pps, or predictor = \"rule\"",
            ));
        }
    }

    /// The receive side: listen address, buffers, shards, their CPUs, AF_XDP.
    fn check_ingest_and_cores(&self, errs: &mut Vec<ConfigError>) {
        if self.ingest.listen.port() == 0 {
            errs.push(invalid(
                "ingest.listen",
                "port 0 would bind a random port devices cannot know".to_string(),
                "give a fixed port, e.g. \"0.0.0.0:7700\"",
            ));
        }
        if self.ingest.recv_buffer_bytes < 64 * 1024 {
            errs.push(invalid(
                "ingest.recv_buffer_bytes",
                format!(
                    "{} bytes cannot hold even one maximum-size datagram",
                    self.ingest.recv_buffer_bytes
                ),
                "use at least 65536 (the default is 33554432)",
            ));
        }
        if self.ingest.coalesce_us > 1000 {
            errs.push(invalid(
                "ingest.coalesce_us",
                format!(
                    "{} us is longer than a shard's whole wait (1000 us)",
                    self.ingest.coalesce_us
                ),
                "use 0 to 1000 (the default is 500; 0 wakes the shard for every datagram)",
            ));
        }
        let p = &self.protocol;
        let shards = self.ingest.shards;
        if !(1..=64).contains(&shards) {
            errs.push(invalid(
                "ingest.shards",
                format!("{shards} is outside 1..=64"),
                "use one shard per NIC queue you want to serve",
            ));
        }
        if self.cores.map.is_some()
            && (self.cores.shard_cpus.is_some() || self.cores.output_cpu.is_some())
        {
            errs.push(invalid(
                "cores.map, cores.shard_cpus / cores.output_cpu",
                "a core map and explicit CPUs both place the cores".to_string(),
                "keep one: the map, or the CPU keys",
            ));
        }
        if let Some(cpus) = &self.cores.shard_cpus {
            if cpus.len() != usize::from(shards) {
                errs.push(invalid(
                    "cores.shard_cpus, ingest.shards",
                    format!("{} CPUs listed for {shards} shards", cpus.len()),
                    "list exactly one CPU per shard, or omit cores.shard_cpus",
                ));
            }
            let mut sorted = cpus.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != cpus.len() {
                errs.push(invalid(
                    "cores.shard_cpus",
                    format!("{cpus:?} lists a CPU twice"),
                    "give each shard its own CPU",
                ));
            }
        }
        if self.ingest.backend == Backend::AfXdp {
            if self.xdp.iface.is_none() {
                errs.push(invalid(
                    "ingest.backend, xdp.iface",
                    "backend = \"af_xdp\" receives from the XDP filter, which needs an interface"
                        .to_string(),
                    "set xdp.iface, or use backend = \"udp\"",
                ));
            }
            let x = &self.ingest.af_xdp;
            if !x.frames.is_power_of_two()
                || !x.rx_ring.is_power_of_two()
                || x.rx_ring > x.frames
                || !(x.frame_size == 2048 || x.frame_size == 4096)
                || x.batch == 0
                || x.batch > x.rx_ring
            {
                errs.push(invalid(
                    "ingest.af_xdp",
                    format!(
                        "frames {} / rx_ring {} / frame_size {} / batch {} do not fit together",
                        x.frames, x.rx_ring, x.frame_size, x.batch
                    ),
                    "frames and rx_ring powers of two with rx_ring <= frames, frame_size 2048 or 4096, 1 <= batch <= rx_ring",
                ));
            }
            // Headers (Ethernet + 2 VLAN tags + IPv4 with options + UDP) and the
            // 256 bytes of XDP headroom the kernel keeps in every frame.
            if p.max_payload_bytes.saturating_add(14 + 8 + 60 + 8 + 256) > x.frame_size as usize {
                errs.push(invalid(
                    "protocol.max_payload_bytes, ingest.af_xdp.frame_size",
                    format!(
                        "a {}-byte payload with its headers does not fit a {}-byte frame",
                        p.max_payload_bytes, x.frame_size
                    ),
                    "lower protocol.max_payload_bytes (AF_XDP frames carry one datagram each)",
                ));
            }
        }
    }

    /// Ring sizes, the admission bucket and the sequence table.
    fn check_rings_and_admission(&self, errs: &mut Vec<ConfigError>) {
        // Saturating: an absurd max_payload_bytes is reported by
        // check_protocol, and must not overflow these checks (found by fuzzing).
        let max_record = RECORD_HEADER_LEN.saturating_add(self.protocol.max_payload_bytes);
        for (key, bytes) in [
            ("pipeline.overflow_bytes", self.pipeline.overflow_bytes),
            ("pipeline.mesh_bytes", self.pipeline.mesh_bytes),
        ] {
            if bytes < max_record.saturating_mul(2) {
                errs.push(invalid(
                    key,
                    format!("{bytes} bytes cannot hold two records of {max_record} bytes"),
                    "raise it (the default is several MiB) or lower protocol.max_payload_bytes",
                ));
            }
        }
        let a = &self.admission;
        if a.shard_burst.is_some() && a.shard_rate_pps.is_none() {
            errs.push(invalid(
                "admission.shard_burst, admission.shard_rate_pps",
                "a burst without a rate".to_string(),
                "set admission.shard_rate_pps too, or remove admission.shard_burst",
            ));
        }
        if let Some(r) = a.shard_rate_pps {
            if rate::Rate::new(r, a.shard_burst.unwrap_or(r.max(1))).is_err() {
                errs.push(invalid(
                    "admission.shard_rate_pps, admission.shard_burst",
                    format!("rate {r} / burst {:?} out of range", a.shard_burst),
                    "rates and bursts are 1..=1000000000",
                ));
            }
        }
        if self.pipeline.ring_bytes < max_record.saturating_mul(2) {
            errs.push(invalid(
                "pipeline.ring_bytes, protocol.max_payload_bytes",
                format!(
                    "a ring of {} bytes cannot hold two records of {max_record} bytes (40-byte header + max_payload_bytes)",
                    self.pipeline.ring_bytes
                ),
                "raise pipeline.ring_bytes or lower protocol.max_payload_bytes",
            ));
        }
        if self.pipeline.ring_bytes > 1 << 32 {
            errs.push(invalid(
                "pipeline.ring_bytes",
                format!("{} bytes is more than 4 GiB", self.pipeline.ring_bytes),
                "use at most 4294967296",
            ));
        }
        let s = &self.sequence;
        if s.max_devices < 4 || s.max_devices > 1 << 28 {
            errs.push(invalid(
                "sequence.max_devices",
                format!("{} is outside 4..=268435456", s.max_devices),
                "pick the number of devices one shard should remember",
            ));
        }
        if s.reset_window > i32::MAX as u32 {
            errs.push(invalid(
                "sequence.reset_window",
                format!(
                    "{} would make half the sequence space a reset",
                    s.reset_window
                ),
                "use a small value such as 4",
            ));
        }
    }

    /// The output, the Dam and the counter interval.
    fn check_output_and_dam(&self, errs: &mut Vec<ConfigError>) {
        match (self.output.sink, &self.output.path) {
            (SinkKind::File, None) => errs.push(invalid(
                "output.sink, output.path",
                "sink = \"file\" needs a path".to_string(),
                "add output.path = \"/var/lib/klais/records.jsonl\" or choose another sink",
            )),
            (SinkKind::Stdout | SinkKind::Null | SinkKind::Kafka, Some(_)) => errs.push(invalid(
                "output.sink, output.path",
                format!(
                    "output.path is set but sink = \"{}\" does not write a file",
                    self.output.sink.name()
                ),
                "remove output.path or set sink = \"file\"",
            )),
            _ => {}
        }
        self.output.kafka.validate(errs);
        let d = &self.dam;
        if d.device_rate_pps == Some(0) {
            errs.push(invalid(
                "dam.device_rate_pps",
                "0 would queue every message forever".into(),
                "give a rate above 0, or omit it to turn the Dam off",
            ));
        }
        if d.device_burst.is_some() && d.device_rate_pps.is_none() {
            errs.push(invalid(
                "dam.device_burst, dam.device_rate_pps",
                "a burst without a rate".into(),
                "set dam.device_rate_pps too, or remove dam.device_burst",
            ));
        }
        if d.queue_bytes < 1 << 16 || d.queue_bytes > 64 << 30 {
            errs.push(invalid(
                "dam.queue_bytes",
                format!("{} is out of range", d.queue_bytes),
                "use 65536 to 68719476736 (default 67108864)",
            ));
        }
        if d.queue_messages == 0 || d.max_devices < 4 || d.max_devices > 1 << 26 {
            errs.push(invalid(
                "dam.queue_messages, dam.max_devices",
                format!(
                    "queue_messages {} and max_devices {} (need ≥ 1 and 4..=67108864)",
                    d.queue_messages, d.max_devices
                ),
                "use the defaults 65536 and 131072",
            ));
        }
        let t = self.telemetry.stats_interval_ms;
        if t != 0 && !(10..=60_000).contains(&t) {
            errs.push(invalid(
                "telemetry.stats_interval_ms",
                format!("{t} is outside 10..=60000"),
                "use 1000 for one line per second, or 0 to disable",
            ));
        }
    }

    /// The XDP filter.
    fn check_xdp(&self, errs: &mut Vec<ConfigError>) {
        let x = &self.xdp;
        if let Some(ports) = &x.ports {
            if ports.is_empty() || ports.len() > 8 || ports.contains(&0) {
                errs.push(invalid(
                    "xdp.ports",
                    format!("{ports:?} must list 1 to 8 non-zero ports"),
                    "list the UDP ports devices send to, or omit it to use ingest.listen's port",
                ));
            } else if !ports.contains(&self.ingest.listen.port()) {
                errs.push(invalid(
                    "xdp.ports, ingest.listen",
                    format!(
                        "port {} of ingest.listen is not in xdp.ports {ports:?}: its traffic would bypass the filter",
                        self.ingest.listen.port()
                    ),
                    "add the listen port to xdp.ports",
                ));
            }
        }
        if x.device_burst.is_some() && x.device_rate_pps.is_none() {
            errs.push(invalid(
                "xdp.device_burst, xdp.device_rate_pps",
                "a burst without a rate".to_string(),
                "set xdp.device_rate_pps too, or remove xdp.device_burst",
            ));
        }
        if x.global_burst.is_some() && x.global_budget_pps.is_none() {
            errs.push(invalid(
                "xdp.global_burst, xdp.global_budget_pps",
                "a burst without a budget".to_string(),
                "set xdp.global_budget_pps too, or remove xdp.global_burst",
            ));
        }
        if let Err(e) = x.limits() {
            errs.push(invalid(
                "xdp.device_rate_pps / device_burst / global_budget_pps / global_burst / events_per_sec",
                e.to_string(),
                "rates and bursts are 1..=1000000000; events_per_sec is 1..=1000000",
            ));
        }
        if x.max_devices < 1024 {
            errs.push(invalid(
                "xdp.max_devices",
                format!("{} is below 1024", x.max_devices),
                "use at least 1024 (default 1048576)",
            ));
        }
        if let Some(iface) = &x.iface {
            if iface.is_empty() || iface.len() > 15 || iface.contains('/') {
                errs.push(invalid(
                    "xdp.iface",
                    format!("{iface:?} is not a valid interface name"),
                    "use the name `ip link` shows, e.g. \"eth0\"",
                ));
            }
        }
    }

    /// The effective configuration as TOML (what `klais config check` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

impl Backend {
    /// The name used in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Udp => "udp",
            Backend::AfXdp => "af_xdp",
        }
    }
}

impl SinkKind {
    /// The name used in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Stdout => "stdout",
            SinkKind::File => "file",
            SinkKind::Kafka => "kafka",
            SinkKind::Null => "null",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        Config::from_toml(text, "test.toml")
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_shipped_config_toml_is_exactly_the_defaults() {
        let cfg = Config::load(None).unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn an_empty_file_means_all_defaults() {
        assert_eq!(Config::from_toml("", "x").unwrap(), Config::default());
    }

    #[test]
    fn the_printed_effective_config_parses_back_to_itself() {
        let mut cfg = Config::default();
        cfg.cores.shard_cpus = Some(vec![1]);
        cfg.output.sink = SinkKind::File;
        cfg.output.path = Some("/tmp/x.jsonl".into());
        assert_eq!(Config::from_toml(&cfg.to_toml(), "x").unwrap(), cfg);
    }

    #[test]
    fn an_unknown_key_is_named() {
        let e = errors("[ingest]\nlisten_addr = \"0.0.0.0:1\"\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("unknown field `listen_addr`"), "{}", e[0]);
        assert!(e[0].contains("test.toml"), "{}", e[0]);
    }

    #[test]
    fn a_wrong_type_is_named_with_its_key() {
        let e = errors("[protocol]\nmax_payload_bytes = \"big\"\n");
        assert!(e[0].contains("max_payload_bytes"), "{}", e[0]);
    }

    #[test]
    fn every_conflict_is_reported_at_once_with_keys_and_fix() {
        let e = errors(
            "[protocol]\nmax_payload_bytes = 70000\n[pipeline]\nring_bytes = 1000\n\
             [output]\nsink = \"file\"\n[telemetry]\nstats_interval_ms = 5\n",
        );
        let all = e.join("\n");
        for key in [
            "protocol.max_payload_bytes",
            "pipeline.ring_bytes",
            "output.sink, output.path",
            "telemetry.stats_interval_ms",
        ] {
            assert!(all.contains(key), "missing {key} in:\n{all}");
        }
        assert!(e.iter().all(|m| m.contains("fix:")), "{all}");
    }

    #[test]
    fn kafka_security_settings_are_checked_with_keys_and_fixes() {
        // librdkafka cannot check a name other than the broker's own.
        let e = errors(
            "[output.kafka]\nclient = \"librdkafka\"\n[output.kafka.security]\n\
             protocol = \"ssl\"\nserver_name = \"kafka.example.net\"\n",
        )
        .join("\n");
        assert!(e.contains("output.kafka.security.server_name"), "{e}");
        assert!(e.contains("client = \"native\""), "{e}");
        // Both clients take TLS, SASL and zstd.
        for client in ["native", "librdkafka"] {
            let ok = format!(
                "[output.kafka]\nclient = \"{client}\"\ncompression = \"zstd\"\n\
                 [output.kafka.security]\nprotocol = \"sasl_ssl\"\n\
                 sasl_username = \"klais\"\nsasl_password_file = \"/etc/pw\"\n"
            );
            Config::from_toml(&ok, "x").unwrap();
        }
        // SASL needs a user and a password file; PLAIN needs TLS.
        let e = errors(
            "[output.kafka]\nclient = \"native\"\n[output.kafka.security]\n\
             protocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\n",
        )
        .join("\n");
        for key in ["sasl_username", "sasl_password_file", "sasl_mechanism"] {
            assert!(
                e.contains(&format!("output.kafka.security.{key}")),
                "{key}: {e}"
            );
        }
        // Half a client certificate, an unknown mechanism.
        let e = errors(
            "[output.kafka]\nclient = \"native\"\n[output.kafka.security]\n\
             protocol = \"ssl\"\ncert_file = \"/a\"\nsasl_mechanism = \"GSSAPI\"\n",
        )
        .join("\n");
        assert!(
            e.contains("cert_file, output.kafka.security.key_file"),
            "{e}"
        );
        assert!(e.contains("GSSAPI"), "{e}");
        // OAUTHBEARER: librdkafka only, inside TLS, with its endpoint, client
        // and secret; its keys are refused with another mechanism.
        let oauth = "[output.kafka.security]\nprotocol = \"sasl_ssl\"\n\
                     sasl_mechanism = \"OAUTHBEARER\"\n\
                     oauth_token_endpoint = \"https://idp.example.net/token\"\n\
                     oauth_client_id = \"klais\"\noauth_client_secret_file = \"/etc/s\"\n";
        let e = errors(&format!("[output.kafka]\nclient = \"native\"\n{oauth}")).join("\n");
        assert!(
            e.contains("output.kafka.security.sasl_mechanism") && e.contains("librdkafka"),
            "{e}"
        );
        Config::from_toml(
            &format!("[output.kafka]\nclient = \"librdkafka\"\n{oauth}"),
            "x",
        )
        .unwrap();
        let e = errors(
            "[output.kafka]\nclient = \"librdkafka\"\n[output.kafka.security]\n\
             protocol = \"sasl_plaintext\"\nsasl_mechanism = \"OAUTHBEARER\"\n",
        )
        .join("\n");
        for key in [
            "protocol",
            "oauth_token_endpoint",
            "oauth_client_id",
            "oauth_client_secret_file",
        ] {
            assert!(
                e.contains(&format!("output.kafka.security.{key}")),
                "{key}: {e}"
            );
        }
        let e = errors(
            "[output.kafka.security]\nprotocol = \"sasl_ssl\"\nsasl_username = \"u\"\n\
             sasl_password_file = \"/p\"\noauth_client_id = \"klais\"\n",
        )
        .join("\n");
        assert!(e.contains("oauth_* keys are set"), "{e}");
        // A complete SCRAM-over-TLS section is accepted.
        let ok = "[output.kafka]\nclient = \"native\"\n[output.kafka.security]\n\
                  protocol = \"sasl_ssl\"\nca_file = \"/etc/ca.pem\"\n\
                  sasl_username = \"klais\"\nsasl_password_file = \"/etc/pw\"\n";
        let cfg = Config::from_toml(ok, "x").unwrap();
        assert!(cfg.output.kafka.security.tls() && cfg.output.kafka.security.sasl());
    }

    #[test]
    fn a_path_without_the_file_sink_is_a_conflict() {
        let e = errors("[output]\nsink = \"null\"\npath = \"/tmp/a\"\n");
        assert!(e[0].starts_with("output.sink, output.path"), "{}", e[0]);
    }

    #[test]
    fn port_zero_and_tiny_buffers_are_refused() {
        let e = errors("[ingest]\nlisten = \"127.0.0.1:0\"\nrecv_buffer_bytes = 1024\n").join("\n");
        assert!(e.contains("ingest.listen"), "{e}");
        assert!(e.contains("ingest.recv_buffer_bytes"), "{e}");
    }

    #[test]
    fn a_coalescing_wait_past_the_whole_wait_is_refused_with_the_fix() {
        let e = errors("[ingest]\ncoalesce_us = 1001\n").join("\n");
        assert!(e.contains("ingest.coalesce_us"), "{e}");
        assert!(e.contains("use 0 to 1000"), "{e}");
        let cfg = Config::from_toml("[ingest]\ncoalesce_us = 0\n", "x").unwrap();
        assert_eq!(cfg.ingest.coalesce_us, 0);
    }

    #[test]
    fn xdp_ports_must_cover_the_listen_port_and_bursts_need_rates() {
        let e = errors("[xdp]\nports = [9000]\ndevice_burst = 5\n").join("\n");
        assert!(e.contains("xdp.ports, ingest.listen"), "{e}");
        assert!(e.contains("xdp.device_burst, xdp.device_rate_pps"), "{e}");
    }

    #[test]
    fn xdp_limits_come_from_rates_and_bursts() {
        let cfg =
            Config::from_toml("[xdp]\ndevice_rate_pps = 10\ndevice_burst = 3\n", "x").unwrap();
        let l = cfg.xdp.limits().unwrap();
        assert_eq!(l.device.map(|r| (r.pps(), r.burst())), Some((10, 3)));
        assert_eq!(l.global, None);
        assert_eq!(cfg.xdp.effective_ports(&cfg.ingest.listen), vec![7700]);
    }

    #[test]
    fn af_xdp_needs_an_interface_and_frames_that_fit() {
        let e = errors("[ingest]\nbackend = \"af_xdp\"\n[ingest.af_xdp]\nframe_size = 1000\n")
            .join("\n");
        assert!(e.contains("ingest.backend, xdp.iface"), "{e}");
        assert!(e.contains("ingest.af_xdp"), "{e}");
    }

    #[test]
    fn shard_cpus_must_match_the_shard_count() {
        let e = errors("[ingest]\nshards = 2\n[cores]\nshard_cpus = [1]\n").join("\n");
        assert!(e.contains("cores.shard_cpus, ingest.shards"), "{e}");
        let e = errors("[ingest]\nshards = 2\n[cores]\nshard_cpus = [1, 1]\n").join("\n");
        assert!(e.contains("lists a CPU twice"), "{e}");
    }

    #[test]
    fn an_unknown_backend_is_refused_with_the_known_ones() {
        let e = errors("[ingest]\nbackend = \"dpdk\"\n");
        assert!(e[0].contains("unknown variant `dpdk`"), "{}", e[0]);
        assert!(e[0].contains("udp"), "{}", e[0]);
    }
}
