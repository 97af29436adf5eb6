//! The one wiring point: starts the cores, connects the rings, stops them in
//! order. Read [`start`] to see the whole topology of a running klais.
//!
//! ```text
//! XDP filter (xdp.iface) ─► queue i: AF_XDP socket i, or UDP socket i (SO_REUSEPORT)
//!                              │
//!                              ▼  glommio LocalExecutor, Placement::Fixed(shard_cpus[i])
//!                           shard i: parse → owner? ──mesh ring (rtrb)──► shard j
//!                                      admission → sequence tracking → overflow queue
//!                              │
//!                              ▼  one rtrb SPSC ring per shard
//!                           output stage (thread pinned to output_cpu): sink
//! ```
//!
//! Shutdown drains front to back: the stop flag ends each shard's receive
//! loop after it has read what its queue already held (an AF_XDP socket is
//! first unbound from the XSKMAP); each shard then closes its mesh rings,
//! admits what peers still forward, and moves its overflow queue into the
//! output ring; the output stage writes everything left and returns when every
//! ring is finished; the XDP filter is detached last. Nothing accepted is left
//! behind unless the output stalls for 5 s (then it is counted, loudly).

pub mod placement;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement as GlommioPlacement};

use crate::config::{Backend, Config, SinkKind};
use crate::handoff::{record_ring, RecordRx, RecordTx, RingError};
use crate::ingest::udp::{self, UdpError};
use crate::kafka::KafkaSnapshot;
use crate::shard::{Shard, ShardRings, ShardSettings, ShardSnapshot};
use crate::sink::{self, SinkError, SinkSnapshot, SinkTarget};
use crate::telemetry::Published;
use crate::wire::{ParseOptions, Reject};

pub use placement::{Placement, PlacementError};

/// Locked memory glommio refuses to start below (its `MIN_MEMLOCK_LIMIT`).
const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;

/// Why klais could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// RLIMIT_MEMLOCK is too low for io_uring and cannot be raised.
    #[error("locked-memory limit is {have_kib} KiB but the io_uring executor needs at least {need_kib} KiB; run as root, or raise it (`ulimit -l unlimited`, or LimitMEMLOCK=infinity in a systemd unit)")]
    MemLock {
        /// Current soft limit, KiB.
        have_kib: u64,
        /// Needed, KiB.
        need_kib: u64,
    },
    /// The configured CPUs cannot be used.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The receive socket could not be set up.
    #[error(transparent)]
    Udp(#[from] UdpError),
    /// The ring could not be made.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// An executor or thread failed to start or crashed.
    #[error("{role} failed: {reason}")]
    Core {
        /// Which role.
        role: &'static str,
        /// What happened.
        reason: String,
    },
    /// The output stage failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The Kafka output failed to start or stop.
    #[error(transparent)]
    Kafka(#[from] crate::kafka::OutputError),
    /// The XDP filter could not be loaded or attached.
    #[error(transparent)]
    Xdp(#[from] crate::xdp::XdpError),
    /// A model file could not be used.
    #[error("model: {0}")]
    Model(String),
    /// The device key file (`auth.keys`) could not be used.
    #[error(transparent)]
    Keys(#[from] crate::shard::auth::KeyFileError),
    /// The admin server could not start.
    #[error("admin server: {0}")]
    Admin(String),
    /// The replay state (`auth.replay_state`) could not be read.
    #[error("{0}")]
    ReplayState(String),
    /// Capabilities could not be dropped.
    #[error(transparent)]
    Privilege(#[from] crate::privilege::PrivilegeError),
    /// Fewer NIC queues than shards.
    #[error("{iface} has {queues} receive queues but ingest.shards = {shards}; fix: lower ingest.shards or raise the queue count (`ethtool -L {iface} combined {shards}`)")]
    Queues {
        /// Interface.
        iface: String,
        /// Its receive queues.
        queues: usize,
        /// Shards configured.
        shards: usize,
    },
}

/// The XDP filter of a running klais: the loaded program and its attachment
/// (dropping it detaches and unpins, also on error paths).
struct KernelSide {
    program: crate::xdp::XdpProgram,
    attachment: crate::xdp::Attachment,
}

/// Final figures of a run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Shard counters, summed.
    pub shards: ShardSnapshot,
    /// Output stage counters (records taken from the rings).
    pub sink: SinkSnapshot,
    /// The Kafka output's delivery accounting (sink = "kafka").
    pub kafka: Option<KafkaSnapshot>,
    /// The control core's figures (with `[dam]`).
    pub control: Option<crate::control::ControlSnapshot>,
    /// Where the roles ran.
    pub placement: Placement,
    /// Wall time from start to the end of the drain.
    pub elapsed: Duration,
    /// The XDP filter's counters when it was attached.
    pub xdp: Option<crate::xdp::XdpCounters>,
}

/// What the output thread returns.
struct OutputEnd {
    sink: SinkSnapshot,
    kafka: Option<KafkaSnapshot>,
}

/// Sets a flag when dropped: a thread's end, on every path (panics too).
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A running klais.
pub struct Running {
    /// The metrics and admin server (stopped last, so /ready says
    /// "stopping" during the drain).
    admin: Option<crate::admin::Server>,
    /// Capabilities kept after start-up.
    capabilities: Arc<std::sync::Mutex<Vec<String>>>,
    /// `auth.replay_state` and the state the shards leave at their end.
    replay: Option<(
        PathBuf,
        Arc<std::sync::Mutex<crate::shard::auth::ReplayState>>,
    )>,
    stop: Arc<AtomicBool>,
    abandon: Arc<AtomicBool>,
    shards_done: Vec<Arc<AtomicBool>>,
    shard_stats: Vec<Arc<Published<ShardSnapshot>>>,
    sink_stats: Arc<Published<SinkSnapshot>>,
    kafka_stats: Option<Arc<Published<KafkaSnapshot>>>,
    control: Option<JoinHandle<crate::control::ControlSnapshot>>,
    control_stats: Option<Arc<Published<crate::control::ControlSnapshot>>>,
    shards: Vec<glommio::ExecutorJoinHandle<std::io::Result<ShardSnapshot>>>,
    output: JoinHandle<Result<OutputEnd, RunError>>,
    local_addr: SocketAddr,
    placement: Placement,
    backend: Backend,
    recv_buffer_bytes: usize,
    started: Instant,
    kernel: Option<KernelSide>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("local_addr", &self.local_addr)
            .field("placement", &self.placement)
            .finish_non_exhaustive()
    }
}

/// Raises RLIMIT_MEMLOCK for io_uring and AF_XDP: to unlimited when allowed
/// (root), else to the hard limit; fails with the fix when even that is below
/// glommio's floor.
pub fn ensure_memlock() -> Result<(), RunError> {
    use rlimit::Resource;
    let (soft, hard) = Resource::MEMLOCK.get().unwrap_or((0, 0));
    if soft == rlimit::INFINITY {
        return Ok(());
    }
    if Resource::MEMLOCK
        .set(rlimit::INFINITY, rlimit::INFINITY)
        .is_ok()
    {
        return Ok(());
    }
    if hard >= GLOMMIO_MIN_MEMLOCK && Resource::MEMLOCK.set(hard, hard).is_ok() {
        return Ok(());
    }
    if soft >= GLOMMIO_MIN_MEMLOCK {
        return Ok(());
    }
    Err(RunError::MemLock {
        have_kib: soft / 1024,
        need_kib: GLOMMIO_MIN_MEMLOCK / 1024,
    })
}

/// Receive queues of a network interface: the ethtool channel count
/// (SIOCETHTOOL, answered in the caller's network namespace), else sysfs
/// `queues/rx-*`; None when neither tells.
pub fn rx_queue_count(iface: &str) -> Option<usize> {
    #[repr(C)]
    #[derive(Default)]
    struct EthtoolChannels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    // SAFETY: a plain datagram socket for the ioctl, closed below; `ifr` is a
    // zeroed ifreq whose name is NUL-terminated (at most 15 bytes copied) and
    // whose data pointer refers to `ch`, alive for the whole call.
    let by_ioctl = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            None
        } else {
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (d, s) in ifr.ifr_name.iter_mut().zip(iface.bytes().take(15)) {
                *d = s as libc::c_char;
            }
            ifr.ifr_ifru.ifru_data = (&mut ch as *mut EthtoolChannels).cast();
            let rc = libc::ioctl(fd, libc::SIOCETHTOOL, &mut ifr);
            libc::close(fd);
            (rc == 0).then(|| (ch.rx_count + ch.combined_count) as usize)
        }
    };
    by_ioctl.filter(|&n| n > 0).or_else(|| {
        std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
            .ok()
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                    .count()
            })
            .filter(|&n| n > 0)
    })
}

