//! The spill journal: where accepted messages wait while Kafka cannot take them.
//!
//! - **Segments**: files `<dir>/<id:016x>.klj`, each an 8-byte magic followed by
//!   records, replayed in id order. New records go to the tail segment; when it
//!   reaches `segment_bytes` it is closed (sealed) and the next begun. Records
//!   moved back from librdkafka at shutdown go to a segment *before* the first
//!   (a lower id), so replay keeps every device's order.
//! - **Records**: `crc32 u32 LE | 40-byte record header | payload`, the header
//!   being the shard ring's ([`RecordMeta`]), the CRC (crc32fast, IEEE) covering
//!   header and payload. A record is never split across segments.
//! - **Writes** go through io_uring from the batcher core (never from a shard):
//!   records are framed into a 1 MiB buffer, a full buffer is submitted as one
//!   write while the next fills, completions are reaped without blocking. Only
//!   completed writes are read back by the replay. `fsync` per policy (always,
//!   interval, on segment close, never) is an io_uring `fsync` (datasync).
//! - **Acknowledgement**: a replayed record is acknowledged by its delivery
//!   report (a bit per record); a sealed segment whose records are all
//!   acknowledged is deleted. At close, a partially acknowledged segment is
//!   rewritten without its acknowledged records, so a restart does not deliver
//!   them twice.
//! - **Budget**: segments never exceed `budget_bytes` in total; an append past it
//!   is refused and the caller counts the drop (journal_full).
//! - **Recovery**: at open every segment is read and checked; a torn tail (a
//!   crash mid-write) is cut at the last whole record and counted.
//!
//! What a SIGKILL can lose here: the records in the buffer not yet submitted (at
//! most 1 MiB) and, on power loss, what was written but not yet fsynced.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use crate::handoff::{RecordMeta, RECORD_HEADER_LEN};

const MAGIC: &[u8; 8] = b"KLAISJ01";
const BUF_BYTES: usize = 1 << 20;
/// Ids of the first segment of an empty journal: room below for prepending.
const FIRST_ID: u64 = 1 << 30;
/// Bits of a token holding the record index within its segment.
const INDEX_BITS: u32 = 32;

/// When to fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// After every write.
    Always,
    /// At most this often, when something was written.
    Interval(Duration),
    /// When a segment is closed.
    Segment,
    /// Never (the kernel's writeback).
    Never,
}

impl Fsync {
    /// From `output.kafka.journal.fsync` and `fsync_interval_ms` (validated).
    pub fn from_config(name: &str, interval_ms: u64) -> Fsync {
        match name {
            "always" => Fsync::Always,
            "segment" => Fsync::Segment,
            "never" => Fsync::Never,
            _ => Fsync::Interval(Duration::from_millis(interval_ms)),
        }
    }
}

/// Journal settings.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Directory of the segments.
    pub dir: PathBuf,
    /// Segment size, bytes.
    pub segment_bytes: u64,
    /// Total disk budget, bytes.
    pub budget_bytes: u64,
    /// fsync policy.
    pub fsync: Fsync,
}

impl JournalConfig {
    /// From `[output.kafka.journal]`.
    pub fn from_config(j: &crate::config::Journal) -> JournalConfig {
        JournalConfig {
            dir: j.dir.clone(),
            segment_bytes: j.segment_bytes,
            budget_bytes: j.budget_bytes,
            fsync: Fsync::from_config(&j.fsync, j.fsync_interval_ms),
        }
    }
}

/// Why the journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Directory or segment I/O failed.
    #[error("spill journal {path}: {source} (see output.kafka.journal.dir)")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// io_uring could not be set up.
    #[error("spill journal: io_uring setup failed: {0} (needs Linux ≥ 5.6 and io_uring not disabled by kernel.io_uring_disabled)")]
    Uring(io::Error),
    /// The journal holds what the other Kafka client wrote.
    #[error("spill journal {dir} holds records the {other} Kafka client wrote, which this client ({me}) cannot send: run with output.kafka.client = \"{other}\" until it is empty, or point output.kafka.journal.dir elsewhere")]
    OtherClient {
        /// The journal directory.
        dir: PathBuf,
        /// The client that wrote it.
        other: String,
        /// This client.
        me: &'static str,
    },
}

/// Claims the journal directory for a Kafka client (`librdkafka` or
/// `native`): their entries differ (records, whole batches), so a journal
/// one wrote and the other would read is refused while it holds anything.
/// The claim is the file `<dir>/client`.
pub fn claim(dir: &Path, client: &'static str) -> Result<(), JournalError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    let marker = dir.join("client");
    let owner = fs::read_to_string(&marker).unwrap_or_default();
    let owner = owner.trim();
    // Before the marker existed, only librdkafka wrote journals.
    let owner = if owner.is_empty() {
        "librdkafka"
    } else {
        owner
    };
    if owner != client {
        let has_segments = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".klj"));
        if has_segments {
            return Err(JournalError::OtherClient {
                dir: dir.to_path_buf(),
                other: owner.to_string(),
                me: client,
            });
        }
    }
    fs::write(&marker, client).map_err(io_err(&marker))
}

