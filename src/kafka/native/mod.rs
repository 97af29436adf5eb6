//! The native Kafka producer's output core (`output.kafka.client =
//! "native"`): the shards encode, compress and CRC RecordBatches
//! ([`crate::shard::produce`]); this core only moves them. Per batch it pops
//! a hand-off ring, stamps the idempotent producer's id, epoch and base
//! sequence (O(log n), [`crate::wire::kafka::stamp`]), and sends it inside a
//! Produce request to the partition's leader, scatter-gather from the shard's
//! buffer over io_uring ([`uring`]); per response it gives the buffer back.
//! No tokio, no librdkafka, no copy of a record on this core.
//!
//! **Idempotence** (decision): each shard is its own idempotent producer
//! (InitProducerId once per shard) with contiguous sequences per partition. A
//! device belongs to one shard (fnv1a64, DESIGN.md §1), so its records are
//! one producer's, in order; no shard has to forward records to a partition
//! owner, and the shards stay shared-nothing. The cost is S producer ids and
//! up to S open batches per partition.
//!
//! **Order and retries**: a *lane* is one shard's batches for one partition,
//! in sequence order. At most `max_in_flight` of a lane's batches are in
//! flight (one without idempotence: then no broker check keeps the order of
//! a retried batch and the next), one per Produce request (brokers take one batch per partition per
//! request). A retriable error stops the lane until all its in-flight batches
//! have answered, then it sends again from its oldest unacknowledged batch
//! with the same sequences (no duplicates, no reordering); a leader error
//! refreshes the metadata first. An unknown or fenced producer id gets a new
//! one; the lane's unacknowledged batches are stamped again from sequence 0.
//! DUPLICATE_SEQUENCE_NUMBER is a delivery (the broker has it).
//!
//! **Spill journal, batches as the unit**: the circuit breaker opens when no
//! broker has been reachable for a second while batches wait, or when more
//! than `queue_high_water` records wait; while it is open every new batch is
//! appended whole to the journal (its buffer goes straight back to the
//! shard). Once a broker is up and no older in-memory batch is left, the
//! journal replays in order (a bounded window of batches in the lanes, each
//! acknowledged in the journal by its delivery); the breaker closes when the
//! journal is empty. A stop that cannot deliver within `shutdown_flush_ms`
//! writes the batches it still holds ahead of the journal; the next start
//! delivers them first. A journal entry is `RecordMeta` with
//! [`FLAG_BATCH`]: `sequence` = records, `shard` = shard, `raw_id[0..4]` =
//! partition, `recv_ts_ns` = the first record's receive time.
//!
//! **Security**: TLS (rustls, inside [`uring`]'s connections) and SASL PLAIN
//! and SCRAM ([`secure`]), from `[output.kafka.security]`.
//!
//! **acks = 0**: no response comes; a batch is delivered once the kernel has
//! taken its whole request ([`uring::Conn::written`]), not before, since the
//! request borrows the batch's buffer until then.

pub mod proto;
pub mod secure;
pub mod uring;

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::config::Kafka as KafkaConfig;
use crate::dapb::{Conditions, KnobFeed, Params, ShardKnobs};
use crate::handoff::{BatchRx, ProducedBatch};
use crate::wire::kafka as kwire;
use proto::{Outcome, PartitionResult};
use uring::{Op, Part, Uring};

use super::journal::{self, Journal, JournalConfig, JournalError};
use super::{mono_ns, thread_cpu_ns, Breaker, KafkaSnapshot, OutputError};
use crate::handoff::RecordMeta;

/// Journal entry flag: the payload is a whole Kafka record batch (native
/// client), not one record.
pub const FLAG_BATCH: u8 = 0x08;

/// Why the native producer gave up on something (logged, counted).
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    /// A socket or io_uring call failed.
    #[error("native Kafka client I/O: {0}")]
    Io(#[from] std::io::Error),
    /// No bootstrap broker address resolved.
    #[error("output.kafka.brokers {0:?}: no address resolves (host:port[,host:port…])")]
    NoBroker(String),
    /// The topic's metadata could not be had in time.
    #[error("the native Kafka client needs the topic's partitions at start and got none within {0:?} from {1}: {2}")]
    NoMetadata(Duration, String, String),
    /// The spill journal could not be opened.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// TLS or SASL settings that cannot be used.
    #[error(transparent)]
    Security(#[from] secure::SecurityError),
    /// The codec for re-split batches could not be made.
    #[error(transparent)]
    Codec(#[from] kwire::CodecError),
}

/// The longest an idle output core with a doorbell sleeps: its timers
/// (metadata refresh, reconnect backoff, request timeouts, the journal's
/// fsync interval, the stats tick) need no finer steps.
const IDLE_WAIT_NS: u64 = 10_000_000;

/// Where a batch of a lane is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// To be sent (again).
    Wait,
    /// In a request without an answer yet.
    Flight,
    /// Delivered behind an older batch still waiting (no idempotence).
    Done,
}

/// A batch in a lane.
struct Queued {
    /// Lane-local id (responses name the batch by it).
    id: u64,
    st: St,
    batch: ProducedBatch,
    /// Stamped with (producer id, epoch); None: not stamped yet.
    stamped: Option<(i64, i16)>,
    /// Replayed from the journal: its token (acknowledged on delivery; its
    /// buffer is not a shard's).
    token: Option<u64>,
    /// Its bytes are a copy (the shard's buffer went back at once).
    copy: bool,
}

impl Queued {
    /// A batch from a shard's ring.
    fn direct(id: u64, batch: ProducedBatch, copy: bool) -> Queued {
        Queued {
            id,
            st: St::Wait,
            batch,
            stamped: None,
            token: None,
            copy,
        }
    }
}

/// One shard's batches for one partition, oldest first.
#[derive(Default)]
struct Lane {
    queue: VecDeque<Queued>,
    in_flight: usize,
    next_id: u64,
    /// A retriable error: no new send until nothing is in flight, then the
    /// oldest unacknowledged batch goes first, at `resume_at`.
    rewinding: bool,
    resume_at: u64,
    next_seq: i32,
}

impl Lane {
    /// The first batch to send, if any.
    fn next(&self) -> Option<usize> {
        self.queue.iter().position(|q| q.st == St::Wait)
    }

    fn find(&self, id: u64) -> Option<usize> {
        self.queue.iter().position(|q| q.id == id)
    }

    /// A lane stopped by a retriable error resumes (from its oldest
    /// unacknowledged batch, after 100 ms) once its last batch in flight
    /// has answered, whatever that answer was.
    fn settle_rewind(&mut self) {
        if self.rewinding && self.in_flight == 0 {
            self.rewinding = false;
            self.resume_at = mono_ns() + 100_000_000;
        }
    }
}

/// A shard's producer id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pid {
    /// Not asked yet (or to be asked again).
    None,
    /// InitProducerId in flight.
    Asked,
    /// (id, epoch).
    Ready(i64, i16),
}

/// (shard, partition, batch id) of every batch in a Produce request.
type Picked = Vec<(u32, u32, u64)>;

/// What a connection waits for, in request order.
enum Pending {
    ApiVersions,
    /// Version asked.
    Metadata(i16),
    /// Shard, version asked.
    InitPid(usize, i16),
    /// SaslHandshake v1.
    SaslHandshake,
    /// SaslAuthenticate, version asked.
    SaslAuth(i16),
    /// (shard, partition, batch id) of every batch in the request, sent at
    /// (ns).
    Produce(Vec<(u32, u32, u64)>, u64),
}

/// A broker connection.
struct Broker {
    node: i32,
    /// Its connection's slot while it has one (a closed slot may be reused
    /// by another broker: never look at it again).
    slot: Option<usize>,
    /// Negotiated: produce version (0 until ApiVersions answered).
    produce_version: i16,
    /// Negotiated Metadata and InitProducerId versions.
    metadata_version: i16,
    init_pid_version: i16,
    /// (correlation id, sent at ns, what it was).
    pending: VecDeque<(i32, u64, Pending)>,
    /// Produce requests in flight.
    produce_in_flight: usize,
    /// acks = 0: (frame number, batches) of Produce requests not yet
    /// written whole (they are delivered when they are).
    written: VecDeque<(u64, Picked)>,
    /// Not before this (ns): reconnect backoff.
    retry_at: u64,
    /// SaslAuthenticate version (0 or 1) the broker takes.
    sasl_version: i16,
    /// The SASL exchange under way on this connection.
    sasl: Option<secure::Exchange>,
    up: bool,
}

