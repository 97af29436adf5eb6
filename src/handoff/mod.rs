//! The hand-off from a shard core to the output (batcher) core: one lock-free
//! SPSC byte ring (rtrb) per shard carrying variable-length records.
//!
//! Records are framed in place as a fixed 40-byte header followed by the payload
//! bytes exactly as received, so a 200-byte message costs 240 bytes of ring and
//! nothing is allocated per message: the producer copies into the ring's slots
//! (across the wrap point when needed) and the consumer copies one record out into
//! a buffer it reuses. A record is published whole or not at all; a full ring is
//! reported to the caller, who counts it (never blocks, never retries).
//!
//! Header layout (little-endian, it never leaves the machine):
//! `total_len u32 | sequence u32 | recv_ts_ns u64 | raw_id [16] | shard u16 |
//!  seq_event u8 | flags u8 | payload_len u32`.

use std::mem::MaybeUninit;

use rtrb::{Consumer, Producer, RingBuffer};

/// Bytes of the record header.
pub const RECORD_HEADER_LEN: usize = 40;

/// Record flag: the payload was validated as JSON on the shard.
pub const FLAG_JSON_VALIDATED: u8 = 1;
/// Record flag: the device flagged the message urgent (protocol v2).
pub const FLAG_URGENT: u8 = 2;
/// Record flag: a v2 datagram whose MAC verified (the Kafka header `auth`).
pub const FLAG_AUTHENTICATED: u8 = 4;
/// Record flag: the in-kernel classifier marked the datagram; its class
/// (0–3: normal, flood, sweep, replay) is in bits 4–6.
pub const FLAG_MODEL_MARK: u8 = 0x80;

/// Class names of the classifier's marks (the Kafka `model` header's values).
pub const MODEL_CLASSES: [&str; 4] = ["normal", "flood", "sweep", "replay"];

/// What a shard hands to the output stage about one accepted message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordMeta {
    /// Raw 16-byte device id (NUL padding included).
    pub raw_id: [u8; 16],
    /// Device sequence number.
    pub sequence: u32,
    /// Receive time, ns since the Unix epoch.
    pub recv_ts_ns: u64,
    /// Index of the shard that accepted it.
    pub shard: u16,
    /// [`SeqEvent::code`] of the message.
    pub seq_event: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
}

impl RecordMeta {
    /// The classifier's class when it marked this message.
    pub fn model_mark(&self) -> Option<&'static str> {
        (self.flags & FLAG_MODEL_MARK != 0)
            .then(|| MODEL_CLASSES[usize::from((self.flags >> 4) & 0x3)])
    }

    /// The device id as text (padding trimmed); the parser guaranteed UTF-8.
    pub fn device_id(&self) -> &str {
        let len = self.raw_id.iter().position(|&b| b == 0).unwrap_or(16);
        std::str::from_utf8(&self.raw_id[..len]).unwrap_or("")
    }

    /// The 40-byte header for a payload of `payload_len` bytes.
    pub fn encode(&self, payload_len: usize) -> [u8; RECORD_HEADER_LEN] {
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0..4].copy_from_slice(&((RECORD_HEADER_LEN + payload_len) as u32).to_le_bytes());
        h[4..8].copy_from_slice(&self.sequence.to_le_bytes());
        h[8..16].copy_from_slice(&self.recv_ts_ns.to_le_bytes());
        h[16..32].copy_from_slice(&self.raw_id);
        h[32..34].copy_from_slice(&self.shard.to_le_bytes());
        h[34] = self.seq_event;
        h[35] = self.flags;
        h[36..40].copy_from_slice(&(payload_len as u32).to_le_bytes());
        h
    }

    /// Header fields and payload length from a 40-byte header.
    pub fn decode(h: &[u8; RECORD_HEADER_LEN]) -> (Self, usize) {
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let mut raw_id = [0u8; 16];
        raw_id.copy_from_slice(&h[16..32]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&h[8..16]);
        (
            RecordMeta {
                raw_id,
                sequence: u32_at(4),
                recv_ts_ns: u64::from_le_bytes(ts),
                shard: u16::from_le_bytes([h[32], h[33]]),
                seq_event: h[34],
                flags: h[35],
            },
            u32_at(36) as usize,
        )
    }
}