/// The budget is exhausted: the record was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalFull;

/// Journal counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records appended since open.
    pub appended: u64,
    /// Records found at open (left by an earlier run).
    pub recovered: u64,
    /// Records acknowledged (delivered) and so removed.
    pub acked: u64,
    /// Records lost to a damaged segment (CRC mismatch, failed write).
    pub lost: u64,
    /// Bytes cut from torn segment tails at open.
    pub torn_bytes: u64,
    /// Records waiting (appended or recovered, not yet acknowledged or lost).
    pub outstanding: u64,
    /// Bytes on disk (and in the write buffer).
    pub bytes: u64,
    /// Segments.
    pub segments: u64,
    /// Failed writes or fsyncs (each also logged).
    pub io_errors: u64,
}

struct Segment {
    id: u64,
    path: PathBuf,
    /// Bytes appended (including the not yet written buffer).
    len: u64,
    /// Bytes whose writes completed: readable.
    written: u64,
    records: u64,
    acked: Vec<u64>,
    acked_count: u64,
    sealed: bool,
}

impl Segment {
    fn is_acked(&self, i: u64) -> bool {
        self.acked
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn done(&self) -> bool {
        self.sealed && self.acked_count >= self.records
    }
}

struct InFlight {
    buf: Vec<u8>,
    _file: Rc<File>,
    seg_id: u64,
    end: u64,
    /// Records framed in `buf`.
    records: u64,
}

struct Cursor {
    seg_id: u64,
    offset: u64,
    index: u64,
}

impl Cursor {
    fn start_of(seg_id: u64) -> Cursor {
        Cursor {
            seg_id,
            offset: MAGIC.len() as u64,
            index: 0,
        }
    }
}

/// The journal (owned by the batcher core).
pub struct Journal {
    /// `<dir>/lock`, flocked while this journal is open.
    _lock: File,
    cfg: JournalConfig,
    segs: VecDeque<Segment>,
    tail: Option<Rc<File>>,
    /// Offset the next submitted write starts at (tail segment).
    submit_off: u64,
    buf: Vec<u8>,
    buf_records: u64,
    /// When the first record of `buf` was framed.
    buf_since: Instant,
    spare: Option<Vec<u8>>,
    inflight: Option<InFlight>,
    fsync_inflight: bool,
    dirty: bool,
    last_fsync: Instant,
    ring: IoUring,
    cursor: Cursor,
    reader: Option<(u64, File)>,
    rbuf: Vec<u8>,
    /// Segment offset of `rbuf[0]` and segment id it came from.
    rwin: (u64, u64),
    stats: JournalStats,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Journal {
    /// Opens (creating) the journal directory, checks every segment, cuts torn
    /// tails. Records found wait for replay.
    pub fn open(cfg: JournalConfig) -> Result<Journal, JournalError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.dir)
            .map_err(io_err(&cfg.dir))?;
        let lock = lock_dir(&cfg.dir)?;
        let mut ids = Vec::new();
        for e in fs::read_dir(&cfg.dir).map_err(io_err(&cfg.dir))? {
            let e = e.map_err(io_err(&cfg.dir))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(hex) = name.strip_suffix(".klj") {
                if let Ok(id) = u64::from_str_radix(hex, 16) {
                    ids.push(id);
                }
            } else if name.ends_with(".klj.tmp") {
                // An interrupted compaction: the original is still there.
                let _ = fs::remove_file(e.path());
            }
        }
        ids.sort_unstable();
        let mut j = Journal {
            _lock: lock,
            segs: VecDeque::new(),
            tail: None,
            submit_off: 0,
            buf: Vec::with_capacity(BUF_BYTES + 70_000),
            buf_records: 0,
            buf_since: Instant::now(),
            spare: Some(Vec::with_capacity(BUF_BYTES + 70_000)),
            inflight: None,
            fsync_inflight: false,
            dirty: false,
            last_fsync: Instant::now(),
            ring: IoUring::new(8).map_err(JournalError::Uring)?,
            cursor: Cursor {
                seg_id: 0,
                offset: MAGIC.len() as u64,
                index: 0,
            },
            reader: None,
            rbuf: Vec::with_capacity(BUF_BYTES + 70_000),
            rwin: (0, u64::MAX),
            stats: JournalStats::default(),
            cfg,
        };
        for id in ids {
            let path = j.seg_path(id);
            let (len, records, torn) = scan_segment(&path)?;
            if torn > 0 {
                tracing::warn!(segment = %path.display(), torn_bytes = torn, "spill journal: torn tail cut at the last whole record (a crash during a write)");
                j.stats.torn_bytes += torn;
            }
            if records == 0 {
                let _ = fs::remove_file(&path);
                continue;
            }
            j.stats.recovered += records;
            j.stats.outstanding += records;
            j.stats.bytes += len;
            j.segs.push_back(Segment {
                id,
                path,
                len,
                written: len,
                records,
                acked: Vec::new(),
                acked_count: 0,
                sealed: true,
            });
        }
        j.rewind();
        Ok(j)
    }