/// The Dam's settings per shard from `[dam]` and `[admission]`; None when
/// `dam.device_rate_pps` is not set.
pub fn dam_settings(cfg: &Config) -> Option<(crate::control::dam::DamConfig, usize)> {
    let d = &cfg.dam;
    let rate = d.device_rate_pps? as f64;
    let slab = (d.queue_bytes / 256).max(1) as usize;
    let shard_rate = cfg.admission.shard_rate_pps.map_or(1e12, |r| r as f64);
    Some((
        crate::control::dam::DamConfig {
            device_rate: rate,
            device_burst: d.device_burst.map_or(rate * 2.0, |b| b as f64),
            shard_rate,
            shard_burst: cfg
                .admission
                .shard_burst
                .map_or(shard_rate.min(1e9), |b| b as f64),
            urgent_rate: 0.0,
            urgent_burst: 0.0,
            queue_capacity: (d.queue_messages as usize).min(slab),
            queue_max: slab,
            max_devices: d.max_devices as usize,
        },
        d.queue_bytes as usize,
    ))
}

/// What the control loop reads and writes.
struct ControlInputs {
    /// The XDP filter's maps and the configured limits (the normal ones).
    kernel: Option<(Arc<crate::xdp::KernelMaps>, crate::xdp::Limits)>,
    shards: Vec<Arc<Published<ShardSnapshot>>>,
    setpoints: Vec<crate::shard::DamSetpoints>,
    kafka: Option<Arc<Published<KafkaSnapshot>>>,
    stop: Arc<AtomicBool>,
    out: Arc<Published<crate::control::ControlSnapshot>>,
    /// The operator's ceiling and overrides (admin API).
    operator: Arc<crate::admin::Operator>,
}

/// The control core: every 10 ms, the shards' counter deltas (with the
/// histogram of reconnecting device ids) and the delivery backlog into the
/// controller; per-shard Dam setpoints out; and, with the XDP filter, the
/// kernel's per-device limit relaxed while a storm is forecast (rate × 10,
/// burst × 50, at least 100) and restored after, so reconnecting devices'
/// backlogs reach the Dam instead of being dropped in the kernel.
fn control_loop(
    cfg: crate::control::ControlConfig,
    io: ControlInputs,
) -> crate::control::ControlSnapshot {
    use crate::control::{ControlSnapshot, Controller, ShardReport};
    let n = io.shards.len();
    let mut ctl = Controller::new(cfg);
    let mut prev = vec![ShardSnapshot::default(); n];
    let mut reports = vec![ShardReport::default(); n];
    let mut rates = vec![0.0f64; n];
    let mut snap = ControlSnapshot::default();
    // Devices held to the normal kernel limit during a storm (floods).
    let mut pinned: std::collections::HashSet<u64> = std::collections::HashSet::new();
    let flood_waiting = cfg.storm_device_burst as u32;
    let mut written: Option<crate::xdp::Limits> = None;
    let mut storm_began: Option<Instant> = None;
    let normal_queue = cfg.dam.queue_capacity as u64 / 100;
    // The configured ceiling, and the admin API's when lower.
    let config_ceiling = cfg.pid.max;
    let mut api_ceiling: Option<u64> = None;
    let started = Instant::now();
    let mut last = Instant::now();
    while !io.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        for (i, s) in io.shards.iter().enumerate() {
            let cur = s.read();
            reports[i] = cur.report_since(&prev[i]);
            prev[i] = cur;
        }
        let backlog = io.kafka.as_ref().map_or(0.0, |k| {
            let k = k.read();
            (k.buffered + k.in_flight) as f64
        });
        let ceiling = io.operator.ceiling();
        if ceiling != api_ceiling {
            api_ceiling = ceiling;
            ctl.set_ceiling(ceiling.map_or(config_ceiling, |c| (c as f64).min(config_ceiling)));
        }
        let sp = ctl.tick(&reports, backlog, dt, &mut rates);
        for (i, out) in io.setpoints.iter().enumerate() {
            let mut c = sp.dam;
            c.shard_rate = rates[i].max(1.0);
            c.shard_burst = (c.shard_rate * 0.01).max(c.device_burst);
            // Under an operator ceiling, no shard's burst exceeds a second of
            // its share of it (else a burst would run past the ceiling for
            // longer than a tick can correct); a quiet shard keeps an even
            // share, so its first messages are not throttled to 1.
            if let Some(cap) = api_ceiling {
                let share = (cap as f64 / n as f64).max(1.0);
                c.shard_burst = c.shard_burst.min(c.shard_rate.max(share));
            }
            out.publish(Some(c));
        }
        snap.ticks += 1;
        // The storm's own figures, as the simulator reports them: peak
        // waiting and the time until the Dams are back under their normal
        // queue.
        let waiting: u64 = reports.iter().map(|r| r.depth).sum();
        if sp.prediction.storm && !snap.storm_now {
            storm_began = Some(now);
            snap.storm_peak_waiting = waiting;
            snap.storm_recovery_ms = None;
        }
        if let Some(t0) = storm_began {
            snap.storm_peak_waiting = snap.storm_peak_waiting.max(waiting);
            if waiting <= normal_queue && now.duration_since(t0) > Duration::from_millis(20) {
                snap.storm_recovery_ms = Some(now.duration_since(t0).as_millis() as u64);
                storm_began = None;
            }
        }
        if sp.prediction.storm && !snap.storm_now {
            snap.storms += 1;
            snap.first_storm_ms
                .get_or_insert(started.elapsed().as_millis() as u64);
            tracing::warn!(
                devices = sp.prediction.devices as u64,
                messages = sp.prediction.messages as u64,
                "reconnection storm forecast: Dam queues and device bursts enlarged"
            );
        }
        // The kernel's limits: the per-device limit relaxed while a storm is
        // forecast; the global budget at twice the admission rate the PID
        // sets (overload is shed in the kernel, cheaply, before it reaches
        // the Dams), never above the operator's `xdp.global_budget_pps`.
        // Written when they change by more than 10 %.
        if let Some((maps, base)) = &io.kernel {
            let device = if sp.prediction.storm {
                base.device.and_then(|r| {
                    crate::xdp::Rate::new(
                        r.pps().saturating_mul(10),
                        r.burst().saturating_mul(50).max(100),
                    )
                    .ok()
                })
            } else {
                base.device
            };
            let operator = base.global.map_or(1_000_000_000, |r| r.pps());
            let pps = ((sp.global_rate * 2.0) as u64).clamp(1000, operator);
            let global = crate::xdp::Rate::new(pps, (pps / 10).max(1000)).ok();
            let limits = crate::xdp::Limits {
                device,
                global,
                ..*base
            };
            let moved = |a: Option<crate::xdp::Rate>, b: Option<crate::xdp::Rate>| match (a, b) {
                (Some(a), Some(b)) => {
                    a.pps().abs_diff(b.pps()) * 10 > b.pps() || a.burst() != b.burst()
                }
                (a, b) => a.is_some() != b.is_some(),
            };
            let changed = match &written {
                None => true,
                Some(w) => moved(limits.device, w.device) || moved(limits.global, w.global),
            };
            if changed {
                match maps.set_limits(&limits, crate::xdp::possible_cpus()) {
                    Ok(()) => {
                        snap.kernel_writes += 1;
                        snap.kernel_budget_pps = pps;
                        written = Some(limits);
                    }
                    Err(e) => tracing::warn!("control core: cannot write the XDP limits: {e}"),
                }
            }
        }
        // During a storm, a device with more waiting in a Dam than even the
        // storm burst is flooding, not flushing a backlog: the kernel holds it
        // to the normal per-device limit while the others are relaxed.
        if let Some((maps, base)) = &io.kernel {
            if sp.prediction.storm {
                for cur in io.shards.iter().map(|s| s.read()) {
                    for &(hash, waiting) in &cur.dam.top_waiting {
                        // The operator's own override for a device stands.
                        if waiting > flood_waiting
                            && !io.operator.has_override(hash)
                            && pinned.insert(hash)
                        {
                            match maps.set_override(hash, base.device) {
                                Ok(()) => snap.floods_pinned += 1,
                                Err(e) => tracing::warn!(
                                    "control core: cannot pin a flooding device: {e}"
                                ),
                            }
                        }
                    }
                }
            } else if !pinned.is_empty() {
                for hash in pinned.drain() {
                    if !io.operator.has_override(hash) {
                        let _ = maps.set_override(hash, None);
                    }
                }
            }
        }
        snap.storm_now = sp.prediction.storm;
        snap.predicted = (sp.prediction.devices, sp.prediction.messages);
        snap.global_rate = sp.global_rate;
        io.out.publish(snap);
    }
    snap
}