/// Why a ring could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    /// The ring must hold at least two of the largest records.
    #[error("ring of {bytes} bytes cannot hold two records of {max_record} bytes (pipeline.ring_bytes too small)")]
    TooSmall {
        /// Requested capacity.
        bytes: usize,
        /// Largest record (header + max payload).
        max_record: usize,
    },
}

/// Creates one shard → output ring of `bytes` capacity for payloads up to
/// `max_payload` bytes.
pub fn record_ring(bytes: usize, max_payload: usize) -> Result<(RecordTx, RecordRx), RingError> {
    let max_record = RECORD_HEADER_LEN + max_payload;
    if bytes < 2 * max_record {
        return Err(RingError::TooSmall { bytes, max_record });
    }
    let (p, c) = RingBuffer::new(bytes);
    Ok((
        RecordTx {
            ring: p,
            stage: Vec::with_capacity(STAGE_BYTES.max(max_record)),
            free: 0,
        },
        RecordRx {
            ring: c,
            buf: vec![0u8; max_record].into_boxed_slice(),
        },
    ))
}

/// Bytes a producer collects before one publication (see [`RecordTx::stage`]).
const STAGE_BYTES: usize = 32 * 1024;

/// The shard's end of the ring.
///
/// Two ways to publish: [`RecordTx::push`] makes a record visible at once (one
/// index store per record); [`RecordTx::stage`] collects records and
/// [`RecordTx::flush`] publishes them with one index store per batch, so the
/// consumer's core sees one cache-line transfer per batch, not per record.
#[derive(Debug)]
pub struct RecordTx {
    ring: Producer<u8>,
    /// Staged records, not yet visible to the consumer.
    stage: Vec<u8>,
    /// Free ring bytes at the last look (the consumer only ever adds room).
    free: usize,
}

/// The ring had no room for the record; nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingFull;

impl RecordTx {
    /// Stages one record for the next [`RecordTx::flush`], or reports
    /// [`RingFull`] when the ring cannot take it even after a flush. A staged
    /// record is guaranteed a place in the ring. Allocates nothing (the stage
    /// is reserved once).
    #[inline]
    pub fn stage(&mut self, meta: &RecordMeta, payload: &[u8]) -> Result<(), RingFull> {
        let total = RECORD_HEADER_LEN + payload.len();
        if self.stage.len() + total > self.stage.capacity() {
            self.flush();
        }
        if self.stage.len() + total > self.free {
            // Look again: the consumer may have made room since.
            self.free = self.ring.slots();
            if self.stage.len() + total > self.free {
                return Err(RingFull);
            }
        }
        self.stage.extend_from_slice(&meta.encode(payload.len()));
        self.stage.extend_from_slice(payload);
        Ok(())
    }

    /// Publishes everything staged, in one step.
    #[inline]
    pub fn flush(&mut self) {
        if self.stage.is_empty() {
            return;
        }
        // Every staged byte was checked against `free`, which only ever
        // underestimates the room (the consumer adds room, this producer's
        // direct pushes subtract theirs), so the whole stage fits.
        let pushed = self.ring.push_entire_slice(&self.stage);
        debug_assert!(pushed.is_ok(), "staged records always fit");
        self.free = self.free.saturating_sub(self.stage.len());
        self.stage.clear();
    }

    /// Bytes staged and not yet published.
    pub fn staged_bytes(&self) -> usize {
        self.stage.len()
    }