/// The native output core.
pub struct NativeProducer {
    topic: String,
    client_id: String,
    acks: i16,
    timeout_ms: i32,
    request_timeout_ns: u64,
    max_in_flight: usize,
    idempotent: bool,
    bootstrap: Vec<SocketAddr>,
    /// Host name of every broker address (TLS checks the certificate
    /// against it).
    names: HashMap<SocketAddr, String>,
    security: secure::Security,
    /// The last TLS or SASL refusal (for the start's error): the reason,
    /// and whether SASL (not TLS) refused.
    refused: Option<(String, bool)>,
    /// No partition count was ever known: the shards encode unpartitioned
    /// batches until metadata comes.
    unpartitioned: bool,
    /// Journal entries split into several lane batches: token → parts not
    /// yet delivered (the entry is acknowledged with its last part).
    splits: HashMap<u64, u32>,
    /// Re-encodes split batches (the configured codec).
    codec: kwire::Codec,
    /// Rung by the shards when they hand over a batch: lets the output core
    /// sleep while idle instead of polling the rings.
    bell: Option<Arc<crate::handoff::Doorbell>>,
    io: Uring,
    brokers: Vec<Broker>,
    addrs: HashMap<i32, SocketAddr>,
    /// Leader node per partition (-1: none).
    leaders: Vec<i32>,
    /// The distinct leaders of `leaders` (kept with it).
    leader_nodes: Vec<i32>,
    metadata_wanted: bool,
    metadata_in_flight: bool,
    metadata_at: u64,
    pids: Vec<Pid>,
    lanes: Vec<Vec<Lane>>,
    rings: Vec<BatchRx>,
    feed: Arc<KnobFeed>,
    dapb_cfg: crate::config::Dapb,
    params: Params,
    cond: Conditions,
    correlation: i32,
    results: Vec<PartitionResult>,
    rr: usize,
    hist_normal: Histogram<u64>,
    hist_urgent: Histogram<u64>,
    hist_rtt: Histogram<u64>,
    snap: KafkaSnapshot,
    cpu_at_start: u64,
    errors_window: (u64, u64),
    last_warn: u64,
    journal: Journal,
    journal_dir: std::path::PathBuf,
    breaker: Breaker,
    /// Records in the journal not yet delivered.
    journaled_records: u64,
    /// Journal batches now in lanes.
    replaying: usize,
    /// Records waiting in lanes beyond which the breaker opens.
    high_water: u64,
    /// Since when no broker has been up while batches waited (ns).
    down_since: Option<u64>,
    last_full_log: u64,
}

impl std::fmt::Debug for NativeProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeProducer")
            .field("topic", &self.topic)
            .field("leaders", &self.leaders)
            .finish_non_exhaustive()
    }
}

fn acks_of(s: &str) -> i16 {
    match s {
        "0" => 0,
        "1" => 1,
        _ => -1,
    }
}

impl NativeProducer {
    /// Resolves the bootstrap brokers and makes the ring; nothing is sent
    /// before [`NativeProducer::start`].
    pub fn new(
        cfg: &KafkaConfig,
        rings: Vec<BatchRx>,
        feed: Arc<KnobFeed>,
    ) -> Result<NativeProducer, NativeError> {
        let security = secure::Security::load(&cfg.security)?;
        let mut bootstrap = Vec::new();
        let mut names = HashMap::new();
        for b in cfg
            .brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
        {
            if let Ok(a) = b.to_socket_addrs() {
                let host = host_of(b);
                for addr in a {
                    names.insert(addr, host.clone());
                    bootstrap.push(addr);
                }
            }
        }
        if bootstrap.is_empty() {
            return Err(NativeError::NoBroker(cfg.brokers.clone()));
        }
        let gateway = cfg.gateway_id.clone().unwrap_or_else(super::hostname);
        let hist = || Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
        let cond = Conditions::default();
        let shards = rings.len();
        journal::claim(&cfg.journal.dir, "native")?;
        let recovered_records = journal::read_all(&cfg.journal.dir)
            .map(|v| v.iter().map(|(m, _)| u64::from(m.sequence)).sum())
            .unwrap_or(0);
        let journal = Journal::open(JournalConfig::from_config(&cfg.journal))?;
        let breaker = if journal.outstanding() > 0 {
            tracing::info!(
                batches = journal.outstanding(),
                records = recovered_records,
                "spill journal holds batches from an earlier run: they are delivered first"
            );
            Breaker::Open
        } else {
            Breaker::Closed
        };
        let snap = KafkaSnapshot {
            recovered: recovered_records,
            native: true,
            breaker,
            ..KafkaSnapshot::default()
        };
        Ok(NativeProducer {
            journal,
            journal_dir: cfg.journal.dir.clone(),
            breaker,
            journaled_records: recovered_records,
            replaying: 0,
            high_water: u64::from(cfg.queue_high_water),
            down_since: None,
            last_full_log: 0,
            topic: cfg.topic.clone(),
            client_id: format!("klais-{gateway}"),
            acks: acks_of(&cfg.acks),
            // The broker's own wait for replicas stays under ours.
            timeout_ms: (cfg.request_timeout_ms.saturating_sub(1000)).clamp(1000, 30_000) as i32,
            request_timeout_ns: cfg.request_timeout_ms * 1_000_000,
            max_in_flight: cfg.max_in_flight.clamp(1, 5) as usize,
            idempotent: cfg.idempotence,
            bootstrap,
            names,
            security,
            refused: None,
            unpartitioned: false,
            bell: None,
            splits: HashMap::new(),
            codec: kwire::Codec::new(
                kwire::Compression::from_name(&cfg.compression).unwrap_or(kwire::Compression::Lz4),
                cfg.zstd_level,
            )?,
            io: Uring::new(1024)?,
            brokers: Vec::new(),
            addrs: HashMap::new(),
            leaders: Vec::new(),
            leader_nodes: Vec::new(),
            metadata_wanted: true,
            metadata_in_flight: false,
            metadata_at: 0,
            pids: vec![Pid::None; shards],
            lanes: (0..shards).map(|_| Vec::new()).collect(),
            rings,
            feed,
            params: Params::compute(&cfg.dapb, &cond),
            dapb_cfg: cfg.dapb.clone(),
            cond,
            correlation: 0,
            results: Vec::new(),
            rr: 0,
            hist_normal: hist(),
            hist_urgent: hist(),
            hist_rtt: hist(),
            snap,
            cpu_at_start: thread_cpu_ns(),
            errors_window: (0, 0),
            last_warn: 0,
        })
    }

