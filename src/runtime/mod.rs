//! The one wiring point: starts the cores, connects the rings, stops them in
//! order. Read [`start_loaded`] to see the whole topology of a running klais:
//! it is a sequence of steps in data-flow order — the kernel side, the receive
//! queues, the rings ([`queues`]), the output core ([`output`]), the shards
//! ([`shards`]), the control core ([`control`]) and the admin server — each a
//! function of about a screen. Files are read before any of it
//! ([`preflight`]); the text reports of a run live in [`crate::report`].
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

mod control;
mod output;
pub mod preflight;
mod queues;
mod shards;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Backend, Config, SinkKind};
use crate::handoff::RingError;
use crate::ingest::udp::UdpError;
use crate::kafka::KafkaSnapshot;
use crate::shard::{DamSetpoints, ShardSettings, ShardSnapshot};
use crate::sink::{SinkError, SinkSnapshot};
use crate::telemetry::Published;
use crate::wire::ParseOptions;

pub use crate::cores::placement::{self, Placement, PlacementError};
pub use preflight::{preflight, Loaded, PreflightError};

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
    /// A file the configuration names could not be used (each error names
    /// its key and the fix).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Preflight(Vec<PreflightError>),
    /// The admin server could not start.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
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

/// Starts every core of klais for `cfg` (validated): reads the files it
/// names once ([`preflight`]), then [`start_loaded`].
pub fn start(cfg: &Config) -> Result<Running, RunError> {
    let loaded = preflight(cfg).map_err(RunError::Preflight)?;
    start_loaded(cfg, loaded)
}

