//! A shard: the per-core pipeline from a received datagram to a record in the
//! ring toward the output (batcher) core.
//!
//! parse → sequence tracking → ring push. Pure logic plus the ring: the I/O
//! that feeds it lives in `ingest/`. Per packet it allocates nothing, logs
//! nothing and touches no shared atomics; it keeps plain counters and
//! [`Shard::snapshot`] publishes them once per tick.
//!
//! Admission control (the Dam: token buckets, overflow queue) joins here with
//! its own issue; until then a full ring drops with the `queue_full` counter.

mod seq;

pub use seq::{SeqCounters, SeqEvent, SeqTracker, WINDOW as SEQ_WINDOW};

use crate::handoff::{RecordMeta, RecordTx, FLAG_JSON_VALIDATED};
use crate::wire::{self, ParseOptions, Reject, RejectCounters};

/// Settings a shard needs, taken from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSettings {
    /// Parser options (`[protocol]`).
    pub parse: ParseOptions,
    /// Devices tracked per shard (`sequence.max_devices`).
    pub max_devices: usize,
    /// Sequence numbers at or below this, arriving behind, mean a restart.
    pub reset_window: u32,
}

/// Counters of one shard at one moment (published per tick).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardSnapshot {
    /// Datagrams received.
    pub received: u64,
    /// Bytes received.
    pub received_bytes: u64,
    /// Datagrams accepted and handed to the output stage.
    pub accepted: u64,
    /// Rejects by reason.
    pub rejects: RejectCounters,
    /// Sequence tracking counters.
    pub seq: SeqCounters,
}

impl ShardSnapshot {
    /// Adds another shard's counters.
    pub fn add(&mut self, o: &ShardSnapshot) {
        self.received += o.received;
        self.received_bytes += o.received_bytes;
        self.accepted += o.accepted;
        self.rejects.add(&o.rejects);
        self.seq.add(&o.seq);
    }
}

/// One shard's pipeline state.
#[derive(Debug)]
pub struct Shard {
    id: u16,
    settings: ShardSettings,
    tracker: SeqTracker,
    tx: RecordTx,
    received: u64,
    received_bytes: u64,
    accepted: u64,
    rejects: RejectCounters,
}

impl Shard {
    /// A shard with its ring to the output stage. Allocates its device table
    /// here; fails only when the kernel refuses that memory.
    pub fn new(id: u16, settings: ShardSettings, tx: RecordTx) -> std::io::Result<Self> {
        Ok(Self {
            id,
            settings,
            tracker: SeqTracker::new(settings.max_devices, settings.reset_window)?,
            tx,
            received: 0,
            received_bytes: 0,
            accepted: 0,
            rejects: RejectCounters::default(),
        })
    }

    /// Handles one datagram received at `recv_ts_ns`. Returns the reject reason
    /// when it was not accepted (already counted).
    #[inline]
    pub fn on_datagram(&mut self, buf: &[u8], recv_ts_ns: u64) -> Result<SeqEvent, Reject> {
        self.received += 1;
        self.received_bytes += buf.len() as u64;
        let r = self.process(buf, recv_ts_ns);
        match r {
            Ok(_) => self.accepted += 1,
            Err(reason) => self.rejects.bump(reason),
        }
        r
    }

    #[inline]
    fn process(&mut self, buf: &[u8], recv_ts_ns: u64) -> Result<SeqEvent, Reject> {
        let d = wire::parse(buf, &self.settings.parse)?;
        let ev = self.tracker.track(d.device_hash(), d.sequence);
        if ev == SeqEvent::Duplicate {
            return Err(Reject::DuplicateSequence);
        }
        let meta = RecordMeta {
            raw_id: *d.raw_id,
            sequence: d.sequence,
            recv_ts_ns,
            shard: self.id,
            seq_event: ev.code(),
            flags: if self.settings.parse.validate_json {
                FLAG_JSON_VALIDATED
            } else {
                0
            },
        };
        self.tx
            .push(&meta, d.payload)
            .map_err(|_| Reject::QueueFull)?;
        Ok(ev)
    }

    /// The counters now.
    pub fn snapshot(&self) -> ShardSnapshot {
        ShardSnapshot {
            received: self.received,
            received_bytes: self.received_bytes,
            accepted: self.accepted,
            rejects: self.rejects,
            seq: *self.tracker.counters(),
        }
    }

    /// Shard index.
    pub fn id(&self) -> u16 {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::{record_ring, RecordRx};
    use crate::wire::{encode, HEADER_LEN};

    fn shard(validate_json: bool, ring_bytes: usize) -> (Shard, RecordRx) {
        let (tx, rx) = record_ring(ring_bytes, 1024).unwrap();
        let settings = ShardSettings {
            parse: ParseOptions {
                max_payload: 1024,
                validate_json,
            },
            max_devices: 1024,
            reset_window: 4,
        };
        (Shard::new(0, settings, tx).unwrap(), rx)
    }

    fn dgram(id: &str, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0; HEADER_LEN + payload.len()];
        encode(id, seq, payload, &mut b).unwrap();
        b
    }

    #[test]
    fn accepted_messages_reach_the_ring_with_their_metadata() {
        let (mut s, mut rx) = shard(true, 1 << 16);
        assert_eq!(s.on_datagram(&dgram("a", 1, b"{}"), 77), Ok(SeqEvent::New));
        assert_eq!(
            s.on_datagram(&dgram("a", 2, b"[1]"), 78),
            Ok(SeqEvent::InOrder)
        );
        let (m, p) = rx.pop().unwrap();
        assert_eq!(
            (m.device_id(), m.sequence, m.recv_ts_ns, p),
            ("a", 1, 77, &b"{}"[..])
        );
        assert_eq!(m.flags, FLAG_JSON_VALIDATED);
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
        assert_eq!(rx.pop().unwrap().0.sequence, 5);
        assert!(
            rx.pop().is_none(),
            "rejected datagrams never reach the ring"
        );
    }

    #[test]
    fn a_full_ring_counts_queue_full_and_keeps_receiving() {
        let (mut s, mut rx) = shard(false, 2 * (40 + 1024));
        let payload = [b'x'; 1000];
        let mut accepted = 0;
        for seq in 0..10 {
            if s.on_datagram(&dgram("a", seq, &payload), 0).is_ok() {
                accepted += 1;
            }
        }
        let snap = s.snapshot();
        assert_eq!(snap.accepted, accepted);
        assert_eq!(snap.rejects.get(Reject::QueueFull), 10 - accepted);
        // Draining makes room again.
        while rx.pop().is_some() {}
        assert!(s.on_datagram(&dgram("a", 10, &payload), 0).is_ok());
    }
}