    fn seg_path(&self, id: u64) -> PathBuf {
        self.cfg.dir.join(format!("{id:016x}.klj"))
    }

    /// Counters.
    pub fn stats(&self) -> JournalStats {
        JournalStats {
            segments: self.segs.len() as u64,
            ..self.stats
        }
    }

    /// Records waiting for delivery.
    pub fn outstanding(&self) -> u64 {
        self.stats.outstanding
    }

    /// Appends one record. Refused (and nothing written) past the budget.
    pub fn append(&mut self, meta: &RecordMeta, payload: &[u8]) -> Result<(), JournalFull> {
        let rec = (4 + RECORD_HEADER_LEN + payload.len()) as u64;
        if self.stats.bytes + rec + MAGIC.len() as u64 > self.cfg.budget_bytes {
            return Err(JournalFull);
        }
        let need_new = match self.segs.back() {
            Some(s) => s.sealed || s.len + rec > self.cfg.segment_bytes,
            None => true,
        };
        if need_new && self.roll().is_err() {
            return Err(JournalFull);
        }
        let header = meta.encode(payload.len());
        let mut h = crc32fast::Hasher::new();
        h.update(&header);
        h.update(payload);
        if self.buf.is_empty() {
            self.buf_since = Instant::now();
        }
        self.buf.extend_from_slice(&h.finalize().to_le_bytes());
        self.buf.extend_from_slice(&header);
        self.buf.extend_from_slice(payload);
        self.buf_records += 1;
        let seg = self.segs.back_mut().expect("tail segment");
        seg.len += rec;
        seg.records += 1;
        self.stats.bytes += rec;
        self.stats.appended += 1;
        self.stats.outstanding += 1;
        if self.buf.len() >= BUF_BYTES {
            self.submit();
        }
        Ok(())
    }

    /// Seals the tail and begins a new segment.
    fn roll(&mut self) -> Result<(), ()> {
        self.seal_tail();
        let id = self.segs.back().map_or(FIRST_ID, |s| s.id + 1);
        let path = self.seg_path(id);
        let file = match OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .and_then(|f| f.write_all_at(MAGIC, 0).map(|()| f))
        {
            Ok(f) => f,
            Err(e) => {
                self.stats.io_errors += 1;
                tracing::error!(segment = %path.display(), error = %e, "spill journal: cannot create a segment; messages are dropped as journal_full");
                return Err(());
            }
        };
        self.tail = Some(Rc::new(file));
        self.submit_off = MAGIC.len() as u64;
        self.stats.bytes += MAGIC.len() as u64;
        self.segs.push_back(Segment {
            id,
            path,
            len: MAGIC.len() as u64,
            written: MAGIC.len() as u64,
            records: 0,
            acked: Vec::new(),
            acked_count: 0,
            sealed: false,
        });
        Ok(())
    }

    fn seal_tail(&mut self) {
        if self.tail.is_none() {
            return;
        }
        self.submit();
        self.wait_idle();
        if self.cfg.fsync != Fsync::Never && self.dirty {
            self.fsync_now();
        }
        self.tail = None;
        if let Some(s) = self.segs.back_mut() {
            s.sealed = true;
        }
        self.delete_done();
    }

    /// Submits the filled buffer as one io_uring write (waiting for the previous
    /// write first: at most one in flight).
    pub fn submit(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if self.inflight.is_some() {
            self.wait_idle();
        }
        let Some(file) = self.tail.clone() else {
            return;
        };
        let seg_id = self.segs.back().map_or(0, |s| s.id);
        let spare = self
            .spare
            .take()
            .unwrap_or_else(|| Vec::with_capacity(BUF_BYTES + 70_000));
        let buf = std::mem::replace(&mut self.buf, spare);
        let start = self.submit_off;
        let end = start + buf.len() as u64;
        let write = opcode::Write::new(types::Fd(file.as_raw_fd()), buf.as_ptr(), buf.len() as u32)
            .offset(start)
            .build()
            .user_data(1);
        let always = self.cfg.fsync == Fsync::Always;
        let write = if always {
            write.flags(io_uring::squeue::Flags::IO_LINK)
        } else {
            write
        };
        // SAFETY: the buffer and the file stay alive in `inflight` until the
        // completion is reaped.
        let pushed = unsafe {
            let mut sq = self.ring.submission();
            let ok = sq.push(&write).is_ok();
            if ok && always {
                let f = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
                    .user_data(2);
                self.fsync_inflight = sq.push(&f).is_ok();
            }
            ok
        };
        if !pushed {
            // No room in the submission queue (never expected: one write in
            // flight): write synchronously instead.
            let records = self.buf_records;
            let w = InFlight {
                buf,
                _file: file,
                seg_id,
                end,
                records,
            };
            self.buf_records = 0;
            self.submit_off = end;
            if w._file.write_all_at(&w.buf, start).is_ok() {
                if let Some(s) = self.segs.iter_mut().find(|s| s.id == seg_id) {
                    s.written = end;
                }
            } else {
                self.write_failed(&w, -libc::EIO);
            }
            let mut b = w.buf;
            b.clear();
            self.spare = Some(b);
            return;
        }
        self.inflight = Some(InFlight {
            buf,
            _file: file,
            seg_id,
            end,
            records: self.buf_records,
        });
        self.buf_records = 0;
        self.submit_off = end;
        self.dirty = !always;
        if let Err(e) = self.ring.submit() {
            tracing::error!(error = %e, "spill journal: io_uring submit failed");
        }
    }

