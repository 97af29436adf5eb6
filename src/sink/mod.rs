//! The output stage: drains the shard rings on the output (batcher) core and
//! writes each accepted record.
//!
//! Sinks here are the debug sinks: JSON lines to standard output or a file, and
//! `null` (count and discard) to measure the ingest path alone. The Kafka
//! producer joins them on this core with its own issue.
//!
//! One JSON object per line:
//! `{"device_id":"…","sequence":N,"recv_ts_ns":N,"shard":N,"seq_event":"in_order","payload":…}`.
//! A payload validated as JSON on the shard is embedded as JSON (its
//! insignificant CR/LF whitespace turned into spaces so the line stays one
//! line); otherwise it is embedded as a JSON string (invalid UTF-8 replaced).

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::handoff::{RecordMeta, RecordRx, SeqEvent, FLAG_JSON_VALIDATED};
use crate::telemetry::Published;

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(PathBuf),
    /// Count and discard.
    Null,
}

/// Counters of the output stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkSnapshot {
    /// Records written (or counted, for `null`).
    pub records: u64,
    /// Payload bytes written.
    pub payload_bytes: u64,
}

/// Why the sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The output file could not be opened.
    #[error("cannot open output file {path}: {source} (see output.path)")]
    Open {
        /// File path.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// A write failed (disk full, closed pipe …).
    #[error("writing records failed after {written} records: {source}")]
    Write {
        /// Records written before the failure.
        written: u64,
        /// OS error.
        source: io::Error,
    },
}

/// Writes one record as a JSON line.
pub fn write_json_line<W: Write>(w: &mut W, meta: &RecordMeta, payload: &[u8]) -> io::Result<()> {
    w.write_all(b"{\"device_id\":")?;
    serde_json::to_writer(&mut *w, meta.device_id())?;
    write!(
        w,
        ",\"sequence\":{},\"recv_ts_ns\":{},\"shard\":{},\"seq_event\":\"{}\",\"payload\":",
        meta.sequence,
        meta.recv_ts_ns,
        meta.shard,
        SeqEvent::code_name(meta.seq_event)
    )?;
    if meta.flags & FLAG_JSON_VALIDATED != 0 {
        // Valid JSON cannot hold a raw CR/LF inside a string, so any is
        // whitespace between tokens and a space keeps the value identical.
        for part in payload.split_inclusive(|&b| b == b'\n' || b == b'\r') {
            match part.split_last() {
                Some((&last, head)) if last == b'\n' || last == b'\r' => {
                    w.write_all(head)?;
                    w.write_all(b" ")?;
                }
                _ => w.write_all(part)?,
            }
        }
    } else {
        serde_json::to_writer(&mut *w, &String::from_utf8_lossy(payload))?;
    }
    w.write_all(b"}\n")
}

/// Runs the output stage until every ring is finished (its shard exited and it
/// is drained) or a write fails. `stop` only makes it give up waiting on rings
/// whose shards never exit (it is set after the shards were joined).
pub fn run(
    target: SinkTarget,
    mut rings: Vec<RecordRx>,
    published: &Published<SinkSnapshot>,
    tick: Duration,
    abandon: &AtomicBool,
) -> Result<SinkSnapshot, SinkError> {
    let mut out: Box<dyn Write> = match &target {
        SinkTarget::Stdout => Box::new(BufWriter::with_capacity(1 << 16, io::stdout().lock())),
        SinkTarget::File(path) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| SinkError::Open {
                    path: path.clone(),
                    source,
                })?;
            Box::new(BufWriter::with_capacity(1 << 16, f))
        }
        SinkTarget::Null => Box::new(io::sink()),
    };
    let write_lines = target != SinkTarget::Null;
    let mut snap = SinkSnapshot::default();
    let mut idle = 0u32;
    let mut next_publish = Instant::now() + tick;
    loop {
        let mut got = 0usize;
        for rx in rings.iter_mut() {
            // Bounded batch per ring per round: fairness between shards.
            for _ in 0..1024 {
                let Some((meta, payload)) = rx.pop() else {
                    break;
                };
                if write_lines {
                    write_json_line(&mut out, &meta, payload).map_err(|source| {
                        SinkError::Write {
                            written: snap.records,
                            source,
                        }
                    })?;
                }
                snap.records += 1;
                snap.payload_bytes += payload.len() as u64;
                got += 1;
            }
        }
        if got == 0 {
            out.flush().map_err(|source| SinkError::Write {
                written: snap.records,
                source,
            })?;
            if rings.iter().all(RecordRx::is_finished) || abandon.load(Ordering::Relaxed) {
                break;
            }
            idle = idle.saturating_add(1);
            // Spin briefly, then back off to at most 1 ms so an idle appliance
            // does not burn its output core.
            if idle > 64 {
                std::thread::sleep(Duration::from_micros(u64::from(idle.min(1000))));
            } else {
                std::hint::spin_loop();
            }
        } else {
            idle = 0;
        }
        let now = Instant::now();
        if now >= next_publish {
            published.publish(snap);
            next_publish = now + tick;
        }
    }
    published.publish(snap);
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(flags: u8) -> RecordMeta {
        let mut raw_id = [0u8; 16];
        raw_id[..6].copy_from_slice(b"dev\"q\\");
        RecordMeta {
            raw_id,
            sequence: 7,
            recv_ts_ns: 123,
            shard: 0,
            seq_event: SeqEvent::Gap { missing: 1 }.code(),
            flags,
        }
    }

    fn line(flags: u8, payload: &[u8]) -> String {
        let mut v = Vec::new();
        write_json_line(&mut v, &meta(flags), payload).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn a_validated_payload_is_embedded_as_json_on_one_line() {
        let l = line(FLAG_JSON_VALIDATED, b"{\n  \"t\": 1\r\n}");
        assert_eq!(l.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["device_id"], "dev\"q\\");
        assert_eq!(v["sequence"], 7);
        assert_eq!(v["seq_event"], "gap");
        assert_eq!(v["payload"]["t"], 1);
    }

    #[test]
    fn an_unvalidated_payload_is_embedded_as_a_string() {
        let l = line(0, b"not json \xff\n");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["payload"], "not json \u{fffd}\n");
    }
}
