//! The shard's side of the native Kafka client: every accepted record is
//! encoded at once into the open RecordBatch of its partition (the message is
//! in this core's cache; nothing is allocated per message), and a batch is
//! closed by DAPB's rule — B(t) bytes, the oldest record waiting T(t), or the
//! urgent share passing U_th — compressed and CRC'd here, and handed to the
//! output core, which only sends bytes.
//!
//! Record (DESIGN.md §3): key = device id (NUL padding trimmed), value = the
//! payload as received, timestamp = receive time (ms), headers as UTF-8
//! decimal text: `sequence`, `recv_ts_ns`, `gateway`, `shard`, and `model` /
//! `auth` when they apply — the same record the librdkafka path writes.
//! Partition = the Java client's murmur2 of the key.
//!
//! Backpressure: a shard has a fixed pool of batch buffers; with none free
//! (the output core has not sent them yet) [`BatchProducer::stage`] refuses
//! and the shard's overflow queue takes the record, as with the record ring.

use std::collections::HashMap;
use std::sync::Arc;

use crate::dapb::{self, Class, KnobFeed, Release, ShardKnobs, UNPARTITIONED};
use crate::handoff::{
    BatchTx, ProducedBatch, RecordMeta, RingFull, FLAG_AUTHENTICATED, FLAG_URGENT,
};
use crate::wire::kafka::{BatchWriter, Codec, Compression, FastMod};

/// The largest batch a shard writes (uncompressed bytes): under the broker's
/// default `message.max.bytes` (1,048,588) with room for the request.
pub const MAX_BATCH_BYTES: usize = 1_000_000;

/// How a shard encodes its batches (from `[output.kafka]`).
#[derive(Debug, Clone)]
pub struct ProduceSettings {
    /// The `gateway` header's value.
    pub gateway: Vec<u8>,
    /// Codec of every batch.
    pub compression: Compression,
    /// zstd level.
    pub zstd_level: i32,
    /// Class of devices not listed below.
    pub default_class: Class,
    /// Urgent devices (`output.kafka.urgent_devices`).
    pub urgent_devices: Vec<String>,
    /// Latency-class devices (`output.kafka.latency_devices`).
    pub latency_devices: Vec<String>,
}

/// A shard's batch counters (published with its snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProduceStats {
    /// Batches handed to the output core.
    pub batches: u64,
    /// Records in them.
    pub records: u64,
    /// Encoded bytes in them (after compression).
    pub batch_bytes: u64,
    /// Batches sent uncompressed because the codec failed.
    pub codec_failures: u64,
    /// Records refused because no buffer was free.
    pub no_buffer: u64,
}

struct Open {
    w: BatchWriter,
    /// When it was opened (the shard's clock as of its last flush): T(t)
    /// counts from here.
    opened_ns: u64,
    /// Receive time of its first record (added latency is measured from it).
    first_ns: u64,
    urgent: u32,
    payload: u64,
    class: Class,
}

/// The configured device classes by raw id: (urgent, latency class). Both
/// Kafka clients look devices up in it.
pub fn device_classes(urgent: &[String], latency: &[String]) -> HashMap<[u8; 16], (bool, bool)> {
    let raw = |s: &String| {
        let mut id = [0u8; 16];
        let n = s.len().min(16);
        id[..n].copy_from_slice(&s.as_bytes()[..n]);
        id
    };
    let mut classes = HashMap::new();
    for d in urgent {
        classes.entry(raw(d)).or_insert((false, false)).0 = true;
    }
    for d in latency {
        classes.entry(raw(d)).or_insert((false, false)).1 = true;
    }
    classes
}

/// One shard's open batches and its end of the batch hand-off.
pub struct BatchProducer {
    feed: Arc<KnobFeed>,
    seen: u64,
    knobs: ShardKnobs,
    /// `% knobs.partitions` without a division.
    pmod: FastMod,
    settings: ProduceSettings,
    classes: HashMap<[u8; 16], (bool, bool)>,
    /// The clock at the last flush (no clock read per record).
    now_ns: u64,
    b: Batches,
}

