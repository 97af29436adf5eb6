//! The one wiring point: starts the cores, connects the rings, stops them in
//! order. Read [`start`] to see the whole topology of a running klais.
//!
//! ```text
//! UDP socket ──► shard 0 (glommio LocalExecutor, Placement::Fixed(shard_cpu))
//!                  parse → sequence tracking → record ring (rtrb SPSC)
//!                                                   │
//!                                                   ▼
//!                          output stage (thread pinned to output_cpu): sink
//! ```
//!
//! Shutdown drains front to back: the stop flag ends the shard's receive loop
//! after it has read what the kernel already queued; the shard drops its end of
//! the ring; the output stage writes everything left in the ring and returns
//! when the ring is empty and abandoned. Nothing accepted is left behind.

pub mod placement;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement as GlommioPlacement};

use crate::config::{Config, SinkKind};
use crate::handoff::{record_ring, RingError};
use crate::ingest::udp::{self, UdpError};
use crate::shard::{Shard, ShardSettings, ShardSnapshot};
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
    /// The XDP filter could not be loaded or attached.
    #[error(transparent)]
    Xdp(#[from] crate::xdp::XdpError),
}

/// The XDP filter of a running klais: the loaded program and its attachment
/// (dropping it detaches and unpins, also on error paths).
struct KernelSide {
    program: crate::xdp::XdpProgram,
    attachment: crate::xdp::Attachment,
}

/// Final figures of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// Shard counters, summed.
    pub shards: ShardSnapshot,
    /// Output stage counters.
    pub sink: SinkSnapshot,
    /// Where the roles ran.
    pub placement: Placement,
    /// Wall time from start to the end of the drain.
    pub elapsed: Duration,
    /// The XDP filter's counters when it was attached.
    pub xdp: Option<crate::xdp::XdpCounters>,
}

/// A running klais.
pub struct Running {
    stop: Arc<AtomicBool>,
    abandon: Arc<AtomicBool>,
    shard_done: Arc<AtomicBool>,
    shard_stats: Arc<Published<ShardSnapshot>>,
    sink_stats: Arc<Published<SinkSnapshot>>,
    shard: glommio::ExecutorJoinHandle<std::io::Result<ShardSnapshot>>,
    output: JoinHandle<Result<SinkSnapshot, SinkError>>,
    local_addr: SocketAddr,
    placement: Placement,
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

/// Raises RLIMIT_MEMLOCK for io_uring: to unlimited when allowed (root), else
/// to the hard limit; fails with the fix when even that is below glommio's floor.
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

/// Starts every core of klais for `cfg` (already validated) and returns at once.
/// A listen port of 0 binds an ephemeral port (tests); see [`Running::local_addr`].
pub fn start(cfg: &Config) -> Result<Running, RunError> {
    ensure_memlock()?;
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
            };
            let limits = cfg.xdp.limits().map_err(crate::xdp::XdpError::from)?;
            let program = crate::xdp::XdpProgram::load(&opts, &limits)?;
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
    let placement = placement::plan(
        &placement::online_cpus()?,
        cfg.cores.shard_cpu,
        cfg.cores.output_cpu,
    )?;
    let bound = udp::bind(cfg.ingest.listen, cfg.ingest.recv_buffer_bytes)?;
    let local_addr = bound
        .socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(cfg.ingest.listen);
    // The kernel reports twice what it books for payload; compare like with like.
    if bound.recv_buffer_bytes < cfg.ingest.recv_buffer_bytes {
        tracing::warn!(
            asked = cfg.ingest.recv_buffer_bytes,
            granted = bound.recv_buffer_bytes,
            "receive buffer smaller than ingest.recv_buffer_bytes: raise net.core.rmem_max or run with CAP_NET_ADMIN"
        );
    }
    let (tx, rx) = record_ring(cfg.pipeline.ring_bytes, cfg.protocol.max_payload_bytes)?;
    let settings = ShardSettings {
        parse: ParseOptions {
            max_payload: cfg.protocol.max_payload_bytes,
            validate_json: cfg.protocol.validate_json,
        },
        max_devices: cfg.sequence.max_devices,
        reset_window: cfg.sequence.reset_window,
    };
    let tick = Duration::from_millis(if cfg.telemetry.stats_interval_ms == 0 {
        1000
    } else {
        cfg.telemetry.stats_interval_ms
    });

    let stop = Arc::new(AtomicBool::new(false));
    let abandon = Arc::new(AtomicBool::new(false));
    let shard_done = Arc::new(AtomicBool::new(false));
    let shard_stats = Published::<ShardSnapshot>::new();
    let sink_stats = Published::<SinkSnapshot>::new();