    /// Connects and learns the topic's partitions (and the shards' producer
    /// ids), up to `limit`; publishes the partition count to the shards.
    pub fn start(&mut self, limit: Duration) -> Result<(), NativeError> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            self.maintain();
            self.step_io(200_000)?;
            let pids_ready =
                !self.idempotent || self.pids.iter().all(|p| matches!(p, Pid::Ready(..)));
            if !self.leaders.is_empty() && pids_ready {
                tracing::info!(
                    topic = %self.topic,
                    partitions = self.leaders.len(),
                    ready_ms = t0.elapsed().as_millis() as u64,
                    "Kafka broker reachable (native client)"
                );
                return Ok(());
            }
        }
        if let Some((r, sasl)) = &self.refused {
            // A broker is there and refuses us: a setting to fix, not an
            // outage to ride out.
            let who = self
                .security
                .sasl
                .as_ref()
                .filter(|_| *sasl)
                .map(|c| (c.mechanism.as_str(), c.user.as_str()));
            return Err(secure::refusal(r, who).into());
        }
        if self.leaders.is_empty() {
            // The count an earlier run saw, beside the journal: enough to
            // encode, and what is encoded waits in the journal for a broker.
            let Some(n) = self.saved_partitions() else {
                // Never known: the shards encode one batch each, the journal
                // keeps them, and they are split by partition once a broker
                // gives the count.
                tracing::warn!(
                    topic = %self.topic,
                    "Kafka broker not reachable at the first start (no partition count saved): batches go to the spill journal unpartitioned and are split by partition once a broker answers"
                );
                self.unpartitioned = true;
                self.publish_knobs();
                return Ok(());
            };
            tracing::warn!(
                topic = %self.topic,
                partitions = n,
                "Kafka broker not reachable at start: encoding for the partition count saved by an earlier run; batches go to the spill journal until a broker answers"
            );
            self.leaders = vec![-1; n as usize];
            self.publish_knobs();
        }
        Ok(())
    }

    /// Where the topic's partition count is kept between runs.
    fn partitions_file(&self) -> std::path::PathBuf {
        self.journal_dir.join("partitions")
    }

    /// The partition count an earlier run saved for this topic.
    fn saved_partitions(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.partitions_file()).ok()?;
        let (topic, n) = text.trim().rsplit_once(' ')?;
        let n: u32 = n.parse().ok()?;
        (topic == self.topic && n > 0).then_some(n)
    }

    fn next_correlation(&mut self) -> i32 {
        self.correlation = self.correlation.wrapping_add(1) & 0x7fff_ffff;
        self.correlation
    }

    /// The broker entry for `node` (-1: bootstrap), connecting if needed.
    fn broker(&mut self, node: i32) -> Option<usize> {
        let now = mono_ns();
        if let Some(i) = self.brokers.iter().position(|b| b.node == node) {
            let b = &self.brokers[i];
            if b.slot.is_some() {
                return Some(i);
            }
            if now < b.retry_at {
                return None;
            }
            let addr = self.addr_of(node)?;
            let slot = self.open(addr)?;
            let b = &mut self.brokers[i];
            b.sasl = None;
            b.slot = Some(slot);
            b.produce_version = 0;
            b.up = false;
            self.send_api_versions(i);
            return Some(i);
        }
        let addr = self.addr_of(node)?;
        let slot = self.open(addr)?;
        self.brokers.push(Broker {
            sasl_version: 0,
            sasl: None,
            node,
            slot: Some(slot),
            produce_version: 0,
            pending: VecDeque::new(),
            metadata_version: 1,
            init_pid_version: 1,
            produce_in_flight: 0,
            written: VecDeque::new(),
            retry_at: 0,
            up: false,
        });
        let i = self.brokers.len() - 1;
        self.send_api_versions(i);
        Some(i)
    }

    /// A connection to `addr`, with TLS when configured.
    fn open(&mut self, addr: SocketAddr) -> Option<usize> {
        let host = self
            .names
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| addr.ip().to_string());
        let tls = match self.security.tls_client(&host) {
            Ok(t) => t,
            Err(e) => {
                self.warn(&format!("broker {addr}: {e}"));
                return None;
            }
        };
        self.io.connect(addr, tls).ok()
    }

    fn addr_of(&self, node: i32) -> Option<SocketAddr> {
        if node < 0 {
            let k = (mono_ns() / 1_000_000_000) as usize % self.bootstrap.len();
            return self.bootstrap.get(k).copied();
        }
        self.addrs.get(&node).copied()
    }

    fn send_control(
        &mut self,
        b: usize,
        pending: Pending,
        encode: impl FnOnce(&mut Vec<u8>, i32, &str),
    ) {
        let Some(slot) = self.brokers[b].slot else {
            return;
        };
        let corr = self.next_correlation();
        let mut frame = self.io.frame();
        encode(&mut frame.head, corr, &self.client_id);
        frame.parts.push(Part::Head(0, frame.head.len()));
        self.io.enqueue(slot, frame);
        self.brokers[b]
            .pending
            .push_back((corr, mono_ns(), pending));
    }

    fn send_api_versions(&mut self, b: usize) {
        self.send_control(b, Pending::ApiVersions, proto::api_versions);
    }

    /// Sleeps on `bell` when idle (the shards ring it when they hand over a
    /// batch) instead of polling the rings.
    pub fn with_doorbell(mut self, bell: Arc<crate::handoff::Doorbell>) -> NativeProducer {
        self.bell = Some(bell);
        self
    }

    /// One round: batches from the rings into lanes, requests out, responses
    /// in; with nothing taken, waits up to `wait_ns` for a completion — or,
    /// with a doorbell, up to `idle_ns` for a completion or a shard's batch.
    /// Returns the batches taken.
    pub fn step(&mut self, wait_ns: u64) -> Result<usize, NativeError> {
        let got = self.take_batches();
        self.maintain();
        self.breaker_step();
        self.journal.poll();
        self.fill_requests();
        if got > 0 {
            self.step_io(0)?;
            return Ok(got);
        }
        let Some(bell) = self.bell.clone() else {
            self.step_io(wait_ns)?;
            return Ok(got);
        };
        // Park, then look at the rings once more: a batch pushed before a
        // shard could see the mark is found here; one pushed after rings.
        bell.park();
        let wait = if self.rings.iter().any(crate::handoff::BatchRx::has_batch) {
            0
        } else {
            self.io.arm_wake(bell.fd())?;
            IDLE_WAIT_NS
        };
        // A wake-up is consumed by the posted read itself (it stays posted
        // until a shard rings).
        let r = self.step_io(wait);
        bell.unpark();
        r?;
        Ok(got)
    }

    fn take_batches(&mut self) -> usize {
        let mut got = 0;
        let mut unpartitioned = Vec::new();
        for (s, rx) in self.rings.iter_mut().enumerate() {
            for _ in 0..256 {
                let Some(mut b) = rx.pop() else {
                    break;
                };
                got += 1;
                self.snap.accepted += u64::from(b.records);
                self.snap.accepted_bytes += b.payload_bytes;
                self.snap.dapb.on_release(
                    crate::dapb::Release::from_code(b.release),
                    u64::from(b.records),
                    b.payload_bytes,
                    u64::from(b.capacity),
                );
                if b.partition == crate::dapb::UNPARTITIONED {
                    unpartitioned.push((s, b));
                    continue;
                }
                let lanes = &mut self.lanes[s];
                let p = b.partition as usize;
                if lanes.len() <= p {
                    lanes.resize_with(p + 1, Lane::default);
                }
                let lane = &mut lanes[p];
                if self.breaker == Breaker::Open {
                    if lane.queue.iter().all(|q| q.token.is_some()) {
                        spill(
                            &mut self.journal,
                            &mut self.snap,
                            &mut self.journaled_records,
                            &mut self.last_full_log,
                            s,
                            &b,
                        );
                        rx.give_back(b.bytes);
                        continue;
                    }
                    // Older batches of this lane are still in memory (in
                    // flight): this one queues behind them as a copy, and
                    // the shard gets its buffer back now.
                    let copy = ProducedBatch {
                        bytes: b.bytes.clone(),
                        ..b
                    };
                    rx.give_back(std::mem::take(&mut b.bytes));
                    lane.next_id += 1;
                    lane.queue
                        .push_back(Queued::direct(lane.next_id, copy, true));
                    continue;
                }
                lane.next_id += 1;
                lane.queue.push_back(Queued::direct(lane.next_id, b, false));
            }
        }
        for (s, b) in unpartitioned {
            self.take_unpartitioned(s, b);
        }
        got
    }

    /// A batch a shard encoded before any partition count was known: into
    /// the journal behind the others like it (the breaker opens if it was
    /// not), or — the count known and nothing journaled ahead of it — split
    /// by partition into the lanes at once. The shard's buffer goes back.
    fn take_unpartitioned(&mut self, s: usize, mut b: ProducedBatch) {
        let bytes = std::mem::take(&mut b.bytes);
        if self.leaders.is_empty() || self.breaker == Breaker::Open {
            if self.breaker == Breaker::Closed {
                self.breaker = Breaker::Open;
                self.snap.breaker_opens += 1;
                tracing::warn!(
                    "circuit breaker open (no partition count yet): record batches go to the spill journal"
                );
            }
            b.bytes = bytes;
            spill(
                &mut self.journal,
                &mut self.snap,
                &mut self.journaled_records,
                &mut self.last_full_log,
                s,
                &b,
            );
            self.rings[s].give_back(b.bytes);
            return;
        }
        match self.split_batch(&bytes, &b) {
            Ok(parts) => {
                for (p, part) in parts {
                    let lane = self.lane_mut(s, p);
                    lane.next_id += 1;
                    let id = lane.next_id;
                    lane.queue.push_back(Queued::direct(id, part, true));
                }
            }
            Err(e) => {
                self.snap.journal_lost += u64::from(b.records);
                tracing::error!(records = b.records, error = %e, "an unpartitioned batch could not be split: its records are LOST (counted journal_lost)");
            }
        }
        self.rings[s].give_back(bytes);
    }

    /// The lane of shard `s` for partition `p` (made if new).
    fn lane_mut(&mut self, s: usize, p: usize) -> &mut Lane {
        let lanes = &mut self.lanes[s];
        if lanes.len() <= p {
            lanes.resize_with(p + 1, Lane::default);
        }
        &mut lanes[p]
    }

    /// Splits an unpartitioned batch by the murmur2 partition of each key
    /// into one batch per partition, records in their order, encoded with
    /// the configured codec. Per-record work on the output core, done only
    /// for batches encoded before the first partition count was known.
    fn split_batch(
        &mut self,
        bytes: &[u8],
        like: &ProducedBatch,
    ) -> Result<Vec<(usize, ProducedBatch)>, kwire::BatchDecodeError> {
        let records = kwire::decode_batch(bytes)?;
        let n = self.leaders.len().max(1) as u32;
        let mut writers: Vec<(usize, kwire::BatchWriter, u64)> = Vec::new();
        for r in &records {
            let p = kwire::partition_for(&r.key, n) as usize;
            let i = match writers.iter().position(|w| w.0 == p) {
                Some(i) => i,
                None => {
                    writers.push((p, kwire::BatchWriter::new(Vec::new()), 0));
                    writers.len() - 1
                }
            };
            let headers: Vec<(&[u8], &[u8])> = r
                .headers
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice()))
                .collect();
            writers[i].1.push(r.ts_ms, &r.key, &r.value, &headers);
            writers[i].2 += r.value.len() as u64;
        }
        let mut out = Vec::with_capacity(writers.len());
        for (p, w, payload) in writers {
            let records = w.count();
            let (bytes, _) = w.finish(&mut self.codec);
            out.push((
                p,
                ProducedBatch {
                    partition: p as u32,
                    records,
                    payload_bytes: payload,
                    first_recv_ns: like.first_recv_ns,
                    urgent: like.urgent,
                    release: crate::dapb::Release::Drain.code(),
                    capacity: 0,
                    bytes,
                },
            ));
        }
        Ok(out)
    }

    /// Metadata, producer ids and reconnections when due; a broker that
    /// has not answered its oldest request within the request timeout is
    /// closed (its requests fail and are retried on a new connection: a
    /// broker that hangs — stopped, overloaded, a dead path with no RST —
    /// never holds batches for good).
    fn maintain(&mut self) {
        let now = mono_ns();
        let timeout = self.request_timeout_ns;
        if let Some(b) = self.brokers.iter().position(|b| {
            b.pending
                .front()
                .is_some_and(|&(_, at, _)| now.saturating_sub(at) > timeout)
        }) {
            self.snap.request_timeouts += 1;
            self.warn(&format!(
                "broker node {}: no answer within output.kafka.request_timeout_ms ({} ms); reconnecting",
                self.brokers[b].node,
                timeout / 1_000_000
            ));
            self.close_broker(b, 200_000_000);
        }
        if now.saturating_sub(self.metadata_at) > 60_000_000_000 {
            self.metadata_wanted = true;
        }
        // At most four metadata requests a second.
        if self.metadata_wanted
            && !self.metadata_in_flight
            && now.saturating_sub(self.metadata_at) >= 250_000_000
        {
            let node = self.brokers.iter().find(|b| b.up).map_or(-1, |b| b.node);
            if let Some(b) = self.broker(node) {
                if self.brokers[b].up {
                    let topic = self.topic.clone();
                    let v = self.brokers[b].metadata_version;
                    self.send_control(b, Pending::Metadata(v), |o, c, id| {
                        proto::metadata(o, v, c, id, &topic)
                    });
                    self.metadata_in_flight = true;
                    self.metadata_wanted = false;
                    self.metadata_at = now;
                }
            }
        }
        if self.idempotent {
            for s in 0..self.pids.len() {
                if self.pids[s] != Pid::None {
                    continue;
                }
                let Some(b) = self.brokers.iter().position(|b| b.up) else {
                    break;
                };
                let v = self.brokers[b].init_pid_version;
                self.send_control(b, Pending::InitPid(s, v), |o, c, id| {
                    proto::init_producer_id(o, v, c, id)
                });
                self.pids[s] = Pid::Asked;
            }
        }
    }

    /// Builds Produce requests for every leader with room in flight.
    fn fill_requests(&mut self) {
        let parts = self.leaders.len();
        if parts == 0 {
            return;
        }
        let now = mono_ns();
        for k in 0..self.leader_nodes.len() {
            let node = self.leader_nodes[k];
            let Some(b) = self.broker(node) else {
                continue;
            };
            while self.brokers[b].up && self.brokers[b].produce_in_flight < self.max_in_flight {
                if !self.build_request(b, node, now) {
                    break;
                }
            }
        }
    }

    /// One Produce request to broker `b` (leader `node`): one ready batch per
    /// partition it leads. False when nothing was ready.
    fn build_request(&mut self, b: usize, node: i32, now: u64) -> bool {
        let Some(slot) = self.brokers[b].slot else {
            return false;
        };
        let shards = self.lanes.len();
        let mut picked: Vec<(u32, u32, u64)> = Vec::new();
        self.rr = self.rr.wrapping_add(1);
        for p in 0..self.leaders.len() {
            if self.leaders[p] != node {
                continue;
            }
            for k in 0..shards {
                let s = (self.rr + k) % shards;
                if let Some(i) = self.lane_ready(s, p, now) {
                    picked.push((s as u32, p as u32, i as u64));
                    break;
                }
            }
        }
        if picked.is_empty() {
            return false;
        }
        let corr = self.next_correlation();
        let version = self.brokers[b].produce_version;
        let mut frame = self.io.frame();
        let head = proto::ProduceHead {
            version,
            client: &self.client_id,
            acks: self.acks,
            timeout_ms: self.timeout_ms,
            topic: &self.topic,
        };
        proto::produce_head(&mut frame.head, &head, corr, picked.len());
        let mut total = frame.head.len() - 4;
        frame.parts.push(Part::Head(0, frame.head.len()));
        for pick in &mut picked {
            let (s, p, i) = (pick.0 as usize, pick.1 as usize, pick.2 as usize);
            self.stamp(s, p, i);
            let lane = &mut self.lanes[s][p];
            lane.in_flight += 1;
            let q = &mut lane.queue[i];
            q.st = St::Flight;
            pick.2 = q.id;
            let at = frame.head.len();
            frame.head.extend_from_slice(&proto::produce_partition(
                pick.1 as i32,
                q.batch.bytes.len(),
            ));
            frame.parts.push(Part::Head(at, 8));
            frame
                .parts
                .push(Part::Borrowed(q.batch.bytes.as_ptr(), q.batch.bytes.len()));
            total += 8 + q.batch.bytes.len();
        }
        frame.head[0..4].copy_from_slice(&(total as i32).to_be_bytes());
        let br = &mut self.brokers[b];
        let number = self.io.enqueue(slot, frame);
        self.snap.produce_requests += 1;
        if self.acks == 0 {
            // No response will come: delivered once the kernel has taken
            // the whole request (not before: it borrows the batches).
            br.written.push_back((number, picked));
        } else {
            br.pending
                .push_back((corr, now, Pending::Produce(picked, now)));
            br.produce_in_flight += 1;
        }
        true
    }

    /// The index of lane (s, p)'s next batch to send, if it may send now.
    fn lane_ready(&self, s: usize, p: usize, now: u64) -> Option<usize> {
        let lane = self.lanes[s].get(p)?;
        // Without idempotence nothing on the broker keeps a lane's order
        // across a retry: one batch of a lane in flight at a time.
        let limit = if self.idempotent {
            self.max_in_flight
        } else {
            1
        };
        if lane.in_flight >= limit || lane.rewinding || now < lane.resume_at {
            return None;
        }
        if self.idempotent && !matches!(self.pids[s], Pid::Ready(..)) {
            return None;
        }
        lane.next()
    }

    /// Stamps lane (s, p)'s batch `i` with the shard's producer id unless
    /// it already carries it (a resend keeps its sequence).
    fn stamp(&mut self, s: usize, p: usize, i: usize) {
        let Pid::Ready(id, epoch) = self.pids[s] else {
            return;
        };
        let lane = &mut self.lanes[s][p];
        let seq = lane.next_seq;
        let q = &mut lane.queue[i];
        if q.stamped == Some((id, epoch)) {
            return;
        }
        kwire::stamp(&mut q.batch.bytes, id, epoch, seq);
        q.stamped = Some((id, epoch));
        lane.next_seq = seq.wrapping_add(q.batch.records as i32) & 0x7fff_ffff;
    }

    /// Batch `id` of lane (s, p) is written: counted, and its buffer (with
    /// every delivered one before it) goes back to the shard.
    fn delivered(&mut self, s: usize, p: usize, id: u64) {
        let lane = &mut self.lanes[s][p];
        let Some(i) = lane.find(id) else {
            return;
        };
        if lane.queue[i].st == St::Flight {
            lane.in_flight -= 1;
        }
        lane.queue[i].st = St::Done;
        lane.settle_rewind();
        let now = crate::clock::now_ns();
        loop {
            let lane = &mut self.lanes[s][p];
            if !lane.queue.front().is_some_and(|q| q.st == St::Done) {
                break;
            }
            let Some(q) = lane.queue.pop_front() else {
                break;
            };
            self.snap.delivered += u64::from(q.batch.records);
            let added = (now.saturating_sub(q.batch.first_recv_ns) / 1000).max(1);
            let h = if q.batch.urgent {
                &mut self.hist_urgent
            } else {
                &mut self.hist_normal
            };
            let _ = h.record(added);
            self.retire(s, q);
        }
    }

    /// A batch leaves its lane for good (delivered or refused): a replayed
    /// one is acknowledged in the journal, a shard's buffer goes back.
    fn retire(&mut self, s: usize, q: Queued) {
        match q.token {
            Some(t) => {
                self.replaying -= 1;
                self.journaled_records -= u64::from(q.batch.records);
                // A split entry is acknowledged with its last part.
                if let Some(left) = self.splits.get_mut(&t) {
                    *left -= 1;
                    if *left > 0 {
                        return;
                    }
                    self.splits.remove(&t);
                }
                self.journal.ack(t);
            }
            None if !q.copy => self.rings[s].give_back(q.batch.bytes),
            None => {}
        }
    }

    /// Submits, waits up to `wait_ns` for completions, handles them.
    fn step_io(&mut self, wait_ns: u64) -> Result<(), NativeError> {
        self.io.kick()?;
        self.io.reap(wait_ns)?;
        let done = std::mem::take(&mut self.io.done);
        for &(slot, op, res) in &done {
            let Some(b) = self.brokers.iter().position(|b| b.slot == Some(slot)) else {
                continue;
            };
            match op {
                Op::Connect if res != 0 => self.broker_failed(b, "connect", res),
                Op::Connect => {}
                Op::Send if res <= 0 => self.broker_failed(b, "send", res),
                Op::Send => self.written(b, slot),
                Op::Recv if res <= 0 => self.broker_failed(b, "receive", res),
                Op::Recv => self.read_responses(b),
                Op::Wake => {}
            }
        }
        self.io.done = done;
        Ok(())
    }

    /// acks = 0: the requests the kernel has taken whole are delivered.
    fn written(&mut self, b: usize, slot: usize) {
        let done = self.io.conns[slot].written;
        while self.brokers[b].written.front().is_some_and(|w| w.0 <= done) {
            if let Some((_, picked)) = self.brokers[b].written.pop_front() {
                for (s, p, id) in picked {
                    self.delivered(s as usize, p as usize, id);
                }
            }
        }
    }

    /// Parses every whole response in the connection's buffer.
    fn read_responses(&mut self, b: usize) {
        loop {
            let Some(slot) = self.brokers[b].slot else {
                return;
            };
            let c = &self.io.conns[slot];
            if c.rlen < 4 {
                return;
            }
            let size = i32::from_be_bytes([c.rbuf[0], c.rbuf[1], c.rbuf[2], c.rbuf[3]]);
            if !(4..=(64 << 20)).contains(&size) {
                self.protocol_error(b, "a response size out of bounds");
                return;
            }
            let size = size as usize;
            if c.rlen < 4 + size {
                if c.rbuf.len() < 4 + size {
                    let c = &mut self.io.conns[slot];
                    c.rbuf.resize(4 + size + 1024, 0);
                }
                return;
            }
            let frame = c.rbuf[4..4 + size].to_vec();
            let c = &mut self.io.conns[slot];
            c.rbuf.copy_within(4 + size..c.rlen, 0);
            c.rlen -= 4 + size;
            let corr = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
            let expected = self.brokers[b].pending.iter().any(|(c, _, _)| *c == corr);
            if self.acks == 0 && !expected {
                // A broker that answers acks=0 requests anyway (tansu does;
                // Apache Kafka does not): nothing waits for it.
                continue;
            }
            let Some((want, _, pending)) = self.brokers[b].pending.pop_front() else {
                self.protocol_error(b, "a response nobody asked for");
                return;
            };
            if want != corr {
                self.protocol_error(b, "a response out of order (correlation id)");
                return;
            }
            if let Err(e) = self.on_response(b, pending, &frame[4..]) {
                self.snap.bad_responses += 1;
                self.protocol_error(b, &e.to_string());
                return;
            }
        }
    }

    fn on_response(
        &mut self,
        b: usize,
        pending: Pending,
        body: &[u8],
    ) -> Result<(), proto::DecodeError> {
        match pending {
            Pending::ApiVersions => {
                let (err, apis) = proto::decode_api_versions(body)?;
                let produce = apis.iter().find(|a| a.0 == proto::PRODUCE);
                let v = produce.map_or(0, |&(_, _, max)| max.min(proto::PRODUCE_VERSIONS.1));
                if err != 0 || v < proto::PRODUCE_VERSIONS.0 {
                    self.warn(&format!(
                        "broker node {} cannot take Produce v{}+ (ApiVersions error {err}, Produce up to v{v}): the native client needs Kafka 0.11 or later",
                        self.brokers[b].node,
                        proto::PRODUCE_VERSIONS.0
                    ));
                    self.close_broker(b, 1_000_000_000);
                    return Ok(());
                }
                let max = |key: i16| apis.iter().find(|a| a.0 == key).map_or(-1, |a| a.2);
                let br = &mut self.brokers[b];
                br.produce_version = v;
                br.metadata_version = max(proto::METADATA)
                    .clamp(proto::METADATA_VERSIONS.0, proto::METADATA_VERSIONS.1);
                // v3 where the broker has it (tansu gives an idempotent
                // producer id only from v3), else v1.
                br.init_pid_version = if max(proto::INIT_PRODUCER_ID) >= 3 {
                    3
                } else {
                    1
                };
                br.sasl_version = max(proto::SASL_AUTHENTICATE).min(1);
                if let Some(creds) = &self.security.sasl {
                    if max(proto::SASL_HANDSHAKE) < 1 || br.sasl_version < 0 {
                        self.sasl_failed(
                            b,
                            "it does not speak SaslHandshake v1 and SaslAuthenticate (Kafka 1.0 or later does)",
                        );
                        return Ok(());
                    }
                    let mech = creds.mechanism.clone();
                    self.send_control(b, Pending::SaslHandshake, |o, c, id| {
                        proto::sasl_handshake(o, c, id, &mech)
                    });
                } else {
                    br.up = true;
                }
            }
            Pending::SaslHandshake => {
                let (err, offered) = proto::decode_sasl_handshake(body)?;
                let Some(creds) = self.security.sasl.clone() else {
                    return Ok(());
                };
                if err != 0 {
                    self.sasl_failed(
                        b,
                        &format!(
                            "it does not enable {} (it offers {offered:?}; set output.kafka.security.sasl_mechanism to one of them)",
                            creds.mechanism
                        ),
                    );
                    return Ok(());
                }
                match secure::Exchange::start(&creds) {
                    Ok((x, first)) => {
                        self.brokers[b].sasl = Some(x);
                        self.send_sasl(b, &first);
                    }
                    Err(e) => self.sasl_failed(b, &e),
                }
            }
            Pending::SaslAuth(v) => {
                let r = proto::decode_sasl_authenticate(body, v)?;
                if r.error != 0 {
                    let user = self.security.sasl.as_ref().map_or("", |c| c.user.as_str());
                    self.sasl_failed(
                        b,
                        &format!(
                            "authentication as {user:?} refused (error {}: {})",
                            r.error,
                            r.message.as_deref().unwrap_or("no message")
                        ),
                    );
                    return Ok(());
                }
                let Some(x) = self.brokers[b].sasl.as_mut() else {
                    return Ok(());
                };
                let was_finished = x.finished();
                match x.step(if was_finished { None } else { Some(&r.auth) }) {
                    Ok(Some(next)) => self.send_sasl(b, &next),
                    Ok(None) => {
                        let br = &mut self.brokers[b];
                        br.sasl = None;
                        br.up = true;
                    }
                    Err(e) => {
                        self.sasl_failed(b, &format!("the broker's answer fails the check: {e}"))
                    }
                }
            }
            Pending::Metadata(v) => {
                self.metadata_in_flight = false;
                let m = proto::decode_metadata(body, v)?;
                self.apply_metadata(&m);
            }
            Pending::InitPid(s, v) => {
                let (err, id, epoch) = proto::decode_init_producer_id(body, v)?;
                self.pids[s] = if err == 0 {
                    for lane in &mut self.lanes[s] {
                        lane.next_seq = 0;
                    }
                    Pid::Ready(id, epoch)
                } else {
                    self.warn(&format!(
                        "InitProducerId refused (error {err}); asking again"
                    ));
                    Pid::None
                };
            }
            Pending::Produce(picked, sent_at) => {
                self.brokers[b].produce_in_flight -= 1;
                let mut results = std::mem::take(&mut self.results);
                let v = self.brokers[b].produce_version;
                let r = proto::decode_produce(body, v, &mut results);
                if let Err(e) = r {
                    self.results = results;
                    self.produce_failed(&picked);
                    return Err(e);
                }
                self.on_produce(&picked, &results, sent_at);
                self.results = results;
            }
        }
        Ok(())
    }

    fn apply_metadata(&mut self, m: &proto::Metadata) {
        for br in &m.brokers {
            let addr = format!("{}:{}", br.host, br.port);
            if let Some(a) = addr.to_socket_addrs().ok().and_then(|mut a| a.next()) {
                self.addrs.insert(br.id, a);
                self.names.insert(a, br.host.clone());
            }
        }
        let Some((_, err, parts)) = m.topics.iter().find(|t| t.0 == self.topic) else {
            self.warn(&format!(
                "topic {:?}: not in the broker's metadata (create it, or let the broker create topics); batches wait",
                self.topic
            ));
            self.metadata_wanted = true;
            return;
        };
        if *err != 0 || parts.is_empty() {
            self.warn(&format!(
                "topic {:?}: metadata error {err} (create it, or let the broker create topics); batches wait",
                self.topic
            ));
            self.metadata_wanted = true;
            return;
        }
        let n = parts.iter().map(|p| p.index + 1).max().unwrap_or(0).max(0) as usize;
        let mut leaders = vec![-1; n.max(self.leaders.len())];
        for p in parts {
            if p.index >= 0 {
                leaders[p.index as usize] = if p.error == 0 { p.leader } else { -1 };
            }
        }
        if leaders.iter().any(|&l| l < 0) {
            self.metadata_wanted = true;
        }
        if leaders.len() != self.leaders.len() {
            let saved = format!("{} {}\n", self.topic, leaders.len());
            if let Err(e) = std::fs::write(self.partitions_file(), saved) {
                tracing::warn!(error = %e, "cannot save the topic's partition count beside the journal (a start without the broker will not be possible)");
            }
        }
        let mut nodes: Vec<i32> = leaders.iter().copied().filter(|&l| l >= 0).collect();
        nodes.sort_unstable();
        nodes.dedup();
        self.leader_nodes = nodes;
        self.leaders = leaders;
        self.publish_knobs();
    }

    fn on_produce(
        &mut self,
        picked: &[(u32, u32, u64)],
        results: &[PartitionResult],
        sent_at: u64,
    ) {
        let now = mono_ns();
        let rtt = now.saturating_sub(sent_at) / 1000;
        let _ = self.hist_rtt.record(rtt.max(1));
        self.cond.on_rtt(rtt as f64);
        for &(s, p, id) in picked {
            let code = results
                .iter()
                .find(|r| r.index == p as i32)
                .map_or(-1, |r| r.error);
            self.errors_window.0 += 1;
            let front = self.lanes[s as usize][p as usize].find(id) == Some(0);
            let outcome = match code {
                -1 => Outcome::Retry,
                // OUT_OF_ORDER_SEQUENCE_NUMBER for the oldest batch in
                // flight: the broker lost this producer's state.
                45 if front => Outcome::NewProducer,
                c => proto::outcome(c),
            };
            if outcome != Outcome::Delivered {
                self.errors_window.1 += 1;
            }
            match outcome {
                Outcome::Delivered => self.delivered(s as usize, p as usize, id),
                Outcome::Retry => self.lane_failed(s as usize, p as usize, id),
                Outcome::RetryAfterMetadata => {
                    self.metadata_wanted = true;
                    self.lane_failed(s as usize, p as usize, id);
                }
                Outcome::NewProducer => {
                    self.new_producer(s as usize);
                    self.lane_failed(s as usize, p as usize, id);
                }
                Outcome::Reject => self.rejected(s as usize, p as usize, id, code),
            }
        }
    }

    /// A batch of lane (s, p) failed retriably: the lane stops, and resends
    /// from its front once nothing of it is in flight.
    fn lane_failed(&mut self, s: usize, p: usize, id: u64) {
        self.snap.retries += 1;
        let lane = &mut self.lanes[s][p];
        if let Some(i) = lane.find(id) {
            if lane.queue[i].st == St::Flight {
                lane.in_flight -= 1;
                lane.queue[i].st = St::Wait;
            }
        }
        lane.rewinding = true;
        lane.settle_rewind();
    }

    /// The shard's producer id is gone: a new one is asked for, and its
    /// unacknowledged batches are stamped again from sequence 0.
    fn new_producer(&mut self, s: usize) {
        if self.pids[s] != Pid::Asked {
            self.pids[s] = Pid::None;
        }
        self.snap.producer_resets += 1;
    }

    fn rejected(&mut self, s: usize, p: usize, id: u64, code: i16) {
        let lane = &mut self.lanes[s][p];
        let Some(i) = lane.find(id) else {
            return;
        };
        let Some(q) = lane.queue.remove(i) else {
            return;
        };
        if q.st == St::Flight {
            lane.in_flight -= 1;
        }
        lane.settle_rewind();
        self.snap.dropped_rejected += u64::from(q.batch.records);
        tracing::error!(
            partition = p,
            records = q.batch.records,
            error = code,
            "the broker refused a batch permanently: DROPPED (counted as rejected)"
        );
        // Later batches of this producer have a sequence gap now.
        self.new_producer(s);
        self.retire(s, q);
    }

    fn produce_failed(&mut self, picked: &[(u32, u32, u64)]) {
        for &(s, p, id) in picked {
            self.lane_failed(s as usize, p as usize, id);
        }
    }

    fn protocol_error(&mut self, b: usize, why: &str) {
        self.warn(&format!(
            "broker node {}: {why}; reconnecting",
            self.brokers[b].node
        ));
        self.close_broker(b, 100_000_000);
    }

    /// Sends the next SASL message.
    fn send_sasl(&mut self, b: usize, msg: &[u8]) {
        let v = self.brokers[b].sasl_version;
        self.send_control(b, Pending::SaslAuth(v), |o, c, id| {
            proto::sasl_authenticate(o, v, c, id, msg)
        });
    }

    /// The SASL exchange failed: said at once (not rate-limited: an operator
    /// must see it), counted, and tried again after 5 s.
    fn sasl_failed(&mut self, b: usize, why: &str) {
        self.snap.auth_failures += 1;
        self.refused = Some((why.to_string(), true));
        tracing::error!(
            "Kafka (native): broker node {}: SASL {}: {why}; batches wait (journaled once the breaker opens); retrying in 5 s",
            self.brokers[b].node,
            self.security
                .sasl
                .as_ref()
                .map_or("", |c| c.mechanism.as_str()),
        );
        self.close_broker(b, 5_000_000_000);
    }

    fn broker_failed(&mut self, b: usize, what: &str, res: i32) {
        let reason = self.brokers[b]
            .slot
            .and_then(|s| self.io.conns[s].error.take());
        if let Some(reason) = reason {
            // TLS: a certificate or handshake problem, said at once.
            self.snap.auth_failures += 1;
            self.refused = Some((reason.clone(), false));
            tracing::error!(
                "Kafka (native): broker node {} ({}): {reason}; batches wait (journaled once the breaker opens); retrying in 5 s",
                self.brokers[b].node,
                self.brokers[b]
                    .slot
                    .map_or_else(|| "-".to_string(), |s| self.io.conns[s].addr.to_string()),
            );
            self.close_broker(b, 5_000_000_000);
            return;
        }
        let err = std::io::Error::from_raw_os_error(-res.min(0));
        self.warn(&format!(
            "broker node {} ({}): {what} failed: {}",
            self.brokers[b].node,
            self.brokers[b]
                .slot
                .map_or_else(|| "-".to_string(), |s| self.io.conns[s].addr.to_string()),
            if res == 0 {
                "closed by the peer".to_string()
            } else {
                err.to_string()
            }
        ));
        self.close_broker(b, 200_000_000);
    }

    /// Closes a broker's connection: every request waiting on it failed.
    fn close_broker(&mut self, b: usize, backoff_ns: u64) {
        let br = &mut self.brokers[b];
        br.up = false;
        br.retry_at = mono_ns() + backoff_ns;
        br.produce_in_flight = 0;
        let slot = br.slot.take();
        let mut pending: Vec<Pending> = br.pending.drain(..).map(|(_, _, p)| p).collect();
        pending.extend(br.written.drain(..).map(|(_, p)| Pending::Produce(p, 0)));
        if let Some(slot) = slot {
            self.io.close(slot);
        }
        for p in pending {
            match p {
                Pending::Produce(picked, _) => self.produce_failed(&picked),
                Pending::Metadata(_) => self.metadata_in_flight = false,
                Pending::InitPid(s, _) => self.pids[s] = Pid::None,
                Pending::ApiVersions | Pending::SaslHandshake | Pending::SaslAuth(_) => {}
            }
        }
        self.metadata_wanted = true;
    }

    fn warn(&mut self, msg: &str) {
        let now = mono_ns();
        if now.saturating_sub(self.last_warn) > 1_000_000_000 {
            self.last_warn = now;
            tracing::warn!("Kafka (native): {msg}");
        }
    }

    /// Publishes the DAPB parameters and the partition count to the shards.
    fn publish_knobs(&mut self) {
        self.params = Params::compute(&self.dapb_cfg, &self.cond);
        let partitions = if self.leaders.is_empty() && self.unpartitioned {
            crate::dapb::UNPARTITIONED
        } else {
            self.leaders.len() as u32
        };
        self.feed.publish(ShardKnobs {
            params: self.params,
            partitions,
        });
    }

    /// Per tick: ρ(t) from the window's errors, new parameters to the shards.
    pub fn tick(&mut self) {
        let (sent, failed) = std::mem::take(&mut self.errors_window);
        self.cond.on_window(sent, failed);
        self.publish_knobs();
    }

    /// Records in lanes (in flight or waiting to be sent).
    fn held(&self) -> u64 {
        self.lanes
            .iter()
            .flatten()
            .flat_map(|l| l.queue.iter())
            .filter(|q| q.token.is_none())
            .map(|q| u64::from(q.batch.records))
            .sum()
    }

    /// Breaker open: every lane with nothing in flight moves its in-memory
    /// batches, oldest first, to the journal (ahead of any newer batch of
    /// the lane, which queued behind them); their shard buffers go back.
    fn journal_lanes(&mut self) {
        for (s, lanes) in self.lanes.iter_mut().enumerate() {
            for (p, lane) in lanes.iter_mut().enumerate() {
                if lane.in_flight > 0 || lane.queue.iter().all(|q| q.token.is_some()) {
                    continue;
                }
                let mut keep = VecDeque::new();
                for mut q in lane.queue.drain(..) {
                    if q.token.is_some() {
                        keep.push_back(q);
                        continue;
                    }
                    if q.st == St::Done {
                        // Delivered behind an older batch: only counted.
                        self.snap.delivered += u64::from(q.batch.records);
                    } else {
                        q.batch.partition = p as u32;
                        spill(
                            &mut self.journal,
                            &mut self.snap,
                            &mut self.journaled_records,
                            &mut self.last_full_log,
                            s,
                            &q.batch,
                        );
                    }
                    if !q.copy {
                        self.rings[s].give_back(std::mem::take(&mut q.batch.bytes));
                    }
                }
                lane.queue = keep;
                lane.rewinding = false;
            }
        }
    }

    /// The circuit breaker: opens when no broker has been up for a second
    /// while batches wait, or past the high-water mark; replays the journal
    /// once a broker is up and no in-memory batch is older; closes when the
    /// journal is empty.
    fn breaker_step(&mut self) {
        let now = mono_ns();
        let up = self.brokers.iter().any(|b| b.up);
        let held = self.held();
        self.down_since = match (up, held > 0, self.down_since) {
            (false, true, None) => Some(now),
            (false, true, since) => since,
            _ => None,
        };
        if self.breaker == Breaker::Closed {
            let down_long = self
                .down_since
                .is_some_and(|t| now.saturating_sub(t) > 1_000_000_000);
            if down_long || held > self.high_water {
                self.breaker = Breaker::Open;
                self.snap.breaker_opens += 1;
                tracing::warn!(
                    held,
                    "circuit breaker open ({}): new record batches go to the spill journal",
                    if down_long {
                        "no broker reachable for 1 s"
                    } else {
                        "more than output.kafka.queue_high_water records waiting"
                    }
                );
            }
            return;
        }
        self.journal_lanes();
        let held = self.held();
        if up && held == 0 && !self.leaders.is_empty() {
            let shards = self.lanes.len().max(1);
            let parts = self.leaders.len().max(1);
            while self.replaying < 64 {
                let Some((token, meta, bytes)) = self.journal.next_record() else {
                    break;
                };
                if meta.raw_id[0..4] == crate::dapb::UNPARTITIONED.to_le_bytes() {
                    let bytes = bytes.to_vec();
                    self.replay_split(token, &meta, &bytes, shards);
                    continue;
                }
                let (s, p, batch) = replayed(&meta, bytes, shards, parts);
                self.snap.replayed += u64::from(batch.records);
                // Stamped in this run by this shard's producer: it keeps
                // its sequence (the broker may have it already: then it
                // answers duplicate, and that is a delivery).
                let stamped = kwire::producer_fields(&batch.bytes)
                    .map(|(id, epoch, _)| (id, epoch))
                    .filter(|&(id, epoch)| self.pids[s] == Pid::Ready(id, epoch));
                let lane = self.lane_mut(s, p);
                lane.next_id += 1;
                lane.queue.push_back(Queued {
                    id: lane.next_id,
                    st: St::Wait,
                    batch,
                    stamped,
                    token: Some(token),
                    copy: true,
                });
                self.replaying += 1;
            }
        }
        // Closed again once what opened it has cleared and the journal is
        // delivered.
        if up
            && held <= self.high_water / 2
            && self.journal.outstanding() == 0
            && self.replaying == 0
        {
            self.breaker = Breaker::Closed;
            tracing::info!(
                replayed = self.snap.replayed,
                "circuit breaker closed: journal delivered"
            );
        }
    }

    /// A journal entry encoded before the partition count was known: split
    /// by partition into the lanes, acknowledged once every part is
    /// delivered (a crash in between delivers the delivered parts again).
    fn replay_split(&mut self, token: u64, meta: &RecordMeta, bytes: &[u8], shards: usize) {
        let s = usize::from(meta.shard) % shards;
        let like = ProducedBatch {
            partition: 0,
            records: meta.sequence,
            payload_bytes: 0,
            first_recv_ns: meta.recv_ts_ns,
            urgent: meta.flags & crate::handoff::FLAG_URGENT != 0,
            release: crate::dapb::Release::Drain.code(),
            capacity: 0,
            bytes: Vec::new(),
        };
        let parts = match self.split_batch(bytes, &like) {
            Ok(parts) if !parts.is_empty() => parts,
            Ok(_) => {
                self.journal.ack(token);
                return;
            }
            Err(e) => {
                self.snap.journal_lost += u64::from(meta.sequence);
                self.journaled_records = self
                    .journaled_records
                    .saturating_sub(u64::from(meta.sequence));
                tracing::error!(records = meta.sequence, error = %e, "a journaled unpartitioned batch could not be split: its records are LOST (counted journal_lost)");
                self.journal.ack(token);
                return;
            }
        };
        self.splits.insert(token, parts.len() as u32);
        for (p, batch) in parts {
            self.snap.replayed += u64::from(batch.records);
            let lane = self.lane_mut(s, p);
            lane.next_id += 1;
            let id = lane.next_id;
            lane.queue.push_back(Queued {
                id,
                st: St::Wait,
                batch,
                stamped: None,
                token: Some(token),
                copy: true,
            });
            self.replaying += 1;
        }
    }

    /// The counters now.
    pub fn snapshot(&mut self) -> KafkaSnapshot {
        let q = super::summary;
        self.snap.in_flight = self.held();
        self.snap.sends = self.io.sends;
        self.snap.journaled = self.journaled_records;
        self.snap.journal = self.journal.stats();
        self.snap.journal_lost = self.snap.journal.lost;
        self.snap.breaker = self.breaker;
        self.snap.broker_up = self.brokers.iter().any(|b| b.up);
        self.snap.params = Some(self.params);
        self.snap.conditions = self.cond;
        self.snap.latency_normal_us = q(&self.hist_normal);
        self.snap.latency_urgent_us = q(&self.hist_urgent);
        self.snap.rtt_us = q(&self.hist_rtt);
        self.snap.cpu_ns = thread_cpu_ns() - self.cpu_at_start;
        self.snap
    }

    /// Cheap progress counters: (accepted, held, delivered).
    pub fn progress(&self) -> (u64, u64, u64) {
        (self.snap.accepted, self.held(), self.snap.delivered)
    }

    /// Clears the latency histograms (benchmarks: after warm-up).
    pub fn reset_latency(&mut self) {
        self.hist_normal.reset();
        self.hist_urgent.reset();
        self.hist_rtt.reset();
    }

    /// True when every shard's ring is finished and nothing is held.
    fn finished(&self) -> bool {
        self.rings.iter().all(BatchRx::is_finished)
    }

    /// Stops: sends what is held for up to `flush`; what is left is
    /// journaled ahead of what the journal holds (`dropped_at_stop` only if
    /// that write fails).
    pub fn shutdown(&mut self, flush: Duration) -> KafkaSnapshot {
        let deadline = Instant::now() + flush;
        while Instant::now() < deadline {
            let _ = self.step(1_000_000);
            if self.held() == 0 && self.finished() {
                break;
            }
        }
        let left = self.held();
        if left > 0 {
            tracing::warn!(
                records = left,
                "not delivered within output.kafka.shutdown_flush_ms: moving them to the spill journal"
            );
            // Oldest first, per lane: they go ahead of what the journal holds.
            let mut direct: Vec<(RecordMeta, Vec<u8>)> = Vec::new();
            for (s, lanes) in self.lanes.iter_mut().enumerate() {
                for (p, lane) in lanes.iter_mut().enumerate() {
                    for q in lane.queue.drain(..) {
                        if q.token.is_none() {
                            let mut b = q.batch;
                            b.partition = p as u32;
                            direct.push((batch_meta(s, &b), std::mem::take(&mut b.bytes)));
                        }
                    }
                }
            }
            match self.journal.prepend(&direct) {
                Ok(()) => self.journaled_records += left,
                Err(e) => {
                    self.snap.dropped_at_stop += left;
                    tracing::error!(records = left, error = %e, "cannot journal the batches left at stop: DROPPED");
                }
            }
        }
        for lanes in &mut self.lanes {
            lanes.clear();
        }
        self.replaying = 0;
        if let Err(e) = self.journal.close() {
            tracing::error!(error = %e, "spill journal: close failed");
        }
        self.snapshot()
    }
}