    /// Reaps completions without blocking; writes a partly filled buffer once
    /// it is older than the fsync period (so a quiet outage does not keep
    /// records in memory for hours); fsyncs on the interval policy.
    pub fn poll(&mut self) {
        self.reap();
        if !self.buf.is_empty() && self.inflight.is_none() {
            let max_age = match self.cfg.fsync {
                Fsync::Always => Duration::ZERO,
                Fsync::Interval(d) => d,
                Fsync::Segment | Fsync::Never => Duration::from_secs(1),
            };
            if self.buf_since.elapsed() >= max_age {
                self.submit();
            }
        }
        if let Fsync::Interval(every) = self.cfg.fsync {
            if self.dirty
                && !self.fsync_inflight
                && self.inflight.is_none()
                && self.last_fsync.elapsed() >= every
            {
                if let Some(file) = &self.tail {
                    let f = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
                        .flags(types::FsyncFlags::DATASYNC)
                        .build()
                        .user_data(2);
                    // SAFETY: the fd belongs to `tail`, which is only dropped after
                    // wait_idle().
                    unsafe {
                        let _ = self.ring.submission().push(&f);
                    }
                    let _ = self.ring.submit();
                    self.fsync_inflight = true;
                    self.dirty = false;
                    self.last_fsync = Instant::now();
                }
            }
        }
    }

    fn reap(&mut self) {
        let mut results = [(0u64, 0i32); 8];
        let mut n = 0;
        for cqe in self.ring.completion() {
            if n < results.len() {
                results[n] = (cqe.user_data(), cqe.result());
                n += 1;
            }
        }
        for &(ud, res) in &results[..n] {
            match ud {
                1 => {
                    let Some(w) = self.inflight.take() else {
                        continue;
                    };
                    let want = w.buf.len();
                    let start = w.end - want as u64;
                    let ok = if res >= 0 && res as usize == want {
                        true
                    } else {
                        // Short or failed write: finish it synchronously.
                        let done = res.max(0) as usize;
                        w._file
                            .write_all_at(&w.buf[done..], start + done as u64)
                            .is_ok()
                    };
                    if ok {
                        if let Some(s) = self.segs.iter_mut().find(|s| s.id == w.seg_id) {
                            s.written = w.end;
                        }
                    } else {
                        self.write_failed(&w, res);
                    }
                    let mut buf = w.buf;
                    buf.clear();
                    self.spare = Some(buf);
                }
                _ => {
                    self.fsync_inflight = false;
                    if res < 0 {
                        self.stats.io_errors += 1;
                        tracing::error!(error = %io::Error::from_raw_os_error(-res), "spill journal: fsync failed");
                    }
                }
            }
        }
    }

    /// A write that failed twice (io_uring, then synchronously): its records,
    /// and those still buffered behind them, are lost — counted as journal
    /// damage and logged. The segment ends at its last good record and is
    /// sealed; the next append begins a new segment, so the replay never
    /// stalls at the gap.
    fn write_failed(&mut self, w: &InFlight, res: i32) {
        let buffered = self.buf_records;
        let lost = w.records + buffered;
        self.stats.io_errors += 1;
        self.stats.lost += lost;
        self.stats.outstanding -= lost;
        tracing::error!(error = %io::Error::from_raw_os_error(-res.min(-1)), records = lost, "spill journal: write failed twice: these records are LOST (counted as journal damage)");
        let start = w.end - w.buf.len() as u64;
        if let Some(s) = self.segs.iter_mut().find(|s| s.id == w.seg_id) {
            self.stats.bytes -= s.len.saturating_sub(start);
            s.records = s.records.saturating_sub(lost);
            let records = s.records;
            s.acked_count = (0..records).filter(|&i| s.is_acked(i)).count() as u64;
            s.len = start;
            s.written = start;
            s.sealed = true;
        }
        self.buf.clear();
        self.buf_records = 0;
        self.tail = None;
        self.delete_done();
    }