/// Restricts the calling thread to `cpus` (threads it creates inherit it).
fn set_affinity(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t filled with CPU_SET for valid indices, applied
    // to the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            if c < libc::CPU_SETSIZE as usize {
                libc::CPU_SET(c, &mut set);
            }
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(
                "cannot restrict librdkafka's threads to CPUs {cpus:?}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Everything one shard core takes with it.
struct ShardSeed {
    id: u16,
    cpu: usize,
    rings: ShardRings,
    socket: Option<socket2::Socket>,
    setpoints: Option<crate::shard::DamSetpoints>,
}

/// Starts every core of klais for `cfg` (already validated) and returns once
/// every shard reports ready. A UDP listen port of 0 binds an ephemeral port
/// (tests); see [`Running::local_addr`].
pub fn start(cfg: &Config) -> Result<Running, RunError> {
    ensure_memlock()?;
    let keys = match &cfg.auth.keys {
        Some(p) => Some(Arc::new(crate::shard::auth::KeyTable::load(p)?)),
        None => None,
    };
    // The replay windows as the last clean stop left them.
    let replay = match (&keys, &cfg.auth.replay_state) {
        (Some(_), Some(p)) => {
            let st = crate::shard::auth::ReplayState::load(p).map_err(RunError::ReplayState)?;
            Some((p.clone(), Arc::new(st)))
        }
        (Some(_), None) => {
            tracing::warn!("auth.replay_state is not set: v2 replay windows start empty at every start, so a datagram captured before a restart can be replayed once after it");
            None
        }
        (None, _) => None,
    };
    let replay_out = Arc::new(std::sync::Mutex::new(
        replay
            .as_ref()
            .map(|(_, st)| (**st).clone())
            .unwrap_or_default(),
    ));
    let token = match &cfg.admin.token_file {
        Some(p) if cfg.admin.enabled => Some(crate::admin::read_token(p).map_err(RunError::Admin)?),
        _ => None,
    };
    let operator = Arc::new(crate::admin::Operator::default());
    let n = usize::from(cfg.ingest.shards.max(1));
    let placement = placement::plan(
        &placement::online_cpus()?,
        n,
        cfg.cores.shard_cpus.as_deref(),
        cfg.cores.output_cpu,
    )?;
    // The filter goes on first: if anything below fails, dropping `kernel`
    // detaches it again.
    let kernel = match &cfg.xdp.iface {
        None => None,
        Some(iface) => {
            let opts = crate::xdp::LoadOptions {
                ports: cfg.xdp.effective_ports(&cfg.ingest.listen),
                enforce: cfg.xdp.enforce,
                events: cfg.xdp.events,
                reset_window: cfg.sequence.reset_window,
                max_devices: cfg.xdp.max_devices,
                // Every device when the classifier runs from the start; a
                // small table otherwise (a live `klais model load` then works,
                // with evictions beyond 65,536 devices).
                flow_entries: if cfg.model.classifier.is_some() {
                    cfg.xdp.max_devices
                } else {
                    1 << 16
                },
            };
            let limits = cfg.xdp.limits().map_err(crate::xdp::XdpError::from)?;
            let program = crate::xdp::XdpProgram::load(&opts, &limits)?;
            if let Some(path) = &cfg.model.classifier {
                let f = crate::model::load_classifier(path)
                    .map_err(|e| e.to_string())
                    .and_then(|f| crate::model::with_drops(f, &cfg.model.drop_classes))
                    .map_err(RunError::Model)?;
                program.maps().set_model(Some(&f))?;
                tracing::info!(file = %path.display(), "in-kernel classifier loaded");
            }
            let attachment = program.attach(iface, cfg.xdp.mode)?;
            if let Some(old) = attachment.recovered() {
                tracing::warn!(
                    iface = iface.as_str(),
                    old_prog_id = old,
                    "replaced a klais XDP program that was already attached (by `klais xdp attach`, or left by a klais that did not exit cleanly)"
                );
            }
            Some(KernelSide {
                program,
                attachment,
            })
        }
    };
    let backend = cfg.ingest.backend;
    if backend == Backend::AfXdp {
        let iface = cfg.xdp.iface.clone().unwrap_or_default();
        match rx_queue_count(&iface) {
            Some(queues) if queues < n => {
                return Err(RunError::Queues {
                    iface,
                    queues,
                    shards: n,
                })
            }
            Some(_) => {}
            None => tracing::warn!(
                iface = iface.as_str(),
                "cannot tell the receive queue count; each shard's AF_XDP socket will say if its queue is missing"
            ),
        }
    }

    // Sockets (UDP): one per shard on the same address, SO_REUSEPORT.
    let mut sockets = Vec::with_capacity(n);
    let mut local_addr = cfg.ingest.listen;
    let mut recv_buffer_bytes = 0;
    if backend == Backend::Udp {
        for i in 0..n {
            let bound = udp::bind(local_addr, cfg.ingest.recv_buffer_bytes)?;
            if i == 0 {
                local_addr = bound
                    .socket
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .unwrap_or(cfg.ingest.listen);
                recv_buffer_bytes = bound.recv_buffer_bytes;
                // The kernel reports twice what it books for payload.
                if bound.recv_buffer_bytes < cfg.ingest.recv_buffer_bytes {
                    tracing::warn!(
                        asked = cfg.ingest.recv_buffer_bytes,
                        granted = bound.recv_buffer_bytes,
                        "receive buffer smaller than ingest.recv_buffer_bytes: raise net.core.rmem_max or run with CAP_NET_ADMIN"
                    );
                }
            }
            sockets.push(Some(bound.socket));
        }
    } else {
        sockets.resize_with(n, || None);
    }

    // Rings: shard -> output, shard -> shard (the mesh), each shard's overflow.
    let max_payload = cfg.protocol.max_payload_bytes;
    let mut out_rx = Vec::with_capacity(n);
    let mut out_tx = Vec::with_capacity(n);
    for _ in 0..n {
        let (t, r) = record_ring(cfg.pipeline.ring_bytes, max_payload)?;
        out_tx.push(t);
        out_rx.push(r);
    }
    let mut mesh_tx: Vec<Vec<Option<RecordTx>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut mesh_rx: Vec<Vec<RecordRx>> = (0..n).map(|_| Vec::new()).collect();
    for (i, row) in mesh_tx.iter_mut().enumerate() {
        for (j, slot) in row.iter_mut().enumerate() {
            if i != j {
                let (t, r) = record_ring(cfg.pipeline.mesh_bytes, max_payload)?;
                *slot = Some(t);
                mesh_rx[j].push(r);
            }
        }
    }
    let settings_dam = dam_settings(cfg);
    let mut seeds = Vec::with_capacity(n);
    for (i, ((out, mtx), (mrx, socket))) in out_tx
        .into_iter()
        .zip(mesh_tx)
        .zip(mesh_rx.into_iter().zip(sockets))
        .enumerate()
    {
        seeds.push(ShardSeed {
            id: i as u16,
            cpu: placement.shard_cpus[i],
            rings: ShardRings {
                out,
                overflow: record_ring(cfg.pipeline.overflow_bytes, max_payload)?,
                mesh_tx: mtx,
                mesh_rx: mrx,
            },
            socket,
            setpoints: settings_dam
                .is_some()
                .then(Published::<Option<crate::control::dam::DamConfig>>::new),
        });
    }

    let settings = ShardSettings {
        parse: ParseOptions {
            max_payload,
            validate_json: cfg.protocol.validate_json,
        },
        max_devices: cfg.sequence.max_devices,
        reset_window: cfg.sequence.reset_window,
        admission: cfg.admission.shard_rate_pps.and_then(|pps| {
            crate::xdp::Rate::new(pps, cfg.admission.shard_burst.unwrap_or(pps))
                .ok()
                .map(|r| r.gcra())
        }),
        dam: dam_settings(cfg),
        policy: cfg.auth.port_policies(),
    };
    let tick = Duration::from_millis(if cfg.telemetry.stats_interval_ms == 0 {
        1000
    } else {
        cfg.telemetry.stats_interval_ms
    });

    let stop = Arc::new(AtomicBool::new(false));
    let abandon = Arc::new(AtomicBool::new(false));
    let sink_stats = Published::<SinkSnapshot>::new();
    let target = match cfg.output.sink {
        SinkKind::Stdout => Some(SinkTarget::Stdout),
        SinkKind::File => Some(SinkTarget::File(
            cfg.output
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from("records.jsonl")),
        )),
        SinkKind::Null => Some(SinkTarget::Null),
        SinkKind::Kafka => None,
    };
    let kafka_stats = target.is_none().then(Published::<KafkaSnapshot>::new);
    let output_done = Arc::new(AtomicBool::new(false));
    let output = {
        let (stats, abandon) = (sink_stats.clone(), abandon.clone());
        let done = SetOnDrop(output_done.clone());
        let drop_keep = cfg
            .privilege
            .drop_capabilities
            .then(|| crate::privilege::runtime_set(cfg.xdp.iface.is_some()));
        let kstats = kafka_stats.clone();
        let kcfg = cfg.output.kafka.clone();
        let cpu = placement.output_cpu;
        let mut others: Vec<usize> = placement::online_cpus()?
            .into_iter()
            .filter(|c| !placement.shard_cpus.contains(c))
            .collect();
        if others.is_empty() {
            others.push(cpu);
        }
        let (up_tx, up_rx) = std::sync::mpsc::channel::<Result<(), RunError>>();
        let h = std::thread::Builder::new()
            .name("klais-output".into())
            .spawn(move || -> Result<OutputEnd, RunError> {
                let _done = done;
                match (target, kstats) {
                    (Some(target), _) => {
                        // core_affinity only lists CPUs in the caller's mask; pin by id.
                        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                        let _ = up_tx.send(Ok(()));
                        let s = sink::run(target, out_rx, &stats, tick, &abandon)?;
                        Ok(OutputEnd {
                            sink: s,
                            kafka: None,
                        })
                    }
                    (None, Some(kstats)) => {
                        // librdkafka's threads block every signal, so they
                        // cannot drop capabilities later: they inherit this
                        // thread's, dropped before the producer exists.
                        if let Some(keep) = &drop_keep {
                            if let Err(e) = crate::privilege::drop_self(keep) {
                                let _ = up_tx.send(Err(e.into()));
                                return Err(RunError::Core {
                                    role: "output thread",
                                    reason: "cannot drop capabilities".into(),
                                });
                            }
                        }
                        // librdkafka's threads (broker I/O, compression)
                        // inherit the mask of the thread that makes the
                        // producer: every CPU but the shards', never the
                        // shard cores. Then this thread pins itself.
                        set_affinity(&others);
                        // The journal (io_uring) is made on this thread: it
                        // never leaves it.
                        let b = match crate::kafka::Batcher::new(&kcfg) {
                            Ok(b) => b,
                            Err(e) => {
                                let _ = up_tx.send(Err(e.into()));
                                return Err(RunError::Core {
                                    role: "output thread",
                                    reason: "Kafka output did not start".into(),
                                });
                            }
                        };
                        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                        let _ = up_tx.send(Ok(()));
                        let k = crate::kafka::run(b, out_rx, &kstats, tick, &abandon)?;
                        let sink = SinkSnapshot {
                            records: k.accepted,
                            payload_bytes: k.accepted_bytes,
                        };
                        stats.publish(sink);
                        Ok(OutputEnd {
                            sink,
                            kafka: Some(k),
                        })
                    }
                    (None, None) => unreachable!("kafka stats exist for the kafka sink"),
                }
            })
            .map_err(|e| RunError::Core {
                role: "output thread",
                reason: e.to_string(),
            })?;
        match up_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = h.join();
                return Err(e);
            }
            Err(_) => {
                return Err(RunError::Core {
                    role: "output thread",
                    reason: "exited during start-up".into(),
                })
            }
        }
        h
    };

    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<u16, String>>();
    let maps = kernel.as_ref().map(|k| k.program.maps_arc());
    let window_model = match cfg.model.predictor {
        crate::config::PredictorKind::Window => Some(Arc::new(
            crate::model::load_window(&cfg.model.window)
                .map_err(|e| RunError::Model(e.to_string()))?,
        )),
        crate::config::PredictorKind::Rule => None,
    };
    let models = ShardModels {
        window: window_model.clone(),
        // Always: a classifier loaded later with `klais model load` marks too.
        read_marks: true,
        keys: keys.clone(),
        replay: replay.as_ref().map(|(_, st)| st.clone()),
        replay_out: replay_out.clone(),
        operator: operator.clone(),
        port: local_addr.port(),
    };
    let mut shards = Vec::with_capacity(n);
    let mut shards_done = Vec::with_capacity(n);
    let mut shard_stats = Vec::with_capacity(n);
    let setpoints: Vec<crate::shard::DamSetpoints> =
        seeds.iter().filter_map(|s| s.setpoints.clone()).collect();
    for seed in seeds {
        let done = Arc::new(AtomicBool::new(false));
        let stats = Published::<ShardSnapshot>::new();
        shards_done.push(done.clone());
        shard_stats.push(stats.clone());
        let (stop, ready, maps) = (stop.clone(), ready_tx.clone(), maps.clone());
        let models = models.clone();
        let iface = cfg.xdp.iface.clone().unwrap_or_default();
        let xcfg = crate::ingest::af_xdp::XskConfig {
            frames: cfg.ingest.af_xdp.frames,
            frame_size: cfg.ingest.af_xdp.frame_size,
            rx_ring: cfg.ingest.af_xdp.rx_ring,
            batch: cfg.ingest.af_xdp.batch,
        };
        let shards_n = n as u16;
        let handle = LocalExecutorBuilder::new(GlommioPlacement::Fixed(seed.cpu))
            .name(&format!("klais-shard-{}", seed.id))
            .spawn(move || async move {
                let r = run_shard(
                    seed, shards_n, settings, backend, &iface, xcfg, maps, &stop, &stats, tick,
                    &ready, models,
                )
                .await;
                done.store(true, Ordering::Relaxed);
                r
            })
            .map_err(|e| RunError::Core {
                role: "shard executor",
                reason: e.to_string(),
            })?;
        shards.push(handle);
    }
    drop(ready_tx);

    // The control core: with the Dam on, a thread beside the output stage that
    // turns the shards' snapshots into Dam setpoints every 10 ms.
    let control_done = Arc::new(AtomicBool::new(false));
    let (control, control_stats) = match settings_dam {
        Some((base, _)) => {
            let stats = Published::<crate::control::ControlSnapshot>::new();
            let ceiling = cfg
                .admission
                .shard_rate_pps
                .map_or(1e9, |r| r as f64 * n as f64);
            let ccfg = crate::control::ControlConfig {
                backlog_target: f64::from(cfg.output.kafka.queue_high_water) / 4.0,
                pid: crate::control::pid::PidConfig {
                    kp: 2.0,
                    ki: 4.0,
                    kd: 0.0,
                    min: ceiling * 0.05,
                    max: ceiling,
                },
                rule: crate::control::predict::RuleConfig {
                    source: match &window_model {
                        Some(w) => crate::control::predict::StormSource::Window {
                            threshold: w.threshold,
                        },
                        None => crate::control::predict::StormSource::Rule,
                    },
                    ..crate::control::predict::RuleConfig::default()
                },
                dam: base,
                storm_device_burst: (base.device_burst * 50.0).max(100.0),
                storm_device_rate: base.device_rate * 10.0,
                capacity: ceiling.min(1e6),
            };
            let base_limits = cfg.xdp.limits().ok();
            let inputs = ControlInputs {
                kernel: maps.clone().zip(base_limits),
                shards: shard_stats.clone(),
                setpoints: setpoints.clone(),
                kafka: kafka_stats.clone(),
                stop: stop.clone(),
                out: stats.clone(),
                operator: operator.clone(),
            };
            let cpu = placement.output_cpu;
            let done = SetOnDrop(control_done.clone());
            let h = std::thread::Builder::new()
                .name("klais-control".into())
                .spawn(move || {
                    let _done = done;
                    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                    control_loop(ccfg, inputs)
                })
                .map_err(|e| RunError::Core {
                    role: "control thread",
                    reason: e.to_string(),
                })?;
            (Some(h), Some(stats))
        }
        None => (None, None),
    };

    let live = crate::admin::Liveness {
        shards_done: shards_done.clone(),
        output_done,
        control_done: control.is_some().then_some(control_done),
        stopping: stop.clone(),
    };
    let mut running = Running {
        replay: replay.map(|(p, _)| (p, replay_out)),
        admin: None,
        capabilities: Arc::new(std::sync::Mutex::new(Vec::new())),
        stop,
        abandon,
        shards_done,
        shard_stats,
        sink_stats,
        kafka_stats,
        control,
        control_stats,
        shards,
        output,
        local_addr,
        placement,
        backend,
        recv_buffer_bytes,
        started: Instant::now(),
        kernel,
    };
    // Every shard says it is receiving, or why it cannot.
    for _ in 0..n {
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(_)) => {}
            Ok(Err(reason)) => {
                let _ = running.stop();
                return Err(RunError::Core {
                    role: "shard",
                    reason,
                });
            }
            Err(_) => {
                let _ = running.stop();
                return Err(RunError::Core {
                    role: "shard",
                    reason: "did not report ready within 30 s".into(),
                });
            }
        }
    }
    if cfg.admin.enabled {
        let src = crate::admin::Sources {
            shards: running.shard_stats.clone(),
            setpoints: setpoints.iter().map(|p| Some(p.clone())).collect(),
            sink: running.sink_stats.clone(),
            kafka: running.kafka_stats.clone(),
            control: running.control_stats.clone(),
            kernel: running.kernel.as_ref().map(|k| k.program.maps_arc()),
            xdp_iface: cfg.xdp.iface.clone(),
            journal: cfg.output.sink == SinkKind::Kafka,
            live,
            started: running.started,
            classifier: cfg.model.classifier.clone(),
            drop_classes: cfg.model.drop_classes.clone(),
            operator,
            token,
            capabilities: running.capabilities.clone(),
        };
        // The control core's CPU (it shares the output's: placement).
        match crate::admin::Server::start(cfg.admin.listen, running.placement.output_cpu, src) {
            Ok(s) => {
                tracing::info!("metrics and admin API on http://{}", s.addr());
                running.admin = Some(s);
            }
            Err(e) => {
                let _ = running.stop();
                return Err(RunError::Admin(e));
            }
        }
    }
    tracing::info!(
        "klais {} on {:?} backend, listening on {}; {}; ring {} KiB; sink {}",
        env!("CARGO_PKG_VERSION"),
        backend,
        local_addr,
        running.placement,
        cfg.pipeline.ring_bytes / 1024,
        cfg.output.sink.name()
    );
    Ok(running)
}