/// Runs the native producer on the calling (output) thread until every ring
/// is finished, then stops it.
pub fn run(
    mut p: NativeProducer,
    published: &crate::telemetry::Published<KafkaSnapshot>,
    tick: Duration,
    abandon: &std::sync::atomic::AtomicBool,
    flush: Duration,
) -> Result<KafkaSnapshot, OutputError> {
    let mut next_publish = Instant::now() + tick;
    loop {
        let got = p.step(200_000).map_err(OutputError::Native)?;
        // Rings done (or abandoned): the shutdown below sends what is held.
        if got == 0 && (p.finished() || abandon.load(std::sync::atomic::Ordering::Relaxed)) {
            break;
        }
        let now = Instant::now();
        if now >= next_publish {
            p.tick();
            published.publish(p.snapshot());
            next_publish = now + tick;
        }
    }
    let s = p.shutdown(flush);
    published.publish(s);
    Ok(s)
}

/// The journal entry's header for batch `b` of shard `s`.
/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

fn batch_meta(s: usize, b: &ProducedBatch) -> RecordMeta {
    let mut raw_id = [0u8; 16];
    raw_id[0..4].copy_from_slice(&b.partition.to_le_bytes());
    RecordMeta {
        raw_id,
        sequence: b.records,
        recv_ts_ns: b.first_recv_ns,
        shard: s as u16,
        seq_event: 0,
        flags: FLAG_BATCH
            | if b.urgent {
                crate::handoff::FLAG_URGENT
            } else {
                0
            },
    }
}

