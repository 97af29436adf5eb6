//! A shard: the per-core pipeline from a received datagram to a record in the
//! ring toward the output (batcher) core.
//!
//! ```text
//! datagram ─► parse ─► owner = fnv1a64(id) % shards
//!                        ├─ another shard: stage into the mesh ring to it ──► (its shard)
//!                        └─ this shard: the Dam (or the admission bucket) ─► sequence tracking
//!                                        ─► output ring, or the overflow queue when full
//! mesh rings from the other shards ─► the Dam ─► sequence tracking ─► output
//! ```
//!
//! Pure logic plus rings: the I/O that feeds it lives in `ingest/`. Per packet
//! it allocates nothing, logs nothing and touches no shared atomics: records to
//! other cores are staged and published once per batch ([`Shard::pump`]), and
//! counters are plain integers published by [`Shard::snapshot`] per tick.
//!
//! Backpressure never blocks receive: a full output ring sends records to the
//! shard's bounded overflow queue (in arrival order; later records queue behind
//! earlier ones so no device is reordered), and only a full overflow queue
//! drops, counted as `queue_full`.
//!
//! With `[dam]` configured, the Dam ([`crate::control::dam`]) decides first:
//! per-device and shard-wide buckets; a message over its device's budget
//! waits in the Dam's queue (its payload in a [`store::ChunkStore`]) and is
//! released round-robin across devices by [`Shard::pump`] as budgets allow. The
//! Dam sits *before* sequence tracking, so a message it drops was never
//! recorded and a resend of it is not a duplicate.

pub mod auth;
pub mod produce;
mod seq;
pub mod store;

use crate::control::dam::{Dam, DamConfig, DamStats, DropReason, Verdict};

pub use seq::{SeqCounters, SeqEvent, SeqTracker, WINDOW as SEQ_WINDOW};

use crate::handoff::{
    RecordMeta, RecordRx, RecordTx, FLAG_AUTHENTICATED, FLAG_JSON_VALIDATED, FLAG_URGENT,
    RECORD_HEADER_LEN,
};
use crate::wire::{self, ParseOptions, Reject, RejectCounters};

/// Settings a shard needs, taken from the configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShardSettings {
    /// Parser options (`[protocol]`).
    pub parse: ParseOptions,
    /// Devices tracked per shard (`sequence.max_devices`).
    pub max_devices: usize,
    /// Sequence numbers at or below this, arriving behind, mean a restart.
    pub reset_window: u32,
    /// Shard-wide admission: (interval ns, tolerance ns) of a GCRA bucket, or
    /// None for no limit (`[admission]`). Not used when the Dam is on (its
    /// shard bucket takes the same rate).
    pub admission: Option<(u64, u64)>,
    /// The Dam (`[dam]`), and the bytes its queue may hold; None: off.
    pub dam: Option<(DamConfig, usize)>,
    /// Which protocol versions each port takes (`[auth]`).
    pub policy: auth::PortPolicies,
}

/// Counters of one shard at one moment (published per tick).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardSnapshot {
    /// Datagrams received from this shard's own queue.
    pub received: u64,
    /// Bytes received from this shard's own queue.
    pub received_bytes: u64,
    /// Messages admitted (to the output ring or the overflow queue).
    pub accepted: u64,
    /// Messages handed to the shard that owns their device.
    pub forwarded_out: u64,
    /// Messages other shards handed to this one.
    pub forwarded_in: u64,
    /// Messages waiting in the overflow queue now.
    pub queued: u64,
    /// Bytes waiting in the overflow queue now.
    pub queued_bytes: u64,
    /// Datagrams the kernel dropped at this shard's queue before the shard
    /// could see them (UDP socket buffer full; AF_XDP ring full or no free
    /// frame).
    pub queue_drops: u64,
    /// Rejects by reason.
    pub rejects: RejectCounters,
    /// Sequence tracking counters.
    pub seq: SeqCounters,
    /// The Dam's counters (zero when it is off).
    pub dam: DamCounters,
    /// Devices that appeared or restarted, by the high byte of their hash
    /// (cumulative): the control core's device-id entropy of reconnects.
    pub reconnect_ids: IdHistogram,
    /// Datagrams the in-kernel classifier marked (AF_XDP metadata).
    pub model_marked: u64,
    /// The shard's window model: storm probability of the last tick, in
    /// parts per million (0 when no model runs).
    pub storm_ppm: u32,
    /// The highest storm probability so far, parts per million.
    pub storm_ppm_peak: u32,
    /// Window-model inferences run, and the time they took (ns, summed).
    pub window_runs: u64,
    /// See `window_runs`.
    pub window_ns: u64,
}

/// A 256-bin histogram of device-hash high bytes (cumulative counts).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdHistogram(pub [u32; 256]);

impl Default for IdHistogram {
    fn default() -> Self {
        IdHistogram([0; 256])
    }
}

impl std::fmt::Debug for IdHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: u64 = self.0.iter().map(|&c| u64::from(c)).sum();
        write!(f, "IdHistogram({total} events)")
    }
}

/// The Dam's counters in a shard snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DamCounters {
    /// Messages that waited in the Dam's queue.
    pub queued: u64,
    /// Messages released from it.
    pub released: u64,
    /// Messages waiting now.
    pub depth: u64,
    /// Devices with messages waiting now.
    pub queued_devices: u64,
    /// Age of the oldest waiting message, ns (at the last pump).
    pub oldest_age_ns: u64,
    /// Devices evicted from its table.
    pub evictions: u64,
    /// The devices with the most messages waiting: (device hash, waiting).
    pub top_waiting: [(u64, u32); 4],
}

impl DamCounters {
    fn from_stats(s: &DamStats, oldest_age_ns: u64, top: [(u64, u32); 4]) -> DamCounters {
        DamCounters {
            top_waiting: top,
            queued: s.queued,
            released: s.drained,
            depth: s.depth,
            queued_devices: s.queued_devices,
            oldest_age_ns,
            evictions: s.evictions,
        }
    }
}

impl ShardSnapshot {
    /// What happened between `prev` and this snapshot, as the control core
    /// (and the shard's window model) read a tick.
    pub fn report_since(&self, prev: &ShardSnapshot) -> crate::control::ShardReport {
        let mut id_hist = [0u32; 256];
        for (h, (c, q)) in id_hist
            .iter_mut()
            .zip(self.reconnect_ids.0.iter().zip(prev.reconnect_ids.0.iter()))
        {
            *h = c.wrapping_sub(*q);
        }
        let resets = self.seq.resets.saturating_sub(prev.seq.resets);
        crate::control::ShardReport {
            offered: (self.received + self.forwarded_in)
                .saturating_sub(prev.received + prev.forwarded_in),
            new_devices: self.seq.new_devices.saturating_sub(prev.seq.new_devices),
            resets,
            resets_near_zero: resets,
            depth: self.dam.depth,
            id_hist,
            storm_p: self.storm_ppm as f32 / 1e6,
        }
    }