/// The open batches and where closed ones go (apart from the settings, so
/// a record's headers can borrow those while a batch closes).
struct Batches {
    tx: BatchTx,
    open: Vec<Option<Open>>,
    /// Partitions with an open batch (closing visits only these).
    opened: Vec<u32>,
    codec: Codec,
    stats: ProduceStats,
    /// Encoding for a later split (the count was never known): one batch.
    unpartitioned: bool,
}

/// Open-batch slots for a partition count.
fn slots(partitions: u32) -> usize {
    if partitions == UNPARTITIONED {
        1
    } else {
        partitions as usize
    }
}

impl std::fmt::Debug for BatchProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchProducer")
            .field("knobs", &self.knobs)
            .field("stats", &self.b.stats)
            .finish_non_exhaustive()
    }
}

impl BatchProducer {
    /// A producer over `tx`, following `feed`.
    pub fn new(
        tx: BatchTx,
        feed: Arc<KnobFeed>,
        settings: ProduceSettings,
    ) -> Result<BatchProducer, crate::wire::kafka::CodecError> {
        let classes = device_classes(&settings.urgent_devices, &settings.latency_devices);
        let knobs = feed.read();
        Ok(BatchProducer {
            b: Batches {
                codec: Codec::new(settings.compression, settings.zstd_level)?,
                open: (0..slots(knobs.partitions)).map(|_| None).collect(),
                unpartitioned: knobs.partitions == UNPARTITIONED,
                opened: Vec::new(),
                tx,
                stats: ProduceStats::default(),
            },
            seen: feed.version(),
            now_ns: crate::clock::now_ns(),
            pmod: FastMod::new(knobs.partitions),
            knobs,
            feed,
            settings,
            classes,
        })
    }

    /// The counters now.
    pub fn stats(&self) -> ProduceStats {
        self.b.stats
    }

    /// Encodes one accepted record into its partition's open batch (opening
    /// one if needed, closing it when DAPB says so). Refused only when no
    /// buffer is free or the partition count is not known yet.
    #[inline]
    pub fn stage(&mut self, meta: &RecordMeta, payload: &[u8]) -> Result<(), RingFull> {
        let mut parts = self.knobs.partitions;
        if parts == 0 {
            // Not known yet (only before the output core's first metadata).
            self.refresh();
            parts = self.knobs.partitions;
            if parts == 0 {
                return Err(RingFull);
            }
        }
        let len = meta.raw_id.iter().position(|&b| b == 0).unwrap_or(16);
        let key = &meta.raw_id[..len];
        let p = if parts == UNPARTITIONED {
            0
        } else {
            self.pmod.partition(key) as usize
        };
        let (urgent, latency) = if self.classes.is_empty() {
            (false, false)
        } else {
            self.classes
                .get(&meta.raw_id)
                .copied()
                .unwrap_or((false, false))
        };
        let urgent = urgent || meta.flags & FLAG_URGENT != 0;
        let ts_ms = (meta.recv_ts_ns / 1_000_000) as i64;
        let (mut b1, mut b2, mut b3) = (
            itoa::Buffer::new(),
            itoa::Buffer::new(),
            itoa::Buffer::new(),
        );
        let seq = b1.format(meta.sequence).as_bytes();
        let recv = b2.format(meta.recv_ts_ns).as_bytes();
        let shard = b3.format(meta.shard).as_bytes();
        let mut headers: [(&[u8], &[u8]); 6] = [
            (b"sequence", seq),
            (b"recv_ts_ns", recv),
            (b"gateway", &self.settings.gateway),
            (b"shard", shard),
            (b"", b""),
            (b"", b""),
        ];
        let mut nh = 4;
        if let Some(class) = meta.model_mark() {
            headers[nh] = (b"model", class.as_bytes());
            nh += 1;
        }
        if meta.flags & FLAG_AUTHENTICATED != 0 {
            headers[nh] = (b"auth", b"v2");
            nh += 1;
        }
        let headers = &headers[..nh];
        // Close the open batch first if this record would take it past the
        // largest batch.
        let b = &mut self.b;
        if let Some(o) = &b.open[p] {
            let add = BatchWriter::bound(key, payload, headers);
            if o.w.len() + add > MAX_BATCH_BYTES {
                b.close(p, Release::Full, &self.knobs.params);
            }
        }
        if b.open[p].is_none() {
            let Some(buf) = b.tx.take_buffer() else {
                b.stats.no_buffer += 1;
                return Err(RingFull);
            };
            b.open[p] = Some(Open {
                w: BatchWriter::new(buf),
                opened_ns: self.now_ns,
                first_ns: meta.recv_ts_ns,
                urgent: 0,
                payload: 0,
                class: self.settings.default_class,
            });
            b.opened.push(p as u32);
        }
        let params = self.knobs.params;
        let o = b.open[p].as_mut().ok_or(RingFull)?;
        o.w.push(ts_ms, key, payload, headers);
        o.urgent += u32::from(urgent);
        o.payload += payload.len() as u64;
        if latency {
            o.class = Class::Latency;
        }
        let due = dapb::release(
            &params,
            o.class,
            o.w.len() as u64,
            u64::from(o.w.count()),
            u64::from(o.urgent),
            0,
        );
        if let Some(why) = due {
            b.close(p, why, &params);
        }
        Ok(())
    }

