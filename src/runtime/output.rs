//! The output core's thread: the Kafka batcher (or a debug sink) draining one
//! ring per shard, pinned to `placement.output_cpu`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::{Config, SinkKind};
use crate::kafka::KafkaSnapshot;
use crate::sink::{self, SinkSnapshot, SinkTarget};
use crate::telemetry::Published;

use super::queues::OutputEnds;
use super::{placement, OutputEnd, Placement, RunError, SetOnDrop};

/// The running output stage.
pub(super) struct OutputSide {
    pub handle: JoinHandle<Result<OutputEnd, RunError>>,
    /// Records taken from the rings.
    pub sink_stats: Arc<Published<SinkSnapshot>>,
    /// The Kafka batcher's figures (sink = "kafka").
    pub kafka_stats: Option<Arc<Published<KafkaSnapshot>>>,
    /// Set when the thread has ended.
    pub done: Arc<AtomicBool>,
}

/// Starts the output thread and waits until it is up (the Kafka producer
/// made, capabilities dropped) or says why not.
pub(super) fn spawn(
    cfg: &Config,
    placement: &Placement,
    out_rx: OutputEnds,
    tick: Duration,
    abandon: &Arc<AtomicBool>,
) -> Result<OutputSide, RunError> {
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
    let job = OutputJob {
        target,
        kstats: kafka_stats.clone(),
        stats: sink_stats.clone(),
        abandon: abandon.clone(),
        drop_keep: cfg
            .privilege
            .drop_capabilities
            .then(|| crate::privilege::runtime_set(cfg.xdp.iface.is_some())),
        kcfg: cfg.output.kafka.clone(),
        cpu: placement.output_cpu,
        others: others_than_shards(placement)?,
        tick,
    };
    let done = SetOnDrop(output_done.clone());
    let (up_tx, up_rx) = std::sync::mpsc::channel::<Result<(), RunError>>();
    let handle = std::thread::Builder::new()
        .name("klais-output".into())
        .spawn(move || -> Result<OutputEnd, RunError> {
            let _done = done;
            job.run(out_rx, &up_tx)
        })
        .map_err(|e| RunError::Core {
            role: "output thread",
            reason: e.to_string(),
        })?;
    match up_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = handle.join();
            return Err(e);
        }
        Err(_) => {
            return Err(RunError::Core {
                role: "output thread",
                reason: "exited during start-up".into(),
            })
        }
    }
    Ok(OutputSide {
        handle,
        sink_stats,
        kafka_stats,
        done: output_done,
    })
}

/// Every online CPU but the shards' (the output's own when that leaves none):
/// where librdkafka's own threads may run.
fn others_than_shards(placement: &Placement) -> Result<Vec<usize>, RunError> {
    let mut others: Vec<usize> = placement::online_cpus()?
        .into_iter()
        .filter(|c| !placement.shard_cpus.contains(c))
        .collect();
    if others.is_empty() {
        others.push(placement.output_cpu);
    }
    Ok(others)
}

/// What the output thread takes with it.
struct OutputJob {
    /// A debug sink, or None for Kafka.
    target: Option<SinkTarget>,
    kstats: Option<Arc<Published<KafkaSnapshot>>>,
    stats: Arc<Published<SinkSnapshot>>,
    abandon: Arc<AtomicBool>,
    /// Capabilities to keep when dropping (None: no drop).
    drop_keep: Option<Vec<u32>>,
    kcfg: crate::config::Kafka,
    cpu: usize,
    others: Vec<usize>,
    tick: Duration,
}