    /// Adds another shard's counters.
    pub fn add(&mut self, o: &ShardSnapshot) {
        self.received += o.received;
        self.received_bytes += o.received_bytes;
        self.accepted += o.accepted;
        self.forwarded_out += o.forwarded_out;
        self.forwarded_in += o.forwarded_in;
        self.queued += o.queued;
        self.queued_bytes += o.queued_bytes;
        self.queue_drops += o.queue_drops;
        self.rejects.add(&o.rejects);
        self.seq.add(&o.seq);
        self.dam.queued += o.dam.queued;
        self.dam.released += o.dam.released;
        self.dam.depth += o.dam.depth;
        self.dam.queued_devices += o.dam.queued_devices;
        self.dam.oldest_age_ns = self.dam.oldest_age_ns.max(o.dam.oldest_age_ns);
        self.dam.evictions += o.dam.evictions;
        self.model_marked += o.model_marked;
        self.storm_ppm = self.storm_ppm.max(o.storm_ppm);
        self.storm_ppm_peak = self.storm_ppm_peak.max(o.storm_ppm_peak);
        self.window_runs += o.window_runs;
        self.window_ns += o.window_ns;
        for (a, b) in self
            .reconnect_ids
            .0
            .iter_mut()
            .zip(o.reconnect_ids.0.iter())
        {
            *a = a.wrapping_add(*b);
        }
    }
}

/// Where a shard's accepted records go.
#[derive(Debug)]
pub enum ShardOut {
    /// Records framed into a ring (the librdkafka batcher and the debug
    /// sinks read them).
    Records(RecordTx),
    /// Kafka record batches encoded here (the native client).
    Batches(Box<produce::BatchProducer>),
}

impl From<RecordTx> for ShardOut {
    fn from(tx: RecordTx) -> ShardOut {
        ShardOut::Records(tx)
    }
}

impl ShardOut {
    #[inline]
    fn stage(&mut self, meta: &RecordMeta, payload: &[u8]) -> Result<(), crate::handoff::RingFull> {
        match self {
            ShardOut::Records(tx) => tx.stage(meta, payload),
            ShardOut::Batches(b) => b.stage(meta, payload),
        }
    }

    #[inline]
    fn flush(&mut self) {
        match self {
            ShardOut::Records(tx) => tx.flush(),
            ShardOut::Batches(b) => b.flush(crate::clock::now_ns()),
        }
    }

    /// Stop: every open batch to the output core.
    fn finish(&mut self) {
        match self {
            ShardOut::Records(tx) => tx.flush(),
            ShardOut::Batches(b) => b.close_all(),
        }
    }
}

/// The rings a shard is wired to (made by the runtime's one wiring point).
#[derive(Debug)]
pub struct ShardRings {
    /// To the output stage.
    pub out: ShardOut,
    /// The overflow queue: both ends stay on this shard.
    pub overflow: (RecordTx, RecordRx),
    /// To every other shard, indexed by shard id (None at this shard's index).
    pub mesh_tx: Vec<Option<RecordTx>>,
    /// From every other shard.
    pub mesh_rx: Vec<RecordRx>,
}

/// A record waiting in the Dam: its header, device hash and stored payload.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    meta: RecordMeta,
    hash: u64,
    head: u32,
    len: u32,
}

/// The Dam of a shard and where its waiting payloads live.
struct DamSide {
    dam: Dam<Waiting>,
    store: store::ChunkStore,
    scratch: Vec<u8>,
    oldest_age_ns: u64,
}

impl std::fmt::Debug for DamSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DamSide")
            .field("stats", &self.dam.stats())
            .finish_non_exhaustive()
    }
}

/// What admission needs: everything but the mesh, so a record borrowed from a
/// mesh ring can be admitted without copying it first.
#[derive(Debug)]
struct Owner {
    id: u16,
    settings: ShardSettings,
    tracker: SeqTracker,
    out: ShardOut,
    ovf_tx: RecordTx,
    /// GCRA theoretical arrival time of the shard-wide bucket.
    tat: u64,
    snap: ShardSnapshot,
    dam: Option<Box<DamSide>>,
    /// Device keys and replay windows (`auth.keys`); None: no v2 device
    /// can authenticate.
    auth: Option<Box<auth::Auth>>,
    /// The operator's deny list (admin API), by device hash.
    denied: std::sync::Arc<DenyList>,
}

/// Devices the operator denied (admin API), by device hash.
pub type DenyList = auth::DeviceMap<()>;

/// The deny list as the control plane publishes it for the shards: a version
/// that moves on every write, and the list. A shard compares the version once
/// per tick and swaps its `Arc` only when it moved; per packet it reads its
/// own copy. The admin API writes here (katran's narrow control API over
/// maps): the data plane never imports the control plane.
#[derive(Debug, Default)]
pub struct DenyFeed {
    version: std::sync::atomic::AtomicU64,
    list: std::sync::Mutex<std::sync::Arc<DenyList>>,
}