    /// Publishes one record (header + payload) at once or reports [`RingFull`].
    /// Anything staged is published first, so order is kept.
    #[inline]
    pub fn push(&mut self, meta: &RecordMeta, payload: &[u8]) -> Result<(), RingFull> {
        self.flush();
        let header = meta.encode(payload.len());
        let total = RECORD_HEADER_LEN + payload.len();
        let mut chunk = self.ring.write_chunk_uninit(total).map_err(|_| RingFull)?;
        let (a, b) = chunk.as_mut_slices();
        let mut w = SplitWriter { a, b, pos: 0 };
        w.put(&header);
        w.put(payload);
        debug_assert_eq!(w.pos, total);
        // SAFETY: `SplitWriter::put` wrote `header.len() + payload.len() == total`
        // bytes, which is exactly the chunk's length (a.len() + b.len()), so every
        // slot of the chunk is initialized before it is committed.
        unsafe { chunk.commit_all() };
        // Keep the staging estimate honest: this record took room too.
        self.free = self.free.saturating_sub(total);
        Ok(())
    }

    /// Free bytes in the ring.
    pub fn free_bytes(&self) -> usize {
        self.ring.slots()
    }
}

/// Writes a byte stream across the two halves of a wrapped chunk.
struct SplitWriter<'a> {
    a: &'a mut [MaybeUninit<u8>],
    b: &'a mut [MaybeUninit<u8>],
    pos: usize,
}

impl SplitWriter<'_> {
    #[inline]
    fn put(&mut self, src: &[u8]) {
        let mut src = src;
        if self.pos < self.a.len() {
            let n = src.len().min(self.a.len() - self.pos);
            for (d, s) in self.a[self.pos..self.pos + n].iter_mut().zip(&src[..n]) {
                d.write(*s);
            }
            self.pos += n;
            src = &src[n..];
        }
        if !src.is_empty() {
            let off = self.pos - self.a.len();
            for (d, s) in self.b[off..off + src.len()].iter_mut().zip(src) {
                d.write(*s);
            }
            self.pos += src.len();
        }
    }
}

/// The output stage's end of the ring.
#[derive(Debug)]
pub struct RecordRx {
    ring: Consumer<u8>,
    buf: Box<[u8]>,
}

impl RecordRx {
    /// The next record's header and total length, left in the ring.
    #[inline]
    fn peek_header(&mut self) -> Option<(RecordMeta, usize)> {
        let mut header = [0u8; RECORD_HEADER_LEN];
        let chunk = self.ring.read_chunk(RECORD_HEADER_LEN).ok()?;
        let (a, b) = chunk.as_slices();
        header[..a.len()].copy_from_slice(a);
        header[a.len()..].copy_from_slice(b);
        // Dropped uncommitted: the header stays in the ring.
        let (meta, payload_len) = RecordMeta::decode(&header);
        Some((meta, RECORD_HEADER_LEN + payload_len))
    }

    /// Takes the next record, if a whole one is there. The payload borrows a
    /// buffer owned by `self`, valid until the next call.
    #[inline]
    pub fn pop(&mut self) -> Option<(RecordMeta, &[u8])> {
        let (meta, total) = self.peek_header()?;
        // The producer commits whole records, so `total` bytes are present; the
        // record fits `buf` because the producer's payloads were bounded by the
        // same max_payload the buffer was sized from.
        let dst = self.buf.get_mut(..total)?;
        self.ring.pop_entire_slice(dst).ok()?;
        Some((meta, &self.buf[RECORD_HEADER_LEN..total]))
    }

    /// Offers the next whole record to `take`; it is consumed only if `take`
    /// returns true (a full downstream leaves it in place, in order).
    #[inline]
    pub fn pop_if(&mut self, take: impl FnOnce(&RecordMeta, &[u8]) -> bool) -> Option<bool> {
        let (meta, total) = self.peek_header()?;
        let chunk = self.ring.read_chunk(total).ok()?;
        let dst = self.buf.get_mut(..total)?;
        let (a, b) = chunk.as_slices();
        dst[..a.len()].copy_from_slice(a);
        dst[a.len()..].copy_from_slice(b);
        let taken = take(&meta, &dst[RECORD_HEADER_LEN..]);
        if taken {
            chunk.commit_all();
        }
        Some(taken)
    }