/// A journal entry back as a batch, and its lane (a shard or partition
/// beyond today's counts folds into them: order per shard is kept).
fn replayed(
    meta: &RecordMeta,
    bytes: &[u8],
    shards: usize,
    parts: usize,
) -> (usize, usize, ProducedBatch) {
    let partition = u32::from_le_bytes([
        meta.raw_id[0],
        meta.raw_id[1],
        meta.raw_id[2],
        meta.raw_id[3],
    ]);
    let p = partition as usize % parts;
    let s = usize::from(meta.shard) % shards;
    let batch = ProducedBatch {
        partition: p as u32,
        records: kwire::record_count(bytes).unwrap_or(meta.sequence),
        payload_bytes: 0,
        first_recv_ns: meta.recv_ts_ns,
        urgent: meta.flags & crate::handoff::FLAG_URGENT != 0,
        release: crate::dapb::Release::Drain.code(),
        capacity: 0,
        bytes: bytes.to_vec(),
    };
    (s, p, batch)
}

/// Appends batch `b` of shard `s` to the journal (the breaker is open);
/// counted as dropped when the journal's budget is spent.
fn spill(
    journal: &mut Journal,
    snap: &mut KafkaSnapshot,
    journaled: &mut u64,
    last_log: &mut u64,
    s: usize,
    b: &ProducedBatch,
) {
    match journal.append(&batch_meta(s, b), &b.bytes) {
        Ok(()) => *journaled += u64::from(b.records),
        Err(journal::JournalFull) => {
            snap.dropped_journal_full += u64::from(b.records);
            let now = mono_ns();
            if now.saturating_sub(*last_log) > 1_000_000_000 {
                *last_log = now;
                tracing::error!(
                    total = snap.dropped_journal_full,
                    "spill journal full (output.kafka.journal.budget_bytes): accepted messages DROPPED"
                );
            }
        }
    }
}