impl DenyFeed {
    /// Replaces the list; shards take it at their next tick.
    pub fn publish(&self, list: DenyList) {
        *self.list.lock().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(list);
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
    /// Changes on every [`DenyFeed::publish`].
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }
    /// The list now.
    pub fn current(&self) -> std::sync::Arc<DenyList> {
        self.list.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Owner {
    /// Admission, sequence tracking and hand-off for a message this shard owns.
    #[inline]
    fn admit(&mut self, hash: u64, meta: &RecordMeta, payload: &[u8]) -> Result<(), Reject> {
        if meta.flags & FLAG_AUTHENTICATED != 0 {
            // Verified by the receiving shard; the window is the owner's.
            self.auth
                .as_mut()
                .ok_or(Reject::UnknownDevice)?
                .take_sequence(hash, meta.sequence)?;
        }
        if let Some(d) = self.dam.as_mut() {
            let DamSide { dam, store, .. } = &mut **d;
            let urgent = meta.flags & FLAG_URGENT != 0;
            let v = dam.admit_lazy(hash, urgent, meta.recv_ts_ns, || {
                store.put(payload).map(|head| Waiting {
                    meta: *meta,
                    hash,
                    head,
                    len: payload.len() as u32,
                })
            });
            return match v {
                Verdict::Pass | Verdict::Urgent => self.track_and_hand_off(hash, meta, payload),
                Verdict::Queued => Ok(()),
                Verdict::Dropped(DropReason::QueueFull) => Err(Reject::QueueFull),
                Verdict::Dropped(DropReason::Untracked) => Err(Reject::RateLimited),
            };
        }
        if let Some((interval, tolerance)) = self.settings.admission {
            let now = meta.recv_ts_ns;
            let t = self.tat.max(now);
            if t - now > tolerance {
                return Err(Reject::RateLimited);
            }
            self.tat = t + interval;
        }
        self.track_and_hand_off(hash, meta, payload)
    }

    /// Sequence tracking and hand-off of an admitted message.
    #[inline]
    fn track_and_hand_off(
        &mut self,
        hash: u64,
        meta: &RecordMeta,
        payload: &[u8],
    ) -> Result<(), Reject> {
        let ev = self.tracker.track(hash, meta.sequence);
        if matches!(ev, SeqEvent::New | SeqEvent::Reset) {
            let b = &mut self.snap.reconnect_ids.0[(hash >> 56) as usize];
            *b = b.wrapping_add(1);
        }
        if ev == SeqEvent::Duplicate {
            return Err(Reject::DuplicateSequence);
        }
        let meta = RecordMeta {
            seq_event: ev.code(),
            shard: self.id,
            ..*meta
        };
        // While the overflow queue holds anything, new records queue behind
        // it: no device is reordered.
        if self.snap.queued == 0 && self.out.stage(&meta, payload).is_ok() {
            self.snap.accepted += 1;
            return Ok(());
        }
        self.ovf_tx
            .push(&meta, payload)
            .map_err(|_| Reject::QueueFull)?;
        self.snap.queued += 1;
        self.snap.queued_bytes += (RECORD_HEADER_LEN + payload.len()) as u64;
        self.snap.accepted += 1;
        Ok(())
    }
}

/// A shard's window model and its history.
struct WindowSide {
    model: crate::model::window::GgmlWindow,
    win: crate::model::window::Window,
    prev: ShardSnapshot,
}

impl std::fmt::Debug for WindowSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowSide").finish_non_exhaustive()
    }
}

/// Where a shard takes the control core's Dam settings from.
pub type DamSetpoints = std::sync::Arc<crate::telemetry::Published<Option<DamConfig>>>;

/// One shard's pipeline state.
#[derive(Debug)]
pub struct Shard {
    shards: u64,
    /// The UDP port datagrams without their own port arrived on (the UDP
    /// backend's socket): its policy applies.
    port: u16,
    /// The operator's deny list (admin API) and the version last applied,
    /// read per tick.
    operator: Option<(std::sync::Arc<DenyFeed>, u64)>,
    owner: Owner,
    window: Option<Box<WindowSide>>,
    setpoints: Option<DamSetpoints>,
    ovf_rx: RecordRx,
    mesh_tx: Vec<Option<RecordTx>>,
    mesh_rx: Vec<RecordRx>,
}

impl Shard {
    /// A shard with its rings. Allocates its device table here; fails only
    /// when the kernel refuses that memory.
    pub fn new(
        id: u16,
        shards: u16,
        settings: ShardSettings,
        rings: ShardRings,
    ) -> std::io::Result<Self> {
        Ok(Self {
            shards: u64::from(shards.max(1)),
            port: 0,
            operator: None,
            window: None,
            setpoints: None,
            owner: Owner {
                id,
                settings,
                tracker: SeqTracker::new(settings.max_devices, settings.reset_window)?,
                out: rings.out,
                ovf_tx: rings.overflow.0,
                tat: 0,
                snap: ShardSnapshot::default(),
                auth: None,
                denied: std::sync::Arc::new(DenyList::default()),
                dam: settings.dam.map(|(cfg, bytes)| {
                    Box::new(DamSide {
                        dam: Dam::new(cfg),
                        store: store::ChunkStore::new(bytes),
                        scratch: Vec::with_capacity(wire::MAX_DATAGRAM),
                        oldest_age_ns: 0,
                    })
                }),
            },
            ovf_rx: rings.overflow.1,
            mesh_tx: rings.mesh_tx,
            mesh_rx: rings.mesh_rx,
        })
    }

    /// A single shard wired only to the output (tests, benchmarks).
    pub fn standalone(
        settings: ShardSettings,
        out: impl Into<ShardOut>,
        overflow: (RecordTx, RecordRx),
    ) -> std::io::Result<Self> {
        Self::new(
            0,
            1,
            settings,
            ShardRings {
                out: out.into(),
                overflow,
                mesh_tx: vec![None],
                mesh_rx: Vec::new(),
            },
        )
    }

    /// Shard index.
    pub fn id(&self) -> u16 {
        self.owner.id
    }

    /// Starts loading what processing will need for this datagram (its
    /// device's sequence state) and returns its device hash, for
    /// [`Shard::on_prefetched`]. Call it for a whole receive batch first; cheap
    /// for anything that is not a v1 datagram (None).
    #[inline]
    pub fn prefetch(&self, buf: &[u8]) -> Option<u64> {
        let id: &[u8; 16] = buf.get(2..18)?.try_into().ok()?;
        if buf[0] != 0xAA || (buf[1] != 0x55 && buf[1] != 0x56) {
            return None;
        }
        let hash = wire::device_hash(id);
        if (hash % self.shards) as usize == usize::from(self.owner.id) {
            self.owner.tracker.prefetch(hash);
        }
        Some(hash)
    }

    /// Handles one datagram from this shard's queue, received at
    /// `recv_ts_ns`. Returns the reject reason when it was refused (already
    /// counted). A forwarded message returns Ok: its owner decides.
    #[inline]
    pub fn on_datagram(&mut self, buf: &[u8], recv_ts_ns: u64) -> Result<(), Reject> {
        self.on_prefetched(buf, recv_ts_ns, None)
    }

    /// [`Shard::on_datagram`] for a datagram that arrived on UDP port `port`
    /// (the port's policy applies; the others use port 0's, the default).
    #[inline]
    pub fn on_datagram_at(&mut self, buf: &[u8], recv_ts_ns: u64, port: u16) -> Result<(), Reject> {
        self.on_packet(buf, recv_ts_ns, None, 0, port)
    }

    /// [`Shard::on_datagram`] with the device hash [`Shard::prefetch`]
    /// returned for these same bytes, so it is not computed twice.
    #[inline]
    pub fn on_prefetched(
        &mut self,
        buf: &[u8],
        recv_ts_ns: u64,
        hash: Option<u64>,
    ) -> Result<(), Reject> {
        self.on_prefetched_flags(buf, recv_ts_ns, hash, 0)
    }

    /// [`Shard::on_prefetched`] with extra record flags (the in-kernel
    /// classifier's mark, [`crate::handoff::FLAG_MODEL_MARK`]).
    #[inline]
    pub fn on_prefetched_flags(
        &mut self,
        buf: &[u8],
        recv_ts_ns: u64,
        hash: Option<u64>,
        flags: u8,
    ) -> Result<(), Reject> {
        self.on_packet(buf, recv_ts_ns, hash, flags, self.port)
    }