/// The wiring point: starts every core of klais for `cfg` with its files
/// already `loaded`, in data-flow order, and returns once every shard reports
/// ready. A UDP listen port of 0 binds an ephemeral port (tests); see
/// [`Running::local_addr`]. A step that fails undoes the steps before it
/// (dropping the XDP filter detaches it; a started core is stopped).
pub fn start_loaded(cfg: &Config, loaded: Loaded) -> Result<Running, RunError> {
    ensure_memlock()?;
    let cfg = &loaded
        .effective_config(cfg)
        .map_err(|e| RunError::Preflight(vec![e]))?;
    let n = usize::from(cfg.ingest.shards.max(1));
    let placement = placement::plan(
        &placement::online_cpus()?,
        n,
        cfg.cores.shard_cpus.as_deref(),
        cfg.cores.output_cpu,
    )?;
    let tick = tick_of(cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let abandon = Arc::new(AtomicBool::new(false));

    // 1. The kernel side goes on first.
    let kernel = queues::attach_filter(cfg, loaded.classifier.as_ref())?;
    let maps = kernel.as_ref().map(|k| k.program.maps_arc());
    // 2. One receive queue per shard.
    let rx = queues::open(cfg, n)?;
    // 3. The rings: shard -> output, shard -> shard, each shard's overflow.
    let dam = dam_settings(cfg);
    let (out_rx, seeds) = queues::rings(cfg, &placement, rx.sockets, dam.is_some())?;
    let setpoints: Vec<DamSetpoints> = seeds.iter().filter_map(|s| s.setpoints.clone()).collect();
    // 4. The output core.
    let output = output::spawn(cfg, &placement, out_rx, tick, &abandon)?;
    // 5. The shards.
    let operator = Arc::new(crate::admin::Operator::default());
    let auth = AuthSide::new(&loaded);
    let models = shards::ShardModels {
        window: loaded.window.clone(),
        // Always: a classifier loaded later with `klais model load` marks too.
        read_marks: true,
        keys: loaded.keys.clone(),
        replay: auth.saved.clone(),
        replay_out: auth.out.clone(),
        deny: operator.deny_feed(),
        port: rx.local_addr.port(),
    };
    let env = shards::ShardEnv::new(cfg, n, maps.clone(), stop.clone(), tick, models);
    let shard_side = shards::spawn(seeds, &env)?;
    // 6. The control core (with the Dam on).
    let control_done = Arc::new(AtomicBool::new(false));
    let (control, control_stats) = match dam {
        Some((base, _)) => {
            let stats = Published::<crate::control::ControlSnapshot>::new();
            let ccfg =
                control::control_config(cfg, n, base, loaded.window.as_ref().map(|w| w.threshold));
            let inputs = control::ControlInputs {
                kernel: maps.clone().zip(cfg.xdp.limits().ok()),
                shards: shard_side.stats.clone(),
                setpoints: setpoints.clone(),
                kafka: output.kafka_stats.clone(),
                stop: stop.clone(),
                out: stats.clone(),
                operator: operator.clone(),
            };
            let h = control::spawn(ccfg, inputs, placement.output_cpu, control_done.clone())?;
            (Some(h), Some(stats))
        }
        None => (None, None),
    };
    let live = crate::admin::Liveness {
        shards_done: shard_side.done.clone(),
        output_done: output.done.clone(),
        control_done: control.is_some().then_some(control_done),
        stopping: stop.clone(),
    };
    let ready = shard_side.ready;
    let mut running = Running {
        replay: auth.path.map(|p| (p, auth.out)),
        admin: None,
        capabilities: Arc::new(std::sync::Mutex::new(Vec::new())),
        stop,
        abandon,
        shards_done: shard_side.done,
        shard_stats: shard_side.stats,
        sink_stats: output.sink_stats,
        kafka_stats: output.kafka_stats,
        control,
        control_stats,
        shards: shard_side.handles,
        output: output.handle,
        local_addr: rx.local_addr,
        placement,
        backend: cfg.ingest.backend,
        recv_buffer_bytes: rx.recv_buffer_bytes,
        started: Instant::now(),
        kernel,
    };
    if let Err(e) = wait_ready(&ready, n) {
        let _ = running.stop();
        return Err(e);
    }
    // 7. The metrics and admin server.
    if cfg.admin.enabled {
        let src = admin_sources(cfg, &running, setpoints, live, operator, loaded.token);
        // The output core's CPU, which the control thread shares (placement).
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
        running.backend,
        running.local_addr,
        running.placement,
        cfg.pipeline.ring_bytes / 1024,
        cfg.output.sink.name()
    );
    Ok(running)
}

/// The counter and control tick (`telemetry.stats_interval_ms`, 0: 1 s).
fn tick_of(cfg: &Config) -> Duration {
    Duration::from_millis(if cfg.telemetry.stats_interval_ms == 0 {
        1000
    } else {
        cfg.telemetry.stats_interval_ms
    })
}

/// Every shard's settings from the configuration.
fn shard_settings(cfg: &Config) -> ShardSettings {
    ShardSettings {
        parse: ParseOptions {
            max_payload: cfg.protocol.max_payload_bytes,
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
    }
}

/// The v2 replay windows: as the last clean stop left them, and where the
/// shards leave theirs at this run's end.
struct AuthSide {
    path: Option<PathBuf>,
    saved: Option<Arc<crate::shard::auth::ReplayState>>,
    out: Arc<std::sync::Mutex<crate::shard::auth::ReplayState>>,
}

impl AuthSide {
    fn new(loaded: &Loaded) -> Self {
        if loaded.keys.is_some() && loaded.replay.is_none() {
            tracing::warn!("auth.replay_state is not set: v2 replay windows start empty at every start, so a datagram captured before a restart can be replayed once after it");
        }
        let saved = loaded.replay.as_ref().map(|(_, st)| st.clone());
        AuthSide {
            path: loaded.replay.as_ref().map(|(p, _)| p.clone()),
            out: Arc::new(std::sync::Mutex::new(
                saved.as_deref().cloned().unwrap_or_default(),
            )),
            saved,
        }
    }
}

/// Waits until every shard says it is receiving, or why it cannot.
fn wait_ready(
    ready: &std::sync::mpsc::Receiver<Result<u16, String>>,
    n: usize,
) -> Result<(), RunError> {
    for _ in 0..n {
        match ready.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(_)) => {}
            Ok(Err(reason)) => {
                return Err(RunError::Core {
                    role: "shard",
                    reason,
                })
            }
            Err(_) => {
                return Err(RunError::Core {
                    role: "shard",
                    reason: "did not report ready within 30 s".into(),
                })
            }
        }
    }
    Ok(())
}

/// What the admin server reads: every core's published figures.
fn admin_sources(
    cfg: &Config,
    running: &Running,
    setpoints: Vec<DamSetpoints>,
    live: crate::admin::Liveness,
    operator: Arc<crate::admin::Operator>,
    token: Option<String>,
) -> crate::admin::Sources {
    crate::admin::Sources {
        shards: running.shard_stats.clone(),
        setpoints: setpoints.into_iter().map(Some).collect(),
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
        // Read only when the server runs.
        token: token.filter(|_| cfg.admin.enabled),
        capabilities: running.capabilities.clone(),
    }
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