/// One shard core, from setup to the end of its drain.
/// What a shard runs beside its pipeline.
#[derive(Clone, Default)]
struct ShardModels {
    /// The window model (each shard builds its own GGML context from it).
    window: Option<Arc<crate::model::window::FloatWindow>>,
    /// Read the in-kernel classifier's marks from the AF_XDP metadata.
    read_marks: bool,
    /// Device keys (`auth.keys`): each shard builds its own table.
    keys: Option<Arc<crate::shard::auth::KeyTable>>,
    /// The saved replay windows (`auth.replay_state`).
    replay: Option<Arc<crate::shard::auth::ReplayState>>,
    /// Where each shard leaves its devices' highest sequences at its end.
    replay_out: Arc<std::sync::Mutex<crate::shard::auth::ReplayState>>,
    /// The operator's settings (deny list).
    operator: Arc<crate::admin::Operator>,
    /// The UDP backend's port (its `[auth]` policy).
    port: u16,
}

#[allow(clippy::too_many_arguments)]
async fn run_shard(
    seed: ShardSeed,
    shards: u16,
    settings: ShardSettings,
    backend: Backend,
    iface: &str,
    xcfg: crate::ingest::af_xdp::XskConfig,
    maps: Option<Arc<crate::xdp::KernelMaps>>,
    stop: &AtomicBool,
    stats: &Published<ShardSnapshot>,
    tick: Duration,
    ready: &std::sync::mpsc::Sender<Result<u16, String>>,
    models: ShardModels,
) -> std::io::Result<ShardSnapshot> {
    let id = seed.id;
    let mut shard = match Shard::new(id, shards, settings, seed.rings) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(format!("shard {id}: {e}")));
            return Err(e);
        }
    };
    if let Some(w) = &models.window {
        // The shard's own GGML context, made on its core.
        match crate::model::window::GgmlWindow::new(w) {
            Ok(g) => shard.set_window_model(g),
            Err(e) => {
                let _ = ready.send(Err(format!("shard {id}: window model: {e}")));
                return Err(std::io::Error::other(e));
            }
        }
    }
    if let Some(sp) = seed.setpoints {
        shard.follow_setpoints(sp);
    }
    if let Some(keys) = &models.keys {
        match &models.replay {
            Some(st) => shard.set_auth_with_state(keys, st),
            None => shard.set_auth(keys),
        }
    }
    shard.follow_operator(models.operator.clone());
    shard.set_port(models.port);
    match backend {
        Backend::Udp => {
            let Some(socket) = seed.socket else {
                let _ = ready.send(Err(format!("shard {id}: no socket")));
                return Err(std::io::Error::other("no socket"));
            };
            let _ = ready.send(Ok(id));
            udp::receive_loop(socket, &mut shard, stop, stats, tick).await?;
        }
        Backend::AfXdp => {
            let queue = u32::from(id);
            let mut xsk = match crate::ingest::af_xdp::XskSocket::open(iface, queue, &xcfg) {
                Ok(x) => x,
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                    return Err(std::io::Error::other(e.to_string()));
                }
            };
            let Some(maps) = maps else {
                let _ = ready.send(Err("af_xdp needs the XDP filter (xdp.iface)".into()));
                return Err(std::io::Error::other("no XDP program"));
            };
            xsk.set_read_marks(models.read_marks);
            if let Err(e) = maps.bind_socket(queue, xsk.fd()) {
                let _ = ready.send(Err(e.to_string()));
                return Err(std::io::Error::other(e.to_string()));
            }
            let _ = ready.send(Ok(id));
            let not_udp = crate::ingest::af_xdp::receive_loop(
                &mut xsk,
                &mut shard,
                stop,
                stats,
                tick,
                || {
                    let _ = maps.unbind_socket(queue);
                },
            )
            .await;
            if not_udp > 0 {
                tracing::warn!(
                    shard = id,
                    frames = not_udp,
                    "AF_XDP delivered frames that are not UDP"
                );
            }
        }
    }
    // Receive has stopped: hand nothing more to peers, take what they still
    // send, and move the overflow queue into the output ring.
    shard.close_mesh();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        shard.release_all();
        shard.pump();
        if shard.mesh_finished() && shard.queued() == 0 {
            break;
        }
        if Instant::now() > deadline {
            let lost = shard.abandon_overflow();
            if lost > 0 {
                tracing::error!(shard = id, lost, "output stalled for 5 s during shutdown: queued messages dropped (counted as queue_full)");
            }
            break;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    shard.flush();
    {
        let mut out = models.replay_out.lock().unwrap_or_else(|p| p.into_inner());
        for (raw, top, fp) in shard.auth_tops() {
            out.record(raw, top, fp);
        }
    }
    let last = shard.snapshot();
    stats.publish(last);
    Ok(last)
    // `shard` drops here with its ring ends: the output stage sees them finished.
}