    /// The whole entry: a datagram's bytes, its receive time, the hash
    /// [`Shard::prefetch`] gave (or None), extra record flags (the kernel's
    /// mark), and the UDP port it was sent to (its policy; 0: the default).
    #[inline]
    pub fn on_packet(
        &mut self,
        buf: &[u8],
        recv_ts_ns: u64,
        hash: Option<u64>,
        flags: u8,
        port: u16,
    ) -> Result<(), Reject> {
        self.owner.snap.received += 1;
        self.owner.snap.received_bytes += buf.len() as u64;
        if flags & crate::handoff::FLAG_MODEL_MARK != 0 {
            self.owner.snap.model_marked += 1;
        }
        let r = self.route(buf, recv_ts_ns, hash, flags, port);
        if let Err(reason) = r {
            self.owner.snap.rejects.bump(reason);
        }
        r
    }

    #[inline]
    fn route(
        &mut self,
        buf: &[u8],
        recv_ts_ns: u64,
        hash: Option<u64>,
        mut flags: u8,
        port: u16,
    ) -> Result<(), Reject> {
        let d = wire::parse(buf, &self.owner.settings.parse)?;
        if !self
            .owner
            .settings
            .policy
            .of(port)
            .admits(d.version, d.mac.is_some())
        {
            return Err(Reject::Policy);
        }
        // A prefetched hash was computed over these same 16 id bytes.
        let hash = hash.unwrap_or_else(|| d.device_hash());
        if !self.owner.denied.is_empty() && self.owner.denied.contains_key(&hash) {
            return Err(Reject::Denied);
        }
        match (d.mac, self.owner.auth.as_deref()) {
            (Some(mac), Some(auth)) => {
                auth.verify(hash, d.raw_id, d.signed, mac)?;
                flags |= FLAG_AUTHENTICATED;
                // Only an authenticated device may claim urgency: the urgent
                // lane and DAPB's urgent release are not for spoofers.
                if d.flags & wire::V2_FLAG_URGENT != 0 {
                    flags |= FLAG_URGENT;
                }
            }
            (Some(_), None) => return Err(Reject::UnknownDevice),
            // A device with a key never speaks unauthenticated: otherwise a
            // spoofer could take its sequence numbers and its budgets.
            (None, Some(auth)) if auth.has_key(hash, d.raw_id) => {
                return Err(Reject::Unauthenticated)
            }
            (None, _) => {}
        }
        let meta = RecordMeta {
            raw_id: *d.raw_id,
            sequence: d.sequence,
            recv_ts_ns,
            shard: self.owner.id,
            seq_event: 0,
            flags: flags
                | if self.owner.settings.parse.validate_json {
                    FLAG_JSON_VALIDATED
                } else {
                    0
                },
        };
        let owner = (hash % self.shards) as usize;
        if owner != usize::from(self.owner.id) {
            let tx = self
                .mesh_tx
                .get_mut(owner)
                .and_then(Option::as_mut)
                .ok_or(Reject::QueueFull)?;
            tx.stage(&meta, d.payload).map_err(|_| Reject::QueueFull)?;
            self.owner.snap.forwarded_out += 1;
            return Ok(());
        }
        self.owner.admit(hash, &meta, d.payload)
    }

    /// Work between receive batches: moves queued records to the output ring
    /// as room allows, admits what other shards forwarded, and publishes every
    /// staged record (one index store per ring per batch).
    #[inline]
    pub fn pump(&mut self) {
        self.release_dam(false);
        self.drain_overflow();
        let owner = &mut self.owner;
        for rx in self.mesh_rx.iter_mut() {
            // Bounded per pump, so a busy peer cannot starve this shard's own queue.
            for _ in 0..256 {
                let Some((meta, payload)) = rx.pop() else {
                    break;
                };
                owner.snap.forwarded_in += 1;
                let hash = wire::device_hash(&meta.raw_id);
                if let Err(reason) = owner.admit(hash, &meta, payload) {
                    owner.snap.rejects.bump(reason);
                }
            }
        }
        self.flush();
    }

    /// Publishes everything staged toward the output and the other shards.
    #[inline]
    pub fn flush(&mut self) {
        self.owner.out.flush();
        for tx in self.mesh_tx.iter_mut().flatten() {
            tx.flush();
        }
    }