    /// Waits for every submitted operation. An operation is never abandoned
    /// while the kernel may still use its buffer: on repeated failure of the
    /// wait itself the buffer is leaked rather than freed.
    fn wait_idle(&mut self) {
        let mut failures = 0;
        while self.inflight.is_some() || self.fsync_inflight {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.kind() != io::ErrorKind::Interrupted {
                    failures += 1;
                    if failures > 100 {
                        tracing::error!(error = %e, "spill journal: io_uring wait keeps failing; leaking the write buffer");
                        if let Some(w) = self.inflight.take() {
                            std::mem::forget(w);
                        }
                        self.fsync_inflight = false;
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            self.reap();
        }
    }

    fn fsync_now(&mut self) {
        if let Some(file) = &self.tail {
            if let Err(e) = file.sync_data() {
                self.stats.io_errors += 1;
                tracing::error!(error = %e, "spill journal: fsync failed");
            }
        }
        self.dirty = false;
        self.last_fsync = Instant::now();
    }

    /// The next record to replay (acknowledged ones skipped), with its token for
    /// [`Journal::ack`]. `None`: nothing (yet) readable.
    pub fn next_record(&mut self) -> Option<(u64, RecordMeta, &[u8])> {
        loop {
            let pos = self.segs.iter().position(|s| s.id >= self.cursor.seg_id)?;
            let (seg_id, written, records, sealed) = {
                let s = &self.segs[pos];
                (s.id, s.written, s.records, s.sealed)
            };
            if seg_id != self.cursor.seg_id {
                self.cursor = Cursor::start_of(seg_id);
            }
            if self.cursor.index >= records {
                if sealed || pos + 1 < self.segs.len() {
                    self.cursor = Cursor::start_of(seg_id + 1);
                    continue;
                }
                return None;
            }
            let off = self.cursor.offset;
            if off + 4 + RECORD_HEADER_LEN as u64 > written {
                // Not written yet: push the buffer out; the record will be
                // readable once the write completes.
                if self.inflight.is_none() && !self.buf.is_empty() {
                    self.submit();
                }
                self.reap();
                if self.segs[pos].written > written {
                    continue;
                }
                return None;
            }
            match self.read_at(seg_id, off, written) {
                Ok(Some((meta, plen))) => {
                    let idx = self.cursor.index;
                    let total = 4 + RECORD_HEADER_LEN as u64 + plen as u64;
                    self.cursor.offset += total;
                    self.cursor.index += 1;
                    if self.segs[pos].is_acked(idx) {
                        continue;
                    }
                    let start = (off - self.rwin.0) as usize + 4 + RECORD_HEADER_LEN;
                    let token = (seg_id << INDEX_BITS) | idx;
                    return Some((token, meta, &self.rbuf[start..start + plen]));
                }
                Ok(None) => return None,
                Err(()) => {
                    // Damaged: everything from here in this segment is lost.
                    let more = pos + 1 < self.segs.len();
                    let is_tail = !more && self.tail.is_some();
                    let s = &mut self.segs[pos];
                    let mut lost = 0;
                    for i in self.cursor.index..s.records {
                        if !s.is_acked(i) {
                            lost += 1;
                        }
                    }
                    tracing::error!(segment = %s.path.display(), offset = off, lost, "spill journal: damaged record (CRC mismatch or unreadable); the rest of the segment is lost");
                    self.stats.lost += lost;
                    self.stats.outstanding -= lost;
                    s.records = self.cursor.index;
                    let records = s.records;
                    s.acked_count = (0..records).filter(|&i| s.is_acked(i)).count() as u64;
                    s.sealed = true;
                    if is_tail {
                        // Nothing more goes after the damage: buffered records
                        // (counted lost above) are dropped, the next append
                        // begins a new segment.
                        self.tail = None;
                        self.buf.clear();
                        self.buf_records = 0;
                    }
                    self.delete_done();
                    self.cursor = Cursor::start_of(seg_id + 1);
                }
            }
        }
    }

    /// Makes the record at `off` available in `rbuf`; returns its header and
    /// payload length, `Ok(None)` if not fully written yet, `Err` if damaged.
    fn read_at(
        &mut self,
        seg_id: u64,
        off: u64,
        written: u64,
    ) -> Result<Option<(RecordMeta, usize)>, ()> {
        let in_window = |j: &Journal, end: u64| {
            j.rwin.1 == seg_id && off >= j.rwin.0 && end <= j.rwin.0 + j.rbuf.len() as u64
        };
        let hdr_end = off + 4 + RECORD_HEADER_LEN as u64;
        if !in_window(self, hdr_end) {
            self.fill(seg_id, off, written).map_err(|_| ())?;
            if !in_window(self, hdr_end) {
                return Ok(None);
            }
        }
        let s = (off - self.rwin.0) as usize;
        let mut h = [0u8; RECORD_HEADER_LEN];
        h.copy_from_slice(&self.rbuf[s + 4..s + 4 + RECORD_HEADER_LEN]);
        let (meta, plen) = RecordMeta::decode(&h);
        let total = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if total != RECORD_HEADER_LEN + plen || plen > 65_535 {
            return Err(());
        }
        let end = hdr_end + plen as u64;
        if end > written {
            return Ok(None);
        }
        if !in_window(self, end) {
            self.fill(seg_id, off, written).map_err(|_| ())?;
            if !in_window(self, end) {
                return Err(());
            }
        }
        let s = (off - self.rwin.0) as usize;
        let crc = u32::from_le_bytes(self.rbuf[s..s + 4].try_into().expect("4 bytes"));
        let body = &self.rbuf[s + 4..s + 4 + RECORD_HEADER_LEN + plen];
        if crc32fast::hash(body) != crc {
            return Err(());
        }
        Ok(Some((meta, plen)))
    }

    fn fill(&mut self, seg_id: u64, off: u64, written: u64) -> io::Result<()> {
        if self.reader.as_ref().map(|(id, _)| *id) != Some(seg_id) {
            let path = self.seg_path(seg_id);
            self.reader = Some((seg_id, File::open(path)?));
        }
        let (_, f) = self.reader.as_ref().expect("reader");
        let want = ((written - off) as usize).min(BUF_BYTES + 70_000);
        self.rbuf.resize(want, 0);
        let mut got = 0;
        while got < want {
            let n = f.read_at(&mut self.rbuf[got..], off + got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        self.rbuf.truncate(got);
        self.rwin = (off, seg_id);
        Ok(())
    }

    /// Acknowledges a replayed record (its delivery report said delivered).
    pub fn ack(&mut self, token: u64) {
        let id = token >> INDEX_BITS;
        let idx = token & ((1 << INDEX_BITS) - 1);
        let Some(s) = self.segs.iter_mut().find(|s| s.id == id) else {
            return;
        };
        if idx >= s.records || s.is_acked(idx) {
            return;
        }
        let w = (idx / 64) as usize;
        if s.acked.len() <= w {
            s.acked.resize(w + 1, 0);
        }
        s.acked[w] |= 1 << (idx % 64);
        s.acked_count += 1;
        self.stats.acked += 1;
        self.stats.outstanding -= 1;
        if s.done() {
            self.delete_done();
        }
        if self.stats.outstanding == 0 {
            self.reset_empty();
        }
    }

    /// Replays from the first unacknowledged record again (after failed
    /// deliveries of replayed records).
    pub fn rewind(&mut self) {
        self.cursor = Cursor {
            seg_id: self.segs.front().map_or(0, |s| s.id),
            offset: MAGIC.len() as u64,
            index: 0,
        };
    }

    fn delete_done(&mut self) {
        while let Some(pos) = self.segs.iter().position(Segment::done) {
            let s = self.segs.remove(pos).expect("segment");
            self.stats.bytes -= s.len;
            if let Err(e) = fs::remove_file(&s.path) {
                tracing::warn!(segment = %s.path.display(), error = %e, "spill journal: cannot delete a delivered segment");
            }
            if self.reader.as_ref().is_some_and(|(id, _)| *id == s.id) {
                self.reader = None;
                self.rwin = (0, u64::MAX);
            }
        }
    }

    /// Everything delivered: drop the tail segment too.
    fn reset_empty(&mut self) {
        if !self.buf.is_empty() || self.stats.outstanding != 0 {
            return;
        }
        self.wait_idle();
        self.tail = None;
        for s in self.segs.drain(..) {
            let _ = fs::remove_file(&s.path);
        }
        self.stats.bytes = 0;
        self.reader = None;
        self.rwin = (0, u64::MAX);
        self.rewind();
    }

    /// Stores records *before* everything in the journal (messages taken back
    /// from librdkafka at shutdown, oldest first), synchronously.
    pub fn prepend(&mut self, records: &[(RecordMeta, Vec<u8>)]) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        let id = self.segs.front().map_or(FIRST_ID, |s| s.id) - 1;
        let path = self.seg_path(id);
        let mut data = MAGIC.to_vec();
        for (meta, payload) in records {
            frame(&mut data, meta, payload);
        }
        write_file_synced(&path, &data)?;
        let n = records.len() as u64;
        self.stats.appended += n;
        self.stats.outstanding += n;
        self.stats.bytes += data.len() as u64;
        self.segs.push_front(Segment {
            id,
            path,
            len: data.len() as u64,
            written: data.len() as u64,
            records: n,
            acked: Vec::new(),
            acked_count: 0,
            sealed: true,
        });
        self.rewind();
        Ok(())
    }

    /// Writes everything out, fsyncs, and rewrites partially acknowledged
    /// segments without their delivered records. The journal stays usable.
    pub fn close(&mut self) -> Result<(), JournalError> {
        self.seal_tail();
        self.wait_idle();
        self.reader = None;
        self.rwin = (0, u64::MAX);
        for i in 0..self.segs.len() {
            if self.segs[i].acked_count == 0 {
                continue;
            }
            let (id, path) = (self.segs[i].id, self.segs[i].path.clone());
            let data = fs::read(&path).map_err(io_err(&path))?;
            let mut out = MAGIC.to_vec();
            let mut off = MAGIC.len();
            let mut idx = 0u64;
            let mut kept = 0u64;
            while let Some(len) = whole_record(&data[off..]) {
                if !self.segs[i].is_acked(idx) {
                    out.extend_from_slice(&data[off..off + len]);
                    kept += 1;
                }
                off += len;
                idx += 1;
            }
            let tmp = self.cfg.dir.join(format!("{id:016x}.klj.tmp"));
            write_file_synced(&tmp, &out)?;
            fs::rename(&tmp, &path).map_err(io_err(&path))?;
            let s = &mut self.segs[i];
            self.stats.bytes = self.stats.bytes - s.len + out.len() as u64;
            s.len = out.len() as u64;
            s.written = s.len;
            s.records = kept;
            s.acked.clear();
            s.acked_count = 0;
        }
        self.delete_done();
        if let Ok(d) = File::open(&self.cfg.dir) {
            let _ = d.sync_all();
        }
        self.rewind();
        Ok(())
    }
}

/// One journal, one klais: an exclusive flock on `<dir>/lock`.
impl Drop for Journal {
    /// Nothing buffered is left behind and no buffer is freed under the
    /// kernel: the last buffer is written and every operation awaited.
    fn drop(&mut self) {
        self.submit();
        self.wait_idle();
    }
}

fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    // SAFETY: flock on a valid descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(JournalError::Io {
            path,
            source: io::Error::other(
                "another klais holds this journal; give each instance its own output.kafka.journal.dir",
            ),
        });
    }
    Ok(f)
}