    /// Between receive batches: takes new knobs when the output core moved
    /// them, and closes every batch whose oldest record waited T(t).
    #[inline]
    pub fn flush(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
        self.refresh();
        let b = &mut self.b;
        if b.opened.is_empty() {
            return;
        }
        let t_ns = self.knobs.params.t_us * 1000;
        let mut i = 0;
        while i < b.opened.len() {
            let p = b.opened[i] as usize;
            let due = b.open[p]
                .as_ref()
                .is_some_and(|o| now_ns.saturating_sub(o.opened_ns) >= t_ns);
            if due {
                // close() removes p from `opened` (swap_remove): same i again.
                b.close(p, Release::Timeout, &self.knobs.params);
            } else {
                i += 1;
            }
        }
    }

    /// Takes the knobs when the output core moved them (one atomic load).
    #[inline]
    fn refresh(&mut self) {
        let v = self.feed.version();
        if v == self.seen {
            return;
        }
        self.seen = v;
        let k = self.feed.read();
        if k.partitions != self.knobs.partitions {
            // Batches encoded for the old count are still right for it:
            // send them, then route by the new count.
            self.close_all();
            self.b.open = (0..slots(k.partitions)).map(|_| None).collect();
            self.b.unpartitioned = k.partitions == UNPARTITIONED;
            self.pmod = FastMod::new(k.partitions);
        }
        self.knobs = k;
    }

    /// Closes every open batch (stop, or the partition count moved).
    pub fn close_all(&mut self) {
        while let Some(&p) = self.b.opened.last() {
            self.b.close(p as usize, Release::Drain, &self.knobs.params);
        }
    }
}

impl Batches {
    fn close(&mut self, p: usize, why: Release, params: &crate::dapb::Params) {
        if let Some(i) = self.opened.iter().position(|&q| q as usize == p) {
            self.opened.swap_remove(i);
        }
        let Some(o) = self.open.get_mut(p).and_then(Option::take) else {
            return;
        };
        if o.w.is_empty() {
            self.tx.put_buffer(o.w.into_buffer());
            return;
        }
        let records = o.w.count();
        let (bytes, ok) = o.w.finish(&mut self.codec);
        self.stats.codec_failures += u64::from(!ok);
        self.stats.batches += 1;
        self.stats.records += u64::from(records);
        self.stats.batch_bytes += bytes.len() as u64;
        self.tx.push(ProducedBatch {
            partition: if self.unpartitioned {
                UNPARTITIONED
            } else {
                p as u32
            },
            records,
            payload_bytes: o.payload,
            first_recv_ns: o.first_ns,
            urgent: o.urgent > 0,
            release: why.code(),
            capacity: params.buffer_bytes(o.class).min(u64::from(u32::MAX)) as u32,
            bytes,
        });
    }
}
