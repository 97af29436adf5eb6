//! The first start-up steps: the kernel side (the XDP filter), the receive
//! queues (a UDP socket per shard, or a check that the NIC has a queue per
//! AF_XDP shard) and the rings between the cores.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{Backend, Config, SinkKind};
use crate::dapb::{Class, Conditions, KnobFeed, Params, ShardKnobs};
use crate::handoff::{batch_ring, record_ring, BatchRx, Doorbell, RecordRx, RecordTx};
use crate::ingest::udp;
use crate::model::classifier::ClassifierFile;
use crate::shard::produce::{BatchProducer, ProduceSettings};
use crate::shard::{DamSetpoints, ShardOut, ShardRings};
use crate::telemetry::Published;
use crate::wire::kafka::Compression;

use super::{KernelSide, Placement, RunError};

/// Loads and attaches the XDP filter when `xdp.iface` is set (with the
/// classifier in its maps). Dropping the result detaches it again, so a later
/// step that fails leaves the interface as it was.
pub(super) fn attach_filter(
    cfg: &Config,
    classifier: Option<&ClassifierFile>,
) -> Result<Option<KernelSide>, RunError> {
    let Some(iface) = &cfg.xdp.iface else {
        return Ok(None);
    };
    let opts = crate::xdp::LoadOptions::from_config(cfg);
    let limits = cfg.xdp.limits().map_err(crate::xdp::XdpError::from)?;
    let program = crate::xdp::XdpProgram::load(&opts, &limits)?;
    if let (Some(f), Some(path)) = (classifier, &cfg.model.classifier) {
        program.maps().set_model(Some(f))?;
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
    Ok(Some(KernelSide {
        program,
        attachment,
    }))
}

/// The receive side of each shard.
pub(super) struct Receive {
    /// One UDP socket per shard (None each for AF_XDP: the shard opens its
    /// socket on its own core).
    pub sockets: Vec<Option<socket2::Socket>>,
    /// The address the UDP sockets are bound to.
    pub local_addr: SocketAddr,
    /// Receive buffer the kernel granted (UDP).
    pub recv_buffer_bytes: usize,
}

/// Opens one receive queue per shard: UDP sockets on the same address with
/// SO_REUSEPORT, or, for AF_XDP, checks the NIC has a queue for each shard.
pub(super) fn open(cfg: &Config, n: usize) -> Result<Receive, RunError> {
    let mut rx = Receive {
        sockets: Vec::with_capacity(n),
        local_addr: cfg.ingest.listen,
        recv_buffer_bytes: 0,
    };
    if cfg.ingest.backend == Backend::AfXdp {
        check_nic_queues(cfg.xdp.iface.clone().unwrap_or_default(), n)?;
        rx.sockets.resize_with(n, || None);
        return Ok(rx);
    }
    for i in 0..n {
        let bound = udp::bind(rx.local_addr, cfg.ingest.recv_buffer_bytes)?;
        if i == 0 {
            rx.local_addr = bound
                .socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or(cfg.ingest.listen);
            rx.recv_buffer_bytes = bound.recv_buffer_bytes;
            // The kernel reports twice what it books for payload.
            if bound.recv_buffer_bytes < cfg.ingest.recv_buffer_bytes {
                tracing::warn!(
                    asked = cfg.ingest.recv_buffer_bytes,
                    granted = bound.recv_buffer_bytes,
                    "receive buffer smaller than ingest.recv_buffer_bytes: raise net.core.rmem_max or run with CAP_NET_ADMIN"
                );
            }
        }
        rx.sockets.push(Some(bound.socket));
    }
    Ok(rx)
}

/// AF_XDP: one NIC receive queue per shard.
fn check_nic_queues(iface: String, n: usize) -> Result<(), RunError> {
    match crate::cores::rx_queue_count(&iface) {
        Some(queues) if queues < n => Err(RunError::Queues {
            iface,
            queues,
            shards: n,
        }),
        Some(_) => Ok(()),
        None => {
            tracing::warn!(
                iface = iface.as_str(),
                "cannot tell the receive queue count; each shard's AF_XDP socket will say if its queue is missing"
            );
            Ok(())
        }
    }
}

/// Everything one shard core takes with it.
pub(super) struct ShardSeed {
    pub id: u16,
    pub cpu: usize,
    pub rings: ShardRings,
    pub socket: Option<socket2::Socket>,
    pub setpoints: Option<DamSetpoints>,
}

/// The output core's ends of the shard → output hand-offs.
pub(super) enum OutputEnds {
    /// Record rings (the librdkafka batcher, the debug sinks).
    Records(Vec<RecordRx>),
    /// Batch hand-offs and the knobs the output core publishes to the
    /// shards (the native Kafka client).
    Batches(Vec<BatchRx>, Arc<KnobFeed>, Arc<Doorbell>),
}

/// Batch buffers per shard (native client): open batches (one per
/// partition) plus those in flight. A buffer starts at 64 KiB and keeps what
/// it grew to.
const BATCH_BUFFERS: usize = 64;

/// The shard → output hand-offs: record rings, or with the native Kafka
/// client a batch producer per shard.
fn output_ends(cfg: &Config, n: usize) -> Result<(OutputEnds, Vec<ShardOut>), RunError> {
    let k = &cfg.output.kafka;
    if cfg.output.sink == SinkKind::Kafka && k.client == "native" {
        let feed = Arc::new(KnobFeed::new(ShardKnobs {
            params: Params::compute(&k.dapb, &Conditions::default()),
            partitions: 0,
        }));
        let settings = ProduceSettings {
            gateway: k
                .gateway_id
                .clone()
                .unwrap_or_else(crate::kafka::hostname)
                .into_bytes(),
            compression: Compression::from_name(&k.compression).unwrap_or(Compression::Lz4),
            zstd_level: k.zstd_level,
            default_class: Class::from_name(&k.default_class),
            urgent_devices: k.urgent_devices.clone(),
            latency_devices: k.latency_devices.clone(),
        };
        let bell = Arc::new(Doorbell::new().map_err(|e| RunError::Core {
            role: "output",
            reason: format!("eventfd for the output core's doorbell: {e}"),
        })?);
        let mut rxs = Vec::with_capacity(n);
        let mut outs = Vec::with_capacity(n);
        for _ in 0..n {
            let (mut tx, rx) = batch_ring(BATCH_BUFFERS, 64 << 10);
            tx.ring_on_push(bell.clone());
            let p = BatchProducer::new(tx, feed.clone(), settings.clone()).map_err(|e| {
                RunError::Core {
                    role: "shard",
                    reason: format!("Kafka batch codec: {e} (output.kafka.compression)"),
                }
            })?;
            rxs.push(rx);
            outs.push(ShardOut::Batches(Box::new(p)));
        }
        return Ok((OutputEnds::Batches(rxs, feed, bell), outs));
    }
    let max_payload = cfg.protocol.max_payload_bytes;
    let mut out_rx = Vec::with_capacity(n);
    let mut out_tx = Vec::with_capacity(n);
    for _ in 0..n {
        let (t, r) = record_ring(cfg.pipeline.ring_bytes, max_payload)?;
        out_tx.push(ShardOut::Records(t));
        out_rx.push(r);
    }
    Ok((OutputEnds::Records(out_rx), out_tx))
}

/// The rings: shard → output, shard → shard (the mesh), each shard's
/// overflow queue; returns the output's ends and each shard's seed (with a
/// Dam setpoint slot when `dam` is on).
pub(super) fn rings(
    cfg: &Config,
    placement: &Placement,
    sockets: Vec<Option<socket2::Socket>>,
    dam: bool,
) -> Result<(OutputEnds, Vec<ShardSeed>), RunError> {
    let n = sockets.len();
    let max_payload = cfg.protocol.max_payload_bytes;
    let (out_rx, out_tx) = output_ends(cfg, n)?;
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
            setpoints: dam.then(Published::<Option<crate::control::dam::DamConfig>>::new),
        });
    }
    Ok((out_rx, seeds))
}