impl Running {
    /// The address the shard sockets are bound to (UDP backend).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
    /// Where the roles run.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }
    /// The receive backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }
    /// Receive buffer the kernel granted (UDP backend).
    pub fn recv_buffer_bytes(&self) -> usize {
        self.recv_buffer_bytes
    }
    /// The metrics and admin server's address, when it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr())
    }

    /// Everything privileged is done once [`start`] returned (the filter is
    /// attached, every socket bound): keeps only the capabilities the cores
    /// still need, in every thread of the process, and returns their names.
    /// `klais run` calls it (`privilege.drop_capabilities`); a library user
    /// that starts klais more than once in one process must not.
    pub fn drop_capabilities(&self) -> Result<Vec<String>, RunError> {
        let keep = crate::privilege::runtime_set(self.kernel.is_some());
        let kept = crate::privilege::drop_all_threads(&keep)?;
        *self.capabilities.lock().unwrap_or_else(|p| p.into_inner()) = kept.clone();
        Ok(kept)
    }

    /// Capabilities kept after start-up (empty: none, or not dropped).
    pub fn capabilities(&self) -> Vec<String> {
        self.capabilities
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The stop flag (set by [`Running::stop`]).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }
    /// Latest published counters, summed over shards.
    pub fn snapshot(&self) -> (ShardSnapshot, SinkSnapshot) {
        let mut sum = ShardSnapshot::default();
        for s in &self.shard_stats {
            sum.add(&s.read());
        }
        let sink = match &self.kafka_stats {
            Some(k) => {
                let k = k.read();
                SinkSnapshot {
                    records: k.accepted,
                    payload_bytes: k.accepted_bytes,
                }
            }
            None => self.sink_stats.read(),
        };
        (sum, sink)
    }
    /// Latest published counters of the Kafka output (sink = "kafka").
    pub fn kafka_snapshot(&self) -> Option<KafkaSnapshot> {
        self.kafka_stats.as_ref().map(|k| k.read())
    }
    /// The control core's latest figures (with `[dam]`).
    pub fn control_snapshot(&self) -> Option<crate::control::ControlSnapshot> {
        self.control_stats.as_ref().map(|c| c.read())
    }
    /// Latest published counters of each shard.
    pub fn shard_snapshots(&self) -> Vec<ShardSnapshot> {
        self.shard_stats.iter().map(|s| s.read()).collect()
    }
    /// The XDP attachment: (interface, mode the kernel accepted, stale program replaced).
    pub fn xdp(&self) -> Option<(String, crate::xdp::AttachMode, Option<u32>)> {
        self.kernel.as_ref().map(|k| {
            (
                k.attachment.iface().to_string(),
                k.attachment.mode(),
                k.attachment.recovered(),
            )
        })
    }

    /// The XDP filter's counters now.
    pub fn xdp_counters(&self) -> Option<crate::xdp::XdpCounters> {
        self.kernel
            .as_ref()
            .and_then(|k| k.program.maps().counters().ok())
    }

    /// True once a core has exited on its own (an I/O error): the caller
    /// should [`Running::stop`] to collect the error.
    pub fn has_exited(&self) -> bool {
        self.output.is_finished() || self.shards_done.iter().any(|d| d.load(Ordering::Relaxed))
    }

    /// Stops receiving, drains everything accepted into the sink, detaches
    /// the XDP filter and returns the final figures.
    pub fn stop(mut self) -> Result<RunSummary, RunError> {
        self.stop.store(true, Ordering::Relaxed);
        let admin = self.admin.take();
        let mut results = Vec::with_capacity(self.shards.len());
        for h in self.shards {
            results.push(h.join());
        }
        // Every shard is gone; if one died before dropping its ring ends the
        // output stage would wait forever: tell it to stop once rings are empty.
        self.abandon.store(true, Ordering::Relaxed);
        let out = self.output.join().map_err(|_| RunError::Core {
            role: "output thread",
            reason: "panicked".into(),
        })?;
        let mut shards = ShardSnapshot::default();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(Ok(s)) => shards.add(&s),
                Ok(Err(e)) => {
                    return Err(RunError::Core {
                        role: "shard",
                        reason: format!("shard {i}: {e}"),
                    })
                }
                Err(e) => {
                    return Err(RunError::Core {
                        role: "shard executor",
                        reason: format!("shard {i}: {e}"),
                    })
                }
            }
        }
        let control = self.control.and_then(|h| h.join().ok());
        if let Some((path, st)) = &self.replay {
            let st = st.lock().unwrap_or_else(|p| p.into_inner());
            match st.save(path) {
                Ok(()) => {
                    tracing::info!(devices = st.len(), file = %path.display(), "v2 replay state saved")
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), "cannot save the v2 replay state ({e}): after this restart, datagrams captured before it could be replayed once")
                }
            }
        }
        let OutputEnd { sink, kafka } = out?;
        let xdp = match self.kernel {
            Some(k) => {
                let counters = k.program.maps().counters().ok();
                k.attachment.detach()?;
                counters
            }
            None => None,
        };
        drop(admin);
        Ok(RunSummary {
            shards,
            sink,
            kafka,
            control,
            placement: self.placement,
            elapsed: self.started.elapsed(),
            xdp,
        })
    }
}