fn frame(out: &mut Vec<u8>, meta: &RecordMeta, payload: &[u8]) {
    let header = meta.encode(payload.len());
    let mut h = crc32fast::Hasher::new();
    h.update(&header);
    h.update(payload);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

fn write_file_synced(path: &Path, data: &[u8]) -> Result<(), JournalError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all_at(data, 0).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Length of the whole, CRC-valid record at the start of `data`, if any.
fn whole_record(data: &[u8]) -> Option<usize> {
    if data.len() < 4 + RECORD_HEADER_LEN {
        return None;
    }
    let mut h = [0u8; RECORD_HEADER_LEN];
    h.copy_from_slice(&data[4..4 + RECORD_HEADER_LEN]);
    let (_, plen) = RecordMeta::decode(&h);
    let total = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if total != RECORD_HEADER_LEN + plen || data.len() < 4 + total {
        return None;
    }
    let crc = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    (crc32fast::hash(&data[4..4 + total]) == crc).then_some(4 + total)
}

/// Checks a segment: (valid length, records, torn bytes cut).
fn scan_segment(path: &Path) -> Result<(u64, u64, u64), JournalError> {
    let data = fs::read(path).map_err(io_err(path))?;
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        tracing::error!(segment = %path.display(), "spill journal: not a klais segment (bad magic); moved aside as .bad");
        let _ = fs::rename(path, path.with_extension("bad"));
        return Ok((0, 0, 0));
    }
    let mut off = MAGIC.len();
    let mut records = 0;
    while let Some(len) = whole_record(&data[off..]) {
        off += len;
        records += 1;
    }
    let torn = (data.len() - off) as u64;
    if torn > 0 {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        f.set_len(off as u64).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
    }
    Ok((off as u64, records, torn))
}