    let target = match cfg.output.sink {
        SinkKind::Stdout => SinkTarget::Stdout,
        SinkKind::File => SinkTarget::File(
            cfg.output
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from("records.jsonl")),
        ),
        SinkKind::Null => SinkTarget::Null,
    };
    let output = {
        let (stats, abandon) = (sink_stats.clone(), abandon.clone());
        let cpu = placement.output_cpu;
        std::thread::Builder::new()
            .name("klais-output".into())
            .spawn(move || {
                // core_affinity only lists CPUs in the caller's mask; pin by id.
                core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                sink::run(target, vec![rx], &stats, tick, &abandon)
            })
            .map_err(|e| RunError::Core {
                role: "output thread",
                reason: e.to_string(),
            })?
    };

    let shard = {
        let (stop, stats, done) = (stop.clone(), shard_stats.clone(), shard_done.clone());
        let socket = bound.socket;
        LocalExecutorBuilder::new(GlommioPlacement::Fixed(placement.shard_cpu))
            .name("klais-shard-0")
            .spawn(move || async move {
                let r = match Shard::new(0, settings, tx) {
                    Ok(mut shard) => {
                        udp::receive_loop(socket, &mut shard, &stop, &stats, tick).await
                    }
                    Err(e) => Err(e),
                };
                done.store(true, Ordering::Relaxed);
                r
                // `shard` (and its ring end) drops here: the output stage sees
                // the ring abandoned once it has drained it.
            })
            .map_err(|e| RunError::Core {
                role: "shard 0 executor",
                reason: e.to_string(),
            })?
    };

    tracing::info!(
        "klais {} listening on udp {} ({} KiB receive buffer); {}; ring {} KiB; sink {}",
        env!("CARGO_PKG_VERSION"),
        local_addr,
        bound.recv_buffer_bytes / 1024,
        placement,
        cfg.pipeline.ring_bytes / 1024,
        cfg.output.sink.name()
    );
    Ok(Running {
        stop,
        abandon,
        shard_done,
        shard_stats,
        sink_stats,
        shard,
        output,
        local_addr,
        placement,
        recv_buffer_bytes: bound.recv_buffer_bytes,
        started: Instant::now(),
        kernel,
    })
}

impl Running {
    /// The address the shard socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
    /// Where the roles run.
    pub fn placement(&self) -> Placement {
        self.placement
    }
    /// Receive buffer the kernel granted.
    pub fn recv_buffer_bytes(&self) -> usize {
        self.recv_buffer_bytes
    }
    /// The stop flag (signal handlers set it).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }
    /// Latest published counters.
    pub fn snapshot(&self) -> (ShardSnapshot, SinkSnapshot) {
        (self.shard_stats.read(), self.sink_stats.read())
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
        self.output.is_finished() || self.shard_done.load(Ordering::Relaxed)
    }

    /// Stops receiving, drains everything accepted into the sink and returns
    /// the final figures.
    pub fn stop(self) -> Result<RunSummary, RunError> {
        self.stop.store(true, Ordering::Relaxed);
        let shard = self.shard.join();
        // The shard is gone; if it died before dropping its ring end the output
        // stage would wait forever: tell it to give up once the ring is empty.
        self.abandon.store(true, Ordering::Relaxed);
        let out = self.output.join().map_err(|_| RunError::Core {
            role: "output thread",
            reason: "panicked".into(),
        })?;
        let shards = match shard {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(RunError::Core {
                    role: "shard 0",
                    reason: e.to_string(),
                })
            }
            Err(e) => {
                return Err(RunError::Core {
                    role: "shard 0 executor",
                    reason: e.to_string(),
                })
            }
        };
        let sink = out?;
        let xdp = match self.kernel {
            Some(k) => {
                let counters = k.program.maps().counters().ok();
                k.attachment.detach()?;
                counters
            }
            None => None,
        };
        Ok(RunSummary {
            shards,
            sink,
            placement: self.placement,
            elapsed: self.started.elapsed(),
            xdp,
        })
    }
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
        "[{:>7.1}s] rx {:>9.0}/s  accepted {:>9.0}/s  out {:>9.0}/s  totals: rx {} accepted {} out {}  rejected {}{}{}  resets {} gaps {}",
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
    t.push_str(&format!("  accepted            {:>12}\n", sh.accepted));
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
    if let Some(x) = &s.xdp {
        t.push_str(&xdp_counters_text(x));
    }
    t
}

/// The XDP filter's counters, one line per verdict.
pub fn xdp_counters_text(x: &crate::xdp::XdpCounters) -> String {
    let mut t = String::from("  xdp filter (packets, summed over CPUs):\n");
    for v in crate::xdp::Verdict::ALL {
        t.push_str(&format!("    {:<18}{:>12}\n", v.name(), x.get(v)));
    }
    t.push_str(&format!(
        "    events: sent {}, over cap {}, lost (ring full) {}; bucket CAS retries {}\n",
        x.events_sent, x.events_capped, x.events_lost, x.bucket_retries
    ));
    t
}