/// The topology of a running klais: every core, queue and ring.
pub fn topology_text(r: &Running, cfg: &Config) -> String {
    let n = r.placement.shard_cpus.len();
    let mut t = String::from("topology:\n");
    match r.xdp() {
        Some((iface, mode, _)) => t.push_str(&format!(
            "  xdp filter   on {iface} ({mode} mode), ports {:?}\n",
            cfg.xdp.effective_ports(&cfg.ingest.listen)
        )),
        None => t.push_str("  xdp filter   off\n"),
    }
    for (i, cpu) in r.placement.shard_cpus.iter().enumerate() {
        let queue = match r.backend {
            Backend::Udp => format!("udp socket {i} on {} (SO_REUSEPORT)", r.local_addr),
            Backend::AfXdp => format!(
                "af_xdp socket on {} queue {i} ({} frames x {} B)",
                cfg.xdp.iface.as_deref().unwrap_or("?"),
                cfg.ingest.af_xdp.frames,
                cfg.ingest.af_xdp.frame_size
            ),
        };
        t.push_str(&format!(
            "  shard {i}      CPU {cpu}: {queue}; owns devices with fnv1a64(id) % {n} == {i}\n"
        ));
        t.push_str(&format!(
            "               rings: -> output {} KiB, overflow {} KiB{}\n",
            cfg.pipeline.ring_bytes / 1024,
            cfg.pipeline.overflow_bytes / 1024,
            if n > 1 {
                format!(
                    ", -> each other shard {} KiB",
                    cfg.pipeline.mesh_bytes / 1024
                )
            } else {
                String::new()
            }
        ));
    }
    t.push_str(&format!(
        "  output       CPU {}: sink {}\n",
        r.placement.output_cpu,
        cfg.output.sink.name()
    ));
    t
}