impl OutputJob {
    fn run(
        self,
        ends: OutputEnds,
        up: &std::sync::mpsc::Sender<Result<(), RunError>>,
    ) -> Result<OutputEnd, RunError> {
        let out_rx = match ends {
            OutputEnds::Records(rx) => rx,
            OutputEnds::Batches(rx, feed, bell) => return self.run_native(rx, feed, bell, up),
        };
        let Some(kstats) = self.kstats.clone() else {
            let target = self.target.ok_or(RunError::Core {
                role: "output thread",
                reason: "no sink".into(),
            })?;
            // core_affinity only lists CPUs in the caller's mask; pin by id.
            core_affinity::set_for_current(core_affinity::CoreId { id: self.cpu });
            let _ = up.send(Ok(()));
            let s = sink::run(target, out_rx, &self.stats, self.tick, &self.abandon)?;
            return Ok(OutputEnd {
                sink: s,
                kafka: None,
            });
        };
        // librdkafka's threads block every signal, so they cannot drop
        // capabilities later: they inherit this thread's, dropped before the
        // producer exists.
        if let Some(keep) = &self.drop_keep {
            if let Err(e) = crate::privilege::drop_self(keep) {
                let _ = up.send(Err(e.into()));
                return Err(RunError::Core {
                    role: "output thread",
                    reason: "cannot drop capabilities".into(),
                });
            }
        }
        // librdkafka's threads (broker I/O, compression) inherit the mask of
        // the thread that makes the producer: every CPU but the shards',
        // never the shard cores. Then this thread pins itself.
        set_affinity(&self.others);
        // The journal (io_uring) is made on this thread: it never leaves it.
        let b = match crate::kafka::Batcher::new(&self.kcfg) {
            Ok(b) => b,
            Err(e) => {
                let _ = up.send(Err(e.into()));
                return Err(RunError::Core {
                    role: "output thread",
                    reason: "Kafka output did not start".into(),
                });
            }
        };
        core_affinity::set_for_current(core_affinity::CoreId { id: self.cpu });
        let _ = up.send(Ok(()));
        let k = crate::kafka::run(b, out_rx, &kstats, self.tick, &self.abandon)?;
        Ok(self.kafka_end(k))
    }
}

impl OutputJob {
    /// The end of a Kafka output (either client): its records as the sink's.
    fn kafka_end(&self, k: KafkaSnapshot) -> OutputEnd {
        let sink = SinkSnapshot {
            records: k.accepted,
            payload_bytes: k.accepted_bytes,
        };
        self.stats.publish(sink);
        OutputEnd {
            sink,
            kafka: Some(k),
        }
    }

    /// The native Kafka client: this thread alone, pinned; it learns the
    /// topic's partitions (and the shards' producer ids) before saying it is
    /// up, so the shards can encode from their first record.
    fn run_native(
        self,
        rx: Vec<crate::handoff::BatchRx>,
        feed: Arc<crate::dapb::KnobFeed>,
        bell: Arc<crate::handoff::Doorbell>,
        up: &std::sync::mpsc::Sender<Result<(), RunError>>,
    ) -> Result<OutputEnd, RunError> {
        let fail = |e: RunError| {
            let _ = up.send(Err(e));
            RunError::Core {
                role: "output thread",
                reason: "Kafka output did not start".into(),
            }
        };
        core_affinity::set_for_current(core_affinity::CoreId { id: self.cpu });
        if let Some(keep) = &self.drop_keep {
            if let Err(e) = crate::privilege::drop_self(keep) {
                return Err(fail(e.into()));
            }
        }
        let kstats = self.kstats.clone().unwrap_or_default();
        let mut p = crate::kafka::native::NativeProducer::new(&self.kcfg, rx, feed)
            .map_err(|e| fail(crate::kafka::OutputError::from(e).into()))?
            .with_doorbell(bell);
        p.start(Duration::from_secs(5))
            .map_err(|e| fail(crate::kafka::OutputError::from(e).into()))?;
        let _ = up.send(Ok(()));
        let flush = Duration::from_millis(self.kcfg.shutdown_flush_ms);
        let k = crate::kafka::native::run(p, &kstats, self.tick, &self.abandon, flush)?;
        Ok(self.kafka_end(k))
    }
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