    /// True when the shard dropped its end and nothing is left to read.
    pub fn is_finished(&self) -> bool {
        self.ring.is_abandoned() && self.ring.is_empty()
    }

    /// Bytes waiting in the ring (queue depth for metrics).
    pub fn queued_bytes(&self) -> usize {
        self.ring.slots()
    }
}

/// The outcome of tracking one packet's sequence (the shard's
/// [`crate::shard::SeqTracker`] decides it; records carry its code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqEvent {
    /// First packet of a device (or first since it was evicted).
    New,
    /// The next sequence.
    InOrder,
    /// Ahead of the next sequence: `missing` sequences were skipped.
    Gap {
        /// How many sequences are missing between the last and this one.
        missing: u32,
    },
    /// Behind the highest seen, inside the window, not seen before.
    Late,
    /// Seen before: the packet is a duplicate and is dropped.
    Duplicate,
    /// The device restarted its counter.
    Reset,
}

impl SeqEvent {
    /// Compact code carried in records and Kafka headers.
    pub const fn code(self) -> u8 {
        match self {
            SeqEvent::New => 0,
            SeqEvent::InOrder => 1,
            SeqEvent::Gap { .. } => 2,
            SeqEvent::Late => 3,
            SeqEvent::Duplicate => 4,
            SeqEvent::Reset => 5,
        }
    }
    /// Name for a code from [`SeqEvent::code`].
    pub const fn code_name(code: u8) -> &'static str {
        match code {
            0 => "new",
            1 => "in_order",
            2 => "gap",
            3 => "late",
            4 => "duplicate",
            5 => "reset",
            _ => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_doorbell_writes_its_eventfd_only_for_a_parked_output_core() {
        let bell = std::sync::Arc::new(super::Doorbell::new().unwrap());
        let readable = |b: &super::Doorbell| {
            let mut buf = [0u8; 8];
            // SAFETY: 8 bytes into a live buffer from a non-blocking fd.
            unsafe { libc::read(b.fd(), buf.as_mut_ptr().cast(), 8) == 8 }
        };
        let (mut tx, mut rx) = super::batch_ring(4, 64);
        tx.ring_on_push(bell.clone());
        let batch = |tx: &mut super::BatchTx| super::ProducedBatch {
            partition: 0,
            records: 1,
            payload_bytes: 1,
            first_recv_ns: 0,
            urgent: false,
            release: 0,
            capacity: 0,
            bytes: tx.take_buffer().unwrap(),
        };
        // Awake: a push rings nothing (no system call).
        let b = batch(&mut tx);
        tx.push(b);
        assert!(!readable(&bell));
        assert!(rx.has_batch());
        rx.pop().unwrap();
        assert!(!rx.has_batch());
        // Parked: the push wakes it, once.
        bell.park();
        let b = batch(&mut tx);
        tx.push(b);
        assert!(readable(&bell));
        let b = batch(&mut tx);
        tx.push(b);
        assert!(!readable(&bell), "one wake-up per sleep");
        bell.unpark();
    }

    use super::*;
    use proptest::prelude::*;

    fn meta(seq: u32) -> RecordMeta {
        let mut raw_id = [0u8; 16];
        raw_id[..5].copy_from_slice(b"dev-1");
        RecordMeta {
            raw_id,
            sequence: seq,
            recv_ts_ns: 1_700_000_000_000_000_000 + u64::from(seq),
            shard: 3,
            seq_event: 1,
            flags: FLAG_JSON_VALIDATED,
        }
    }

    #[test]
    fn a_record_crosses_the_ring_unchanged() {
        let (mut tx, mut rx) = record_ring(1024, 100).unwrap();
        tx.push(&meta(9), br#"{"a":1}"#).unwrap();
        let (m, p) = rx.pop().unwrap();
        assert_eq!(m, meta(9));
        assert_eq!(m.device_id(), "dev-1");
        assert_eq!(p, br#"{"a":1}"#);
        assert!(rx.pop().is_none());
    }

    #[test]
    fn records_wrap_around_the_ring_end_intact() {
        let (mut tx, mut rx) = record_ring(300, 100).unwrap();
        for i in 0..1000u32 {
            let payload = vec![(i % 251) as u8; (i % 97) as usize];
            tx.push(&meta(i), &payload).unwrap();
            let (m, p) = rx.pop().unwrap();
            assert_eq!(m.sequence, i);
            assert_eq!(p, &payload[..]);
        }
    }

    #[test]
    fn a_full_ring_refuses_the_whole_record_and_keeps_earlier_ones() {
        let (mut tx, mut rx) = record_ring(200, 60).unwrap();
        tx.push(&meta(1), &[1; 60]).unwrap();
        tx.push(&meta(2), &[2; 60]).unwrap();
        assert_eq!(tx.push(&meta(3), &[3; 60]), Err(RingFull));
        assert_eq!(rx.pop().unwrap().0.sequence, 1);
        assert_eq!(rx.pop().unwrap().0.sequence, 2);
        assert!(rx.pop().is_none());
    }

    #[test]
    fn a_ring_too_small_for_two_records_is_refused() {
        assert_eq!(
            record_ring(100, 60).unwrap_err(),
            RingError::TooSmall {
                bytes: 100,
                max_record: 100
            }
        );
    }

    #[test]
    fn the_consumer_sees_the_end_once_drained() {
        let (mut tx, mut rx) = record_ring(1024, 100).unwrap();
        tx.push(&meta(1), b"{}").unwrap();
        drop(tx);
        assert!(!rx.is_finished());
        assert!(rx.pop().is_some());
        assert!(rx.is_finished());
    }

    #[test]
    fn a_record_refused_by_pop_if_stays_first_in_line() {
        let (mut tx, mut rx) = record_ring(1024, 100).unwrap();
        tx.push(&meta(1), b"one").unwrap();
        tx.push(&meta(2), b"two").unwrap();
        assert_eq!(
            rx.pop_if(|m, p| {
                assert_eq!((m.sequence, p), (1, &b"one"[..]));
                false
            }),
            Some(false)
        );
        assert_eq!(rx.pop_if(|m, _| m.sequence == 1), Some(true));
        assert_eq!(rx.pop().unwrap().0.sequence, 2);
        assert_eq!(rx.pop_if(|_, _| true), None);
    }

    #[test]
    fn staged_records_appear_only_after_flush_and_in_order() {
        let (mut tx, mut rx) = record_ring(4096, 100).unwrap();
        tx.stage(&meta(1), b"a").unwrap();
        tx.stage(&meta(2), b"bb").unwrap();
        assert!(rx.pop().is_none(), "not visible before flush");
        tx.push(&meta(3), b"ccc").unwrap(); // a direct push flushes the stage first
        let got: Vec<u32> = std::iter::from_fn(|| rx.pop().map(|(m, _)| m.sequence)).collect();
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[test]
    fn staging_refuses_what_the_ring_cannot_hold_and_keeps_what_it_staged() {
        let (mut tx, mut rx) = record_ring(200, 60).unwrap();
        tx.stage(&meta(1), &[1; 60]).unwrap();
        tx.stage(&meta(2), &[2; 60]).unwrap();
        assert_eq!(tx.stage(&meta(3), &[3; 60]), Err(RingFull));
        tx.flush();
        assert_eq!(rx.pop().unwrap().0.sequence, 1);
        tx.stage(&meta(4), &[4; 60]).unwrap();
        tx.flush();
        let got: Vec<u32> = std::iter::from_fn(|| rx.pop().map(|(m, _)| m.sequence)).collect();
        assert_eq!(got, vec![2, 4]);
    }

    proptest! {
        #[test]
        fn staged_batches_preserve_order_and_bytes(
            ops in proptest::collection::vec((0u8..3, 0usize..80), 1..400),
        ) {
            let (mut tx, mut rx) = record_ring(512, 80).unwrap();
            let mut expected = std::collections::VecDeque::new();
            let mut seq = 0u32;
            for (op, len) in ops {
                match op {
                    0 => {
                        let payload = vec![seq as u8; len];
                        if tx.stage(&meta(seq), &payload).is_ok() {
                            expected.push_back((seq, payload));
                        }
                        seq += 1;
                    }
                    1 => tx.flush(),
                    _ => {
                        if let Some((m, p)) = rx.pop() {
                            let (s, want) = expected.pop_front().unwrap();
                            prop_assert_eq!(m.sequence, s);
                            prop_assert_eq!(p, &want[..]);
                        }
                    }
                }
            }
            tx.flush();
            while let Some((m, p)) = rx.pop() {
                let (s, want) = expected.pop_front().unwrap();
                prop_assert_eq!(m.sequence, s);
                prop_assert_eq!(p, &want[..]);
            }
            prop_assert!(expected.is_empty());
        }

        #[test]
        fn interleaved_pushes_and_pops_preserve_order_and_bytes(
            ops in proptest::collection::vec((any::<bool>(), 0usize..80), 1..400),
        ) {
            let (mut tx, mut rx) = record_ring(512, 80).unwrap();
            let mut expected = std::collections::VecDeque::new();
            let mut seq = 0u32;
            for (push, len) in ops {
                if push {
                    let payload = vec![seq as u8; len];
                    if tx.push(&meta(seq), &payload).is_ok() {
                        expected.push_back((seq, payload));
                    }
                    seq += 1;
                } else {
                    match (rx.pop(), expected.pop_front()) {
                        (Some((m, p)), Some((s, want))) => {
                            prop_assert_eq!(m.sequence, s);
                            prop_assert_eq!(p, &want[..]);
                        }
                        (None, None) => {}
                        (got, want) => prop_assert!(false, "got {:?} want {:?}", got.map(|g| g.0), want),
                    }
                }
            }
        }
    }
}

/// A finished Kafka RecordBatch from a shard (the native Kafka client): the
/// shard encoded and compressed it; the output core only sends its bytes.
#[derive(Debug, Default)]
pub struct ProducedBatch {
    /// Partition of the topic its records' keys hash to.
    pub partition: u32,
    /// Records in it.
    pub records: u32,
    /// Payload bytes of its records (before encoding).
    pub payload_bytes: u64,
    /// Receive time of its first record, ns since the Unix epoch.
    pub first_recv_ns: u64,
    /// It holds an urgent record.
    pub urgent: bool,
    /// Why the shard closed it (DAPB's release reason, as its code).
    pub release: u8,
    /// B(t) of its class when it closed, bytes.
    pub capacity: u32,
    /// The encoded batch (RecordBatch v2, CRC set, no producer id yet).
    pub bytes: Vec<u8>,
}

/// The shard's end of a batch hand-off: finished batches out, emptied
/// buffers back. The pool of buffers is fixed at creation and the ring holds
/// all of them, so a push never fails: a shard without a free buffer cannot
/// start a batch, and that is its backpressure.
#[derive(Debug)]
pub struct BatchTx {
    out: Producer<ProducedBatch>,
    back: Consumer<Vec<u8>>,
    /// Free buffers on this side.
    free: Vec<Vec<u8>>,
    /// Rung after a push, for an output core that sleeps.
    bell: Option<std::sync::Arc<Doorbell>>,
}

/// Wakes a sleeping output core when a shard hands it a batch: the output
/// core marks itself parked before it sleeps and waits on an eventfd (in its
/// io_uring); a shard that has pushed a batch writes the eventfd only if it
/// sees the mark — one fence and one load per batch (never per record), a
/// system call only once per sleep. Without it an idle output core would
/// have to poll the rings, which at 10,000 msg/s cost it ~10 µs per message.
#[derive(Debug)]
pub struct Doorbell {
    parked: std::sync::atomic::AtomicBool,
    fd: std::os::fd::OwnedFd,
}

impl Doorbell {
    /// A doorbell (an eventfd, non-blocking).
    pub fn new() -> std::io::Result<Doorbell> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: eventfd returns a new descriptor we own, or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Doorbell {
            parked: std::sync::atomic::AtomicBool::new(false),
            // SAFETY: fd is a fresh descriptor nobody else owns.
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The eventfd the output core reads (8 bytes) to wait for a ring.
    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd as _;
        self.fd.as_raw_fd()
    }

    /// Output core: about to sleep. Afterwards it must look at the rings
    /// once more (a batch pushed before the mark was seen is found there).
    pub fn park(&self) {
        use std::sync::atomic::{fence, Ordering};
        self.parked.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Output core: awake (or not sleeping after all).
    pub fn unpark(&self) {
        self.parked
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Shard, after pushing a batch: wakes the output core if it sleeps.
    #[inline]
    pub fn ring(&self) {
        use std::sync::atomic::{fence, Ordering};
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::Relaxed) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to our eventfd. A
            // full counter (EAGAIN) already means "wake up".
            let _ = unsafe { libc::write(self.fd(), one.as_ptr().cast(), 8) };
        }
    }
}

/// The output core's end of a batch hand-off.
#[derive(Debug)]
pub struct BatchRx {
    rx: Consumer<ProducedBatch>,
    back: Producer<Vec<u8>>,
}

/// One shard → output batch hand-off with `buffers` buffers of
/// `buffer_bytes` capacity each.
pub fn batch_ring(buffers: usize, buffer_bytes: usize) -> (BatchTx, BatchRx) {
    let buffers = buffers.max(2);
    let (out, rx) = RingBuffer::new(buffers);
    let (back_tx, back) = RingBuffer::new(buffers);
    (
        BatchTx {
            out,
            back,
            free: (0..buffers)
                .map(|_| Vec::with_capacity(buffer_bytes))
                .collect(),
            bell: None,
        },
        BatchRx { rx, back: back_tx },
    )
}

impl BatchTx {
    /// A free buffer, if any (those given back by the output core first
    /// move to this side).
    #[inline]
    pub fn take_buffer(&mut self) -> Option<Vec<u8>> {
        if self.free.is_empty() {
            while let Ok(b) = self.back.pop() {
                self.free.push(b);
            }
        }
        self.free.pop()
    }

    /// Returns a buffer that was taken but not sent.
    pub fn put_buffer(&mut self, buf: Vec<u8>) {
        self.free.push(buf);
    }

    /// Rings `bell` after every push (the output core may sleep).
    pub fn ring_on_push(&mut self, bell: std::sync::Arc<Doorbell>) {
        self.bell = Some(bell);
    }

    /// Hands a finished batch to the output core (visible at once).
    #[inline]
    pub fn push(&mut self, batch: ProducedBatch) {
        // The ring holds every buffer of the pool, so it has room for any
        // batch made from one; a batch made otherwise is the caller's bug,
        // and is kept rather than lost: the ring is then over-full by design.
        if let Err(rtrb::PushError::Full(b)) = self.out.push(batch) {
            self.free.push(b.bytes);
            debug_assert!(false, "batch ring over-full: a buffer not from the pool");
        }
        if let Some(bell) = &self.bell {
            bell.ring();
        }
    }
}

impl BatchRx {
    /// The next finished batch.
    #[inline]
    pub fn pop(&mut self) -> Option<ProducedBatch> {
        self.rx.pop().ok()
    }

    /// Gives a sent batch's buffer back to the shard.
    #[inline]
    pub fn give_back(&mut self, buf: Vec<u8>) {
        // Not cleared: the shard's batch writer overwrites it, and writes
        // into bytes it already has without zeroing them again.
        // Room for every buffer of the pool: cannot fail for one from it.
        let _ = self.back.push(buf);
    }

    /// A batch is waiting.
    #[inline]
    pub fn has_batch(&self) -> bool {
        !self.rx.is_empty()
    }

    /// True when the shard dropped its end and every batch was taken.
    pub fn is_finished(&self) -> bool {
        self.rx.is_abandoned() && self.rx.is_empty()
    }
}