/// One line of live figures: rates over the last interval and totals.
pub fn live_line(
    elapsed: Duration,
    dt: Duration,
    prev: &(ShardSnapshot, SinkSnapshot),
    now: &(ShardSnapshot, SinkSnapshot),
) -> String {
    let secs = dt.as_secs_f64().max(1e-9);
    let rate = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / secs;
    let (ps, po) = prev;
    let (ns, no) = now;
    let mut rejects = String::new();
    for r in Reject::ALL {
        let n = ns.rejects.get(r);
        if n > 0 {
            if !rejects.is_empty() {
                rejects.push_str(", ");
            }
            rejects.push_str(&format!("{} {}", r.name(), n));
        }
    }
    format!(
        "[{:>7.1}s] rx {:>9.0}/s  accepted {:>9.0}/s  out {:>9.0}/s  totals: rx {} accepted {} out {}  rejected {}{}{}  resets {} gaps {}{}",
        elapsed.as_secs_f64(),
        rate(ps.received, ns.received),
        rate(ps.accepted, ns.accepted),
        rate(po.records, no.records),
        ns.received,
        ns.accepted,
        no.records,
        ns.rejects.total(),
        if rejects.is_empty() { "" } else { " (" },
        if rejects.is_empty() { String::new() } else { format!("{rejects})") },
        ns.seq.resets,
        ns.seq.gaps,
        if ns.dam.depth > 0 {
            format!("  dam waiting {} (oldest {} ms)", ns.dam.depth, ns.dam.oldest_age_ns / 1_000_000)
        } else {
            String::new()
        },
    )
}