    /// Releases what the Dam lets go now (or everything, at stop), each
    /// through sequence tracking to the output. Reads the clock only when
    /// something waits.
    fn release_dam(&mut self, all: bool) {
        let owner = &mut self.owner;
        let Some(mut d) = owner.dam.take() else {
            return;
        };
        if d.dam.depth() > 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.as_nanos() as u64);
            let DamSide {
                dam,
                store,
                scratch,
                oldest_age_ns,
            } = &mut *d;
            let mut hand_off = |w: Waiting| {
                store.take(w.head, w.len as usize, scratch);
                if let Err(r) = owner.track_and_hand_off(w.hash, &w.meta, scratch) {
                    owner.snap.rejects.bump(r);
                }
            };
            if all {
                dam.take_all(&mut hand_off);
            } else {
                dam.drain(now, 4096, &mut hand_off);
            }
            *oldest_age_ns = dam.oldest_age(now);
        } else {
            d.oldest_age_ns = 0;
        }
        owner.dam = Some(d);
    }

    /// The UDP port of datagrams handed in without one (the UDP backend's
    /// listening port), for `[auth]`'s per-port policy.
    pub fn set_port(&mut self, port: u16) {
        self.port = port;
    }

    /// Follows the operator's deny list (the admin API publishes it) from
    /// now on, checked in [`Shard::apply_setpoints`] once per tick.
    pub fn follow_deny_list(&mut self, feed: std::sync::Arc<DenyFeed>) {
        let v = feed.version();
        self.owner.denied = feed.current();
        self.operator = Some((feed, v));
    }

    /// Takes device keys for protocol v2 (`auth.keys`): this shard's own
    /// table, built here (not per packet).
    pub fn set_auth(&mut self, keys: &auth::KeyTable) {
        self.owner.auth = Some(Box::new(auth::Auth::new(keys)));
    }

    /// [`Shard::set_auth`] with the windows restored from a saved state.
    pub fn set_auth_with_state(&mut self, keys: &auth::KeyTable, state: &auth::ReplayState) {
        self.owner.auth = Some(Box::new(auth::Auth::with_state(keys, state)));
    }

    /// The highest authenticated sequence of each device this shard owns
    /// (for `auth.replay_state`, at stop).
    pub fn auth_tops(&self) -> Vec<([u8; wire::DEVICE_ID_LEN], u32, u32)> {
        let (n, id) = (self.shards, u64::from(self.owner.id));
        self.owner
            .auth
            .as_ref()
            .map_or(Vec::new(), |a| a.tops(|h| h % n == id))
    }

    /// The operator's deny list from now on (admin API; swapped once per
    /// tick at most, read per packet only when non-empty).
    pub fn set_denied(&mut self, denied: std::sync::Arc<DenyList>) {
        self.owner.denied = denied;
    }

    /// Runs `model` (this shard's own GGML context) once per publication
    /// tick from now on ([`Shard::tick_model`]).
    pub fn set_window_model(&mut self, model: crate::model::window::GgmlWindow) {
        self.window = Some(Box::new(WindowSide {
            model,
            win: crate::model::window::Window::default(),
            prev: self.snapshot(),
        }));
    }

    /// One tick of the window model, if any: `snap` (this shard's snapshot,
    /// about to be published) against the last tick's in, the storm
    /// probability out, into `snap` and the shard's own counters. Called
    /// once per publication, never per packet.
    pub fn tick_model(&mut self, snap: &mut ShardSnapshot) {
        let Some(w) = self.window.as_mut() else {
            return;
        };
        let t0 = std::time::Instant::now();
        let tick = crate::model::window::Tick::from_report(&snap.report_since(&w.prev));
        let f = w.model.infer(&w.win.push(&tick));
        let own = &mut self.owner.snap;
        own.storm_ppm = (f.storm.clamp(0.0, 1.0) * 1e6) as u32;
        own.storm_ppm_peak = own.storm_ppm_peak.max(own.storm_ppm);
        own.window_runs += 1;
        own.window_ns += t0.elapsed().as_nanos() as u64;
        snap.storm_ppm = own.storm_ppm;
        snap.storm_ppm_peak = own.storm_ppm_peak;
        snap.window_runs = own.window_runs;
        snap.window_ns = own.window_ns;
        w.prev = *snap;
    }

    /// Takes Dam settings from the control core from now on (read by
    /// [`Shard::apply_setpoints`], once per publication tick).
    pub fn follow_setpoints(&mut self, from: DamSetpoints) {
        self.setpoints = Some(from);
    }

    /// Applies the control core's latest Dam settings, if any (once per tick,
    /// not per packet: one uncontended lock).
    pub fn apply_setpoints(&mut self) {
        if let Some(cfg) = self.setpoints.as_ref().and_then(|p| p.read()) {
            self.set_dam(cfg);
        }
        if let Some((feed, seen)) = self.operator.as_mut() {
            let v = feed.version();
            if v != *seen {
                *seen = v;
                self.owner.denied = feed.current();
            }
        }
    }

    /// New Dam settings (the control core's setpoints); no effect when the
    /// Dam is off.
    pub fn set_dam(&mut self, cfg: DamConfig) {
        if let Some(d) = self.owner.dam.as_mut() {
            d.dam.set_config(cfg);
        }
    }

    #[inline]
    fn drain_overflow(&mut self) {
        if self.owner.snap.queued == 0 {
            return;
        }
        let owner = &mut self.owner;
        while owner.snap.queued > 0 {
            let moved = self
                .ovf_rx
                .pop_if(|meta, payload| owner.out.stage(meta, payload).is_ok());
            match moved {
                Some(true) => {
                    owner.snap.queued -= 1;
                    // `pop_if` does not give the size back; the queue's byte
                    // count is recomputed from the ring below.
                }
                _ => break,
            }
        }
        owner.snap.queued_bytes = self.ovf_rx.queued_bytes() as u64;
    }

    /// Stop: closes every open Kafka batch (native client) and publishes
    /// what is staged. Called last, after the drain.
    pub fn finish_output(&mut self) {
        self.owner.out.finish();
        self.flush();
    }

    /// Stops forwarding: drops this shard's ends of the mesh rings, so their
    /// owners see them finished once drained. Called when receive has stopped.
    pub fn close_mesh(&mut self) {
        self.flush();
        for tx in self.mesh_tx.iter_mut() {
            tx.take();
        }
    }

    /// True when every peer has closed its ring to this shard and it is empty.
    pub fn mesh_finished(&self) -> bool {
        self.mesh_rx.iter().all(RecordRx::is_finished)
    }

    /// Records what the kernel dropped at this shard's queue (from the
    /// socket's statistics; published with the counters).
    pub fn set_queue_drops(&mut self, n: u64) {
        self.owner.snap.queue_drops = n;
    }

    /// Messages still in the overflow queue or the Dam's queue.
    pub fn queued(&self) -> u64 {
        self.owner.snap.queued + self.owner.dam.as_ref().map_or(0, |d| d.dam.depth())
    }

    /// At stop: everything waiting in the Dam goes on, regardless of budgets
    /// (it was received; the stop must not lose it).
    pub fn release_all(&mut self) {
        self.release_dam(true);
    }

    /// Counts the remaining overflow as dropped (`queue_full`) at the end of a
    /// shutdown that could not deliver it; returns how many. Loud by design.
    pub fn abandon_overflow(&mut self) -> u64 {
        let n = self.owner.snap.queued;
        for _ in 0..n {
            self.owner.snap.rejects.bump(Reject::QueueFull);
        }
        self.owner.snap.accepted -= n;
        self.owner.snap.queued = 0;
        n
    }

    /// The counters now.
    pub fn snapshot(&self) -> ShardSnapshot {
        ShardSnapshot {
            seq: *self.owner.tracker.counters(),
            dam: self.owner.dam.as_ref().map_or(DamCounters::default(), |d| {
                let mut top = [(0u64, 0u32); 4];
                if d.dam.depth() > 0 {
                    d.dam.top_waiting(&mut top);
                }
                DamCounters::from_stats(&d.dam.stats(), d.oldest_age_ns, top)
            }),
            ..self.owner.snap
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::{record_ring, RecordRx};
    use crate::wire::{encode, HEADER_LEN};

    fn settings(validate_json: bool) -> ShardSettings {
        ShardSettings {
            parse: ParseOptions {
                max_payload: 1024,
                validate_json,
            },
            max_devices: 1024,
            reset_window: 4,
            admission: None,
            dam: None,
            policy: Default::default(),
        }
    }

    fn shard_with(
        settings: ShardSettings,
        ring_bytes: usize,
        overflow_bytes: usize,
    ) -> (Shard, RecordRx) {
        let (tx, rx) = record_ring(ring_bytes, 1024).unwrap();
        let ovf = record_ring(overflow_bytes, 1024).unwrap();
        (Shard::standalone(settings, tx, ovf).unwrap(), rx)
    }

    fn shard(validate_json: bool, ring_bytes: usize) -> (Shard, RecordRx) {
        shard_with(settings(validate_json), ring_bytes, 4 * (40 + 1024))
    }

    fn dgram(id: &str, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0; HEADER_LEN + payload.len()];
        encode(id, seq, payload, &mut b).unwrap();
        b
    }

    fn drain(rx: &mut RecordRx) -> Vec<(String, u32)> {
        std::iter::from_fn(|| {
            rx.pop()
                .map(|(m, _)| (m.device_id().to_string(), m.sequence))
        })
        .collect()
    }

    #[test]
    fn accepted_messages_reach_the_ring_with_their_metadata_after_pump() {
        let (mut s, mut rx) = shard(true, 1 << 16);
        assert_eq!(s.on_datagram(&dgram("a", 1, b"{}"), 77), Ok(()));
        assert_eq!(s.on_datagram(&dgram("a", 2, b"[1]"), 78), Ok(()));
        assert!(rx.pop().is_none(), "staged until the batch ends");
        s.pump();
        let (m, p) = rx.pop().unwrap();
        assert_eq!(
            (m.device_id(), m.sequence, m.recv_ts_ns, p),
            ("a", 1, 77, &b"{}"[..])
        );
        assert_eq!(
            (m.flags, m.seq_event),
            (FLAG_JSON_VALIDATED, SeqEvent::New.code())
        );
        let (m, p) = rx.pop().unwrap();
        assert_eq!(
            (m.sequence, m.seq_event, p),
            (2, SeqEvent::InOrder.code(), &b"[1]"[..])
        );
    }

    #[test]
    fn every_reject_reason_is_counted_and_nothing_panics() {
        let (mut s, mut rx) = shard(true, 1 << 16);
        let mut bad_magic = dgram("a", 1, b"{}");
        bad_magic[0] = 0;
        let mut empty_id = dgram("a", 1, b"{}");
        empty_id[2] = 0;
        let mut not_utf8 = dgram("ab", 1, b"{}");
        not_utf8[2] = 0xFF;
        let cases: Vec<(Vec<u8>, Reject)> = vec![
            (vec![], Reject::TooShort),
            (vec![0xAA; 21], Reject::TooShort),
            (vec![0xAA; 64 * 1024], Reject::BadMagic),
            (bad_magic, Reject::BadMagic),
            (empty_id, Reject::DeviceIdEmpty),
            (not_utf8, Reject::DeviceIdNotUtf8),
            (dgram("a", 1, &[b'1'; 1025]), Reject::PayloadTooLarge),
            (dgram("a", 1, b"{not json"), Reject::PayloadNotJson),
        ];
        for (buf, want) in &cases {
            assert_eq!(s.on_datagram(buf, 0), Err(*want));
        }
        s.on_datagram(&dgram("a", 5, b"{}"), 0).unwrap();
        assert_eq!(
            s.on_datagram(&dgram("a", 5, b"{}"), 0),
            Err(Reject::DuplicateSequence)
        );
        s.pump();
        let snap = s.snapshot();
        assert_eq!(snap.rejects.get(Reject::TooShort), 2);
        assert_eq!(snap.rejects.get(Reject::BadMagic), 2);
        for r in [
            Reject::DeviceIdEmpty,
            Reject::DeviceIdNotUtf8,
            Reject::PayloadTooLarge,
            Reject::PayloadNotJson,
            Reject::DuplicateSequence,
        ] {
            assert_eq!(snap.rejects.get(r), 1, "{}", r.name());
        }
        assert_eq!(snap.received, cases.len() as u64 + 2);
        assert_eq!(snap.accepted, 1);
        assert_eq!(
            drain(&mut rx),
            vec![("a".to_string(), 5)],
            "rejected datagrams never reach the ring"
        );
    }

    #[test]
    fn a_full_ring_queues_in_order_then_drops_only_when_the_queue_is_full() {
        // Output ring holds 2 records, overflow 4.
        let (mut s, mut rx) = shard(false, 2 * (40 + 1024));
        let payload = [b'x'; 1000];
        for seq in 0..10 {
            let _ = s.on_datagram(&dgram("a", seq, &payload), 0);
        }
        s.pump();
        let snap = s.snapshot();
        assert_eq!(snap.accepted, 6, "2 in the ring + 4 queued");
        assert_eq!(snap.queued, 4);
        assert_eq!(snap.rejects.get(Reject::QueueFull), 4);
        // As the output drains, the queue moves up, in order.
        let mut got = drain(&mut rx);
        s.pump();
        got.extend(drain(&mut rx));
        s.pump();
        got.extend(drain(&mut rx));
        assert_eq!(
            got.iter().map(|g| g.1).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5]
        );
        assert_eq!(s.snapshot().queued, 0);
        // And new messages flow straight to the ring again.
        s.on_datagram(&dgram("a", 10, &payload), 0).unwrap();
        s.pump();
        assert_eq!(drain(&mut rx), vec![("a".to_string(), 10)]);
    }

    #[test]
    fn a_prefetched_hash_gives_the_same_outcome_as_computing_it() {
        let (mut a, mut ra) = shard(true, 1 << 16);
        let (mut b, mut rb) = shard(true, 1 << 16);
        for (i, buf) in [
            dgram("x", 1, b"{}"),
            dgram("x", 1, b"{}"),
            vec![0xAA; 21],
            dgram("y", 3, b"[]"),
        ]
        .iter()
        .enumerate()
        {
            let h = b.prefetch(buf);
            assert_eq!(
                a.on_datagram(buf, i as u64),
                b.on_prefetched(buf, i as u64, h)
            );
        }
        a.pump();
        b.pump();
        assert_eq!(drain(&mut ra), drain(&mut rb));
        assert_eq!(a.snapshot(), b.snapshot());
        assert_eq!(b.prefetch(&[0x12; 30]), None, "not v1: no hash");
    }

    #[test]
    fn the_shard_bucket_admits_its_burst_then_its_rate() {
        let mut st = settings(false);
        st.admission = Some((1_000_000, 2_000_000)); // 1000/s, burst 3
        let (mut s, _rx) = shard_with(st, 1 << 16, 1 << 14);
        let t0 = 1_000_000_000;
        let at = |s: &mut Shard, seq: u32, t: u64| s.on_datagram(&dgram("a", seq, b"{}"), t);
        assert!(at(&mut s, 0, t0).is_ok());
        assert!(at(&mut s, 1, t0).is_ok());
        assert!(at(&mut s, 2, t0).is_ok());
        assert_eq!(at(&mut s, 3, t0), Err(Reject::RateLimited));
        assert!(at(&mut s, 4, t0 + 1_000_000).is_ok(), "one interval later");
    }

    /// Two shards wired to each other as the runtime does.
    fn pair() -> (Shard, Shard, RecordRx, RecordRx) {
        let (o0, r0) = record_ring(1 << 16, 1024).unwrap();
        let (o1, r1) = record_ring(1 << 16, 1024).unwrap();
        let (m01, m01r) = record_ring(1 << 16, 1024).unwrap();
        let (m10, m10r) = record_ring(1 << 16, 1024).unwrap();
        let s0 = Shard::new(
            0,
            2,
            settings(false),
            ShardRings {
                out: o0.into(),
                overflow: record_ring(1 << 14, 1024).unwrap(),
                mesh_tx: vec![None, Some(m01)],
                mesh_rx: vec![m10r],
            },
        )
        .unwrap();
        let s1 = Shard::new(
            1,
            2,
            settings(false),
            ShardRings {
                out: o1.into(),
                overflow: record_ring(1 << 14, 1024).unwrap(),
                mesh_tx: vec![Some(m10), None],
                mesh_rx: vec![m01r],
            },
        )
        .unwrap();
        (s0, s1, r0, r1)
    }

    #[test]
    fn messages_on_the_wrong_shard_reach_their_owner_once_and_in_order() {
        let (mut s0, mut s1, mut r0, mut r1) = pair();
        // Everything arrives on shard 0's queue.
        for seq in 0..20 {
            for d in 0..8 {
                s0.on_datagram(&dgram(&format!("dev-{d}"), seq, b"{}"), 1)
                    .unwrap();
            }
        }
        s0.pump();
        s1.pump();
        let (a, b) = (s0.snapshot(), s1.snapshot());
        assert!(
            a.forwarded_out > 0 && a.forwarded_out < 160,
            "both shards own some devices"
        );
        assert_eq!(a.forwarded_out, b.forwarded_in);
        assert_eq!(a.accepted + b.accepted, 160);
        assert_eq!(a.received, 160);
        let mut all = drain(&mut r0);
        let on_1 = drain(&mut r1);
        for (dev, _) in &on_1 {
            let h = wire::device_hash(&wire::raw_device_id(dev).unwrap());
            assert_eq!(h % 2, 1, "{dev} delivered by its owner");
        }
        all.extend(on_1);
        for d in 0..8 {
            let seqs: Vec<u32> = all
                .iter()
                .filter(|g| g.0 == format!("dev-{d}"))
                .map(|g| g.1)
                .collect();
            assert_eq!(
                seqs,
                (0..20).collect::<Vec<_>>(),
                "dev-{d}: once each, in order"
            );
        }
    }

    #[test]
    fn closing_the_mesh_lets_peers_see_it_finished() {
        let (mut s0, mut s1, _r0, _r1) = pair();
        assert!(!s1.mesh_finished());
        s0.close_mesh();
        s1.pump();
        assert!(s1.mesh_finished());
        assert!(!s0.mesh_finished());
    }

    fn dam_settings(rate: f64, burst: f64, queue: usize) -> ShardSettings {
        ShardSettings {
            dam: Some((
                DamConfig {
                    device_rate: rate,
                    device_burst: burst,
                    shard_rate: 1e12,
                    shard_burst: 1e9,
                    urgent_rate: 0.0,
                    urgent_burst: 0.0,
                    queue_capacity: queue,
                    queue_max: 4096,
                    max_devices: 1024,
                },
                1 << 20,
            )),
            ..settings(false)
        }
    }

    #[test]
    fn the_dam_queues_over_rate_messages_and_releases_them_in_order() {
        // 1 msg/s, burst 1: two pass at once, the rest wait.
        let (mut sh, mut rx) = shard_with(dam_settings(1.0, 1.0, 100), 1 << 20, 1 << 16);
        let t0 = 1_000_000_000u64;
        for seq in 0..6u32 {
            sh.on_datagram(&dgram("dev-a", seq, b"{}"), t0).unwrap();
        }
        sh.on_datagram(&dgram("dev-b", 0, b"{}"), t0).unwrap();
        sh.flush();
        let first = drain(&mut rx);
        assert_eq!(
            first,
            vec![
                ("dev-a".into(), 0),
                ("dev-a".into(), 1),
                ("dev-b".into(), 0)
            ]
        );
        let snap = sh.snapshot();
        assert_eq!(snap.dam.depth, 4);
        assert_eq!(snap.accepted, 3, "queued messages are not accepted yet");
        assert_eq!(snap.seq.new_devices, 2, "tracked when they pass the Dam");
        // At stop everything waiting goes on, in order.
        sh.release_all();
        sh.pump();
        let rest = drain(&mut rx);
        assert_eq!(
            rest,
            (2..6).map(|s| ("dev-a".to_string(), s)).collect::<Vec<_>>()
        );
        assert_eq!(sh.snapshot().accepted, 7);
        assert_eq!(sh.queued(), 0);
    }

    #[test]
    fn a_full_dam_queue_drops_as_queue_full_and_the_dropped_are_not_tracked() {
        let (mut sh, mut rx) = shard_with(dam_settings(1.0, 0.0, 2), 1 << 20, 1 << 16);
        let t0 = 1_000_000_000u64;
        let mut rejected = 0;
        for seq in 0..5u32 {
            if sh.on_datagram(&dgram("dev-a", seq, b"{}"), t0) == Err(Reject::QueueFull) {
                rejected += 1;
            }
        }
        assert_eq!(rejected, 2, "1 passes, 2 wait, 2 dropped");
        // A resend of a dropped message is new to the tracker, not a duplicate.
        sh.release_all();
        sh.pump();
        assert_eq!(drain(&mut rx).len(), 3);
        sh.on_datagram(&dgram("dev-a", 3, b"{}"), t0 + 10_000_000_000)
            .unwrap();
        sh.flush();
        assert_eq!(drain(&mut rx), vec![("dev-a".into(), 3)]);
        assert_eq!(sh.snapshot().rejects.get(Reject::DuplicateSequence), 0);
    }

    const KEYS: &str =
        "dev-a 000102030405060708090a0b0c0d0e0f\ndev-b 101112131415161718191a1b1c1d1e1f\n";

    fn v2(id: &str, seq: u32, flags: u8, key: Option<&wire::DeviceKey>) -> Vec<u8> {
        let mut b = vec![0u8; 128];
        let n = wire::encode_v2(id, seq, flags, br#"{"v":2}"#, key, &mut b).unwrap();
        b.truncate(n);
        b
    }

    fn key(t: &auth::KeyTable, id: &str) -> wire::DeviceKey {
        *t.key_of(&wire::raw_device_id(id).unwrap()).unwrap()
    }

    #[test]
    fn v2_is_delivered_with_the_right_key_and_dropped_when_wrong_replayed_or_unknown() {
        let keys = auth::KeyTable::parse(KEYS).unwrap();
        let (mut s, mut rx) = shard(true, 1 << 16);
        s.set_auth(&keys);
        let ka = key(&keys, "dev-a");
        let wrong = key(&keys, "dev-b");
        assert_eq!(
            s.on_datagram(&v2("dev-a", 1, wire::V2_FLAG_URGENT, Some(&ka)), 1),
            Ok(())
        );
        assert_eq!(
            s.on_datagram(&v2("dev-a", 2, 0, Some(&wrong)), 1),
            Err(Reject::BadMac)
        );
        assert_eq!(
            s.on_datagram(&v2("dev-a", 1, 0, Some(&ka)), 1),
            Err(Reject::Replay)
        );
        assert_eq!(
            s.on_datagram(&v2("dev-c", 1, 0, Some(&ka)), 1),
            Err(Reject::UnknownDevice)
        );
        let mut forged = v2("dev-a", 3, 0, Some(&ka));
        let last = forged.len() - 10;
        forged[last] ^= 1; // "2" -> "3" in the payload, after signing
        assert_eq!(s.on_datagram(&forged, 1), Err(Reject::BadMac));
        // A device with a key never speaks unauthenticated; v1 devices
        // without one are unaffected.
        assert_eq!(
            s.on_datagram(&dgram("dev-a", 7, b"{}"), 1),
            Err(Reject::Unauthenticated)
        );
        assert_eq!(
            s.on_datagram(&v2("dev-a", 8, 0, None), 1),
            Err(Reject::Unauthenticated)
        );
        assert_eq!(s.on_datagram(&dgram("v1-only", 1, b"{}"), 1), Ok(()));
        // Urgency is honoured only when authenticated.
        assert_eq!(
            s.on_datagram(&v2("plain", 1, wire::V2_FLAG_URGENT, None), 1),
            Ok(())
        );
        s.pump();
        let got: Vec<_> = std::iter::from_fn(|| {
            rx.pop()
                .map(|(m, p)| (m.device_id().to_string(), m.sequence, m.flags, p.to_vec()))
        })
        .collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[2].0, "plain");
        assert_eq!(
            got[2].2 & FLAG_URGENT,
            0,
            "a spoofable urgent flag is ignored"
        );
        assert_eq!((got[0].0.as_str(), got[0].1), ("dev-a", 1));
        assert_eq!(
            got[0].2 & (FLAG_AUTHENTICATED | FLAG_URGENT),
            FLAG_AUTHENTICATED | FLAG_URGENT
        );
        assert_eq!(got[0].3, br#"{"v":2}"#, "the MAC is not part of the record");
        assert_eq!(got[1].2 & FLAG_AUTHENTICATED, 0);
        let snap = s.snapshot();
        assert_eq!(snap.rejects.get(Reject::BadMac), 2);
        assert_eq!(snap.rejects.get(Reject::Replay), 1);
        assert_eq!(snap.rejects.get(Reject::UnknownDevice), 1);
    }

    #[test]
    fn each_port_takes_only_what_its_policy_allows() {
        let keys = auth::KeyTable::parse(KEYS).unwrap();
        let ka = key(&keys, "dev-a");
        let mut st = settings(false);
        st.policy = auth::PortPolicies::new(
            auth::Policy::Both,
            &[(7001, auth::Policy::V2), (7002, auth::Policy::V1)],
        );
        let (mut s, _rx) = shard_with(st, 1 << 16, 1 << 14);
        s.set_auth(&keys);
        let v1 = dgram("dev-a", 1, b"{}");
        assert_eq!(s.on_datagram_at(&v1, 1, 7001), Err(Reject::Policy));
        assert_eq!(
            s.on_datagram_at(&v2("dev-a", 2, 0, None), 1, 7001),
            Err(Reject::Policy)
        );
        assert_eq!(
            s.on_datagram_at(&v2("dev-a", 3, 0, Some(&ka)), 1, 7001),
            Ok(())
        );
        assert_eq!(
            s.on_datagram_at(&v2("dev-a", 4, 0, Some(&ka)), 1, 7002),
            Err(Reject::Policy)
        );
        let keyless = dgram("v1-dev", 1, b"{}");
        assert_eq!(s.on_datagram_at(&keyless, 1, 7002), Ok(()));
        assert_eq!(
            s.on_datagram_at(&v1, 1, 7002),
            Err(Reject::Unauthenticated),
            "dev-a has a key"
        );
        assert_eq!(s.on_datagram_at(&v2("plain", 5, 0, None), 1, 7003), Ok(()));
        s.set_port(7001);
        assert_eq!(
            s.on_datagram(&dgram("dev-a", 9, b"{}"), 1),
            Err(Reject::Policy)
        );
        assert_eq!(s.snapshot().rejects.get(Reject::Policy), 4);
    }

    #[test]
    fn a_replay_sent_to_another_shard_is_caught_by_the_owner() {
        let keys = auth::KeyTable::parse(KEYS).unwrap();
        let (mut s0, mut s1, mut r0, mut r1) = pair();
        s0.set_auth(&keys);
        s1.set_auth(&keys);
        let ka = key(&keys, "dev-a");
        let d = v2("dev-a", 10, 0, Some(&ka));
        // The same datagram arrives once on each shard's queue.
        assert_eq!(s0.on_datagram(&d, 1), Ok(()));
        assert_eq!(s1.on_datagram(&d, 1), Ok(()));
        for _ in 0..3 {
            s0.pump();
            s1.pump();
        }
        let n = drain(&mut r0).len() + drain(&mut r1).len();
        assert_eq!(n, 1, "delivered once");
        let replays =
            s0.snapshot().rejects.get(Reject::Replay) + s1.snapshot().rejects.get(Reject::Replay);
        assert_eq!(replays, 1);
    }

    #[test]
    fn a_denied_device_is_dropped_from_the_next_tick_on() {
        let feed = std::sync::Arc::new(DenyFeed::default());
        let (mut s, mut rx) = shard(false, 1 << 16);
        s.follow_deny_list(feed.clone());
        assert_eq!(s.on_datagram(&dgram("bad", 1, b"{}"), 1), Ok(()));
        let mut list = DenyList::default();
        list.extend([(wire::device_hash(&wire::raw_device_id("bad").unwrap()), ())]);
        feed.publish(list);
        assert_eq!(
            s.on_datagram(&dgram("bad", 2, b"{}"), 1),
            Ok(()),
            "not before the tick"
        );
        s.apply_setpoints();
        assert_eq!(
            s.on_datagram(&dgram("bad", 3, b"{}"), 1),
            Err(Reject::Denied)
        );
        assert_eq!(s.on_datagram(&dgram("good", 1, b"{}"), 1), Ok(()));
        s.pump();
        assert_eq!(drain(&mut rx).len(), 3);
    }
}