/// Reads every record of a journal directory in replay order without changing
/// anything (for `klais journal` and tests).
pub fn read_all(dir: &Path) -> io::Result<Vec<(RecordMeta, Vec<u8>)>> {
    let mut ids: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            u64::from_str_radix(name.to_str()?.strip_suffix(".klj")?, 16).ok()
        })
        .collect();
    ids.sort_unstable();
    let mut out = Vec::new();
    for id in ids {
        let data = fs::read(dir.join(format!("{id:016x}.klj")))?;
        if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            continue;
        }
        let mut off = MAGIC.len();
        while let Some(len) = whole_record(&data[off..]) {
            let mut h = [0u8; RECORD_HEADER_LEN];
            h.copy_from_slice(&data[off + 4..off + 4 + RECORD_HEADER_LEN]);
            let (meta, plen) = RecordMeta::decode(&h);
            let p = off + 4 + RECORD_HEADER_LEN;
            out.push((meta, data[p..p + plen].to_vec()));
            off += len;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_one_client_wrote_is_refused_to_the_other_until_empty() {
        let d = tempfile::tempdir().unwrap();
        claim(d.path(), "native").unwrap();
        {
            let mut j = Journal::open(cfg(d.path(), 1 << 20, 1 << 30)).unwrap();
            j.append(&RecordMeta::default(), b"batch").unwrap();
            j.close().unwrap();
        }
        let e = claim(d.path(), "librdkafka").unwrap_err();
        assert!(
            e.to_string().contains("the native Kafka client wrote"),
            "{e}"
        );
        claim(d.path(), "native").unwrap();
        // Empty: either client may take it.
        for e in std::fs::read_dir(d.path()).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".klj") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        claim(d.path(), "librdkafka").unwrap();
    }

    fn cfg(dir: &Path, seg: u64, budget: u64) -> JournalConfig {
        JournalConfig {
            dir: dir.to_path_buf(),
            segment_bytes: seg,
            budget_bytes: budget,
            fsync: Fsync::Interval(Duration::from_millis(1)),
        }
    }

    fn meta(dev: u8, seq: u32) -> RecordMeta {
        let mut raw_id = [0u8; 16];
        raw_id[0] = b'a' + dev;
        RecordMeta {
            raw_id,
            sequence: seq,
            recv_ts_ns: u64::from(seq) * 10,
            shard: 0,
            seq_event: 0,
            flags: 0,
        }
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "klj"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_second_journal_on_the_same_directory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let _j = Journal::open(cfg(d.path(), 1 << 20, 64 << 20)).unwrap();
        let e = Journal::open(cfg(d.path(), 1 << 20, 64 << 20))
            .err()
            .unwrap();
        assert!(e.to_string().contains("another klais"), "{e}");
    }

    fn drain(j: &mut Journal) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        loop {
            j.poll();
            let next = j.next_record().map(|(t, m, _)| (t, m.sequence));
            match next {
                Some(x) => out.push(x),
                None if j.inflight.is_none() && j.buf.is_empty() => break,
                None => j.wait_idle(),
            }
        }
        out
    }

    #[test]
    fn records_replay_in_order_across_segments_and_acks_delete_them() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(cfg(d.path(), 1 << 20, 64 << 20)).unwrap();
        let payload = vec![b'x'; 200];
        for s in 0..20_000 {
            j.append(&meta((s % 7) as u8, s), &payload).unwrap();
        }
        assert!(j.stats().segments >= 4, "{:?}", j.stats());
        let got = drain(&mut j);
        assert_eq!(got.len(), 20_000);
        assert!(got.windows(2).all(|w| w[0].1 + 1 == w[1].1));
        for (t, _) in &got {
            j.ack(*t);
        }
        assert_eq!(j.outstanding(), 0);
        assert_eq!(j.stats().bytes, 0);
        assert!(segment_files(d.path()).is_empty());
    }

    #[test]
    fn a_restart_replays_only_unacknowledged_records_and_prepended_ones_first() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(cfg(d.path(), 1 << 20, 64 << 20)).unwrap();
            for s in 100..200 {
                j.append(&meta(1, s), b"{}").unwrap();
            }
            let got = drain(&mut j);
            for (t, _) in &got[..30] {
                j.ack(*t);
            }
            j.prepend(&[(meta(1, 98), b"{}".to_vec()), (meta(1, 99), b"{}".to_vec())])
                .unwrap();
            j.close().unwrap();
        }
        let mut j = Journal::open(cfg(d.path(), 1 << 20, 64 << 20)).unwrap();
        assert_eq!(j.stats().recovered, 72);
        let seqs: Vec<u32> = drain(&mut j).into_iter().map(|(_, s)| s).collect();
        let want: Vec<u32> = [98, 99].into_iter().chain(130..200).collect();
        assert_eq!(seqs, want);
        assert_eq!(read_all(d.path()).unwrap().len(), 72);
    }

    #[test]
    fn rewind_skips_acknowledged_records() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(cfg(d.path(), 1 << 20, 64 << 20)).unwrap();
        for s in 0..10 {
            j.append(&meta(0, s), b"1").unwrap();
        }
        let got = drain(&mut j);
        j.ack(got[0].0);
        j.ack(got[5].0);
        j.rewind();
        let again: Vec<u32> = drain(&mut j).into_iter().map(|(_, s)| s).collect();
        assert_eq!(again, vec![1, 2, 3, 4, 6, 7, 8, 9]);
    }

    #[test]
    fn the_budget_refuses_appends_and_a_torn_tail_is_cut() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(cfg(d.path(), 1 << 20, 2 << 20)).unwrap();
        let payload = vec![b'y'; 1000];
        let mut stored = 0;
        while j.append(&meta(0, stored), &payload).is_ok() {
            stored += 1;
        }
        assert!(stored > 1000 && stored < 2200, "{stored}");
        j.close().unwrap();
        drop(j);
        // A crash mid-write: half a record at the end of the last segment.
        let last = segment_files(d.path());
        let path = last.last().unwrap();
        let mut data = fs::read(path).unwrap();
        data.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7]);
        fs::write(path, &data).unwrap();
        let j = Journal::open(cfg(d.path(), 1 << 20, 2 << 20)).unwrap();
        assert_eq!(j.stats().recovered, u64::from(stored));
        assert_eq!(j.stats().torn_bytes, 7);
    }

    #[test]
    fn a_corrupted_record_is_counted_lost_not_delivered() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(cfg(d.path(), 1 << 20, 64 << 20)).unwrap();
        for s in 0..10 {
            j.append(&meta(0, s), b"abcdef").unwrap();
        }
        j.close().unwrap();
        let path = segment_files(d.path())[0].clone();
        let mut data = fs::read(&path).unwrap();
        let rec = 4 + RECORD_HEADER_LEN + 6;
        data[MAGIC.len() + 5 * rec + 4 + RECORD_HEADER_LEN] ^= 0xff; // payload of record 5
        fs::write(&path, &data).unwrap();
        drop(j);
        // Opening cuts at the damaged record (it looks like a torn tail).
        let mut j = Journal::open(cfg(d.path(), 1 << 20, 64 << 20)).unwrap();
        assert_eq!(j.stats().recovered, 5);
        assert_eq!(drain(&mut j).len(), 5);
    }
}