/// The summary printed when klais stops.
pub fn summary_text(s: &RunSummary) -> String {
    let mut t = String::new();
    let sh = &s.shards;
    t.push_str(&format!(
        "klais stopped after {:.1}s ({})\n",
        s.elapsed.as_secs_f64(),
        s.placement
    ));
    t.push_str(&format!(
        "  received            {:>12}  ({} bytes)\n",
        sh.received, sh.received_bytes
    ));
    t.push_str(&format!(
        "  dropped at the queue{:>12}  (socket buffer or AF_XDP ring full before a shard saw them)\n",
        sh.queue_drops
    ));
    t.push_str(&format!("  accepted            {:>12}\n", sh.accepted));
    t.push_str(&format!(
        "  forwarded to owner  {:>12}  (between shards; counted once, at the owner)\n",
        sh.forwarded_out
    ));
    t.push_str(&format!("  written by sink     {:>12}\n", s.sink.records));
    t.push_str(&format!(
        "  rejected            {:>12}\n",
        sh.rejects.total()
    ));
    for r in Reject::ALL {
        t.push_str(&format!("    {:<18}{:>12}\n", r.name(), sh.rejects.get(r)));
    }
    let q = &sh.seq;
    t.push_str(&format!(
        "  sequence: new devices {}, gaps {} ({} missing), late {}, resets {}, evictions {}\n",
        q.new_devices, q.gaps, q.missing, q.late, q.resets, q.evictions
    ));
    let d = &sh.dam;
    if d.queued > 0 || d.released > 0 || d.evictions > 0 {
        t.push_str(&format!(
            "  dam: waited {} (released {}, waiting {}), device evictions {}\n",
            d.queued, d.released, d.depth, d.evictions
        ));
    }
    if sh.window_runs > 0 || sh.model_marked > 0 {
        t.push_str(&format!(
            "  models: window model (GGML Q4_0) {} inferences, {:.2} us each on average, storm probability last {:.3} peak {:.3} (highest shard); datagrams marked by the in-kernel classifier {}\n",
            sh.window_runs,
            sh.window_ns as f64 / 1000.0 / sh.window_runs.max(1) as f64,
            f64::from(sh.storm_ppm) / 1e6,
            f64::from(sh.storm_ppm_peak) / 1e6,
            sh.model_marked
        ));
    }
    if let Some(c) = &s.control {
        t.push_str(&format!(
            "  control: {} ticks, storms forecast {}{}, global admission rate {:.0}/s, kernel limit writes {} (global budget {}/s), flooding devices pinned {}\n",
            c.ticks,
            c.storms,
            c.first_storm_ms.map_or(String::new(), |ms| format!(
                " (first at {:.2} s)",
                ms as f64 / 1000.0
            )),
            c.global_rate,
            c.kernel_writes,
            c.kernel_budget_pps,
            c.floods_pinned
        ));
        if c.storms > 0 {
            t.push_str(&format!(
                "  last storm: peak waiting in the Dams {}, recovered {}\n",
                c.storm_peak_waiting,
                c.storm_recovery_ms
                    .map_or("not yet".to_string(), |ms| format!(
                        "in {:.2} s (back under 1 % of the normal queue)",
                        ms as f64 / 1000.0
                    ))
            ));
        }
    }
    if let Some(k) = &s.kafka {
        t.push_str(&kafka_text(k));
    }
    if let Some(x) = &s.xdp {
        t.push_str(&xdp_counters_text(x));
        let redirected = x.get(crate::xdp::Verdict::Redirect);
        let accounted = sh.received + sh.queue_drops;
        if redirected > accounted {
            t.push_str(&format!(
                "  LOST between the XDP redirect and the shards: {} (redirected {}, received {}, counted as dropped at the queue {})\n",
                redirected - accounted,
                redirected,
                sh.received,
                sh.queue_drops
            ));
        }
    }
    t
}

/// The Kafka output's figures: delivery accounting, breaker, DAPB, latency.
pub fn kafka_text(k: &KafkaSnapshot) -> String {
    let mut t = String::from("  kafka:\n");
    t.push_str(&format!(
        "    delivered {}, buffered {}, in flight {}, journaled {}; dropped: journal full {}, rejected by broker {}, journal damage {}\n",
        k.delivered, k.buffered, k.in_flight, k.journaled, k.dropped_journal_full, k.dropped_rejected, k.journal_lost
    ));
    let (l, r) = k.reconcile();
    t.push_str(&format!(
        "    accounting: accepted {} + recovered {} = {} {} delivered + buffered + in flight + journaled + dropped = {}\n",
        k.accepted,
        k.recovered,
        l,
        if l == r { "==" } else { "!= (MISMATCH)" },
        r
    ));
    t.push_str(&format!(
        "    breaker {:?} (opened {}x), broker {}; journal: {} segments, {} bytes, replayed {}, replay failures {}\n",
        k.breaker,
        k.breaker_opens,
        if k.broker_up { "up" } else { "not up" },
        k.journal.segments,
        k.journal.bytes,
        k.replayed,
        k.replay_failures
    ));
    if let Some(p) = k.params {
        t.push_str(&format!(
            "    DAPB: B(t) {} B, T(t) {} us; RTT {:.2} ms, jitter {:.2} ms, errors {:.2}%; {} batches for {} messages (small sends avoided {}, buffer efficiency {:.1}%; urgent/full/timeout/drain {:?})\n",
            p.b_adaptive,
            p.t_us,
            k.conditions.rtt_us / 1000.0,
            k.conditions.jitter_us / 1000.0,
            k.conditions.error_pct,
            k.dapb.batches,
            k.dapb.messages,
            k.dapb.reduced_sends(),
            100.0 * k.dapb.efficiency(),
            k.dapb.by_reason
        ));
    }
    let lat = |l: &[u64; 5]| {
        format!(
            "P50 {} P99 {} P99.9 {} max {} us (n={})",
            l[0], l[1], l[2], l[3], l[4]
        )
    };
    t.push_str(&format!(
        "    added latency (ring -> delivery report): normal {}; urgent {}\n    of which delivery round trip (librdkafka + broker) {}\n    batcher CPU {:.0} ns per message\n",
        lat(&k.latency_normal_us),
        lat(&k.latency_urgent_us),
        lat(&k.rtt_us),
        k.cpu_ns_per_msg()
    ));
    t
}

/// The XDP filter's counters, one line per verdict.
pub fn xdp_counters_text(x: &crate::xdp::XdpCounters) -> String {
    let mut t = String::from("  xdp filter (packets, summed over CPUs):\n");
    for v in crate::xdp::Verdict::ALL {
        t.push_str(&format!("    {:<18}{:>12}\n", v.name(), x.get(v)));
    }
    t.push_str(&format!(
        "    events: sent {}, over cap {}, lost (ring full) {}; buckets: CAS retries {}, evictions {}, untracked {}\n",
        x.events_sent, x.events_capped, x.events_lost, x.bucket_retries, x.bucket_evictions, x.bucket_untracked
    ));
    let classified: u64 = x.model_class.iter().sum();
    if classified > 0 {
        t.push_str(&format!(
            "    classifier: normal {}, flood {}, sweep {}, replay {}; marked for Kafka {}\n",
            x.model_class[0], x.model_class[1], x.model_class[2], x.model_class[3], x.model_marked
        ));
    }
    t
}
