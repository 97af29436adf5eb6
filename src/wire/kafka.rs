//! Kafka's own wire format for what klais produces: RecordBatch v2 (the
//! on-disk and on-wire unit of a partition's log), the Java client's murmur2
//! partitioner, and the codecs a v2 batch may be compressed with.
//!
//! Plain encoding, no I/O, no allocation per record: a [`BatchWriter`] appends
//! records into one buffer it owns (reused batch after batch), and
//! [`BatchWriter::finish`] compresses the records section in place through a
//! [`Codec`] whose scratch space is reused too, fills the 61-byte header and
//! computes the CRC-32C. The shards call it for every accepted message; the
//! output core only moves the finished bytes ([`stamp`] sets the idempotent
//! producer's id, epoch and base sequence in O(log n) without touching the
//! records).
//!
//! Layout (all integers big-endian; `varint` = zigzag LEB128):
//!
//! ```text
//! batch:  baseOffset i64 @0 | batchLength i32 @8 | partitionLeaderEpoch i32 @12 |
//!         magic i8 = 2 @16 | crc u32 @17 (CRC-32C of @21..end) | attributes i16 @21 |
//!         lastOffsetDelta i32 @23 | baseTimestamp i64 @27 | maxTimestamp i64 @35 |
//!         producerId i64 @43 | producerEpoch i16 @51 | baseSequence i32 @53 |
//!         recordsCount i32 @57 | records @61 (compressed as one block when the
//!         codec is not `none`)
//! record: length varint | attributes i8 | timestampDelta varlong | offsetDelta varint |
//!         keyLength varint | key | valueLength varint | value |
//!         headerCount varint | (keyLength varint | key | valueLength varint | value)*
//! ```

use std::io::Write;

/// Bytes of the RecordBatch v2 header (the records start here).
pub const BATCH_HEADER_LEN: usize = 61;
/// Offset of the CRC field.
const CRC_AT: usize = 17;
/// The CRC covers the batch from the attributes on.
const CRC_FROM: usize = 21;
/// Offset of producerId (then producerEpoch, baseSequence: 14 bytes).
const PRODUCER_AT: usize = 43;

/// A v2 batch's compression codec (attributes bits 0–2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Records stored as they are.
    None = 0,
    /// A gzip member (RFC 1952).
    Gzip = 1,
    /// Raw snappy (what librdkafka writes; every consumer also reads it).
    Snappy = 2,
    /// An LZ4 frame (independent 64 KiB blocks, no content checksum).
    Lz4 = 3,
    /// A zstd frame.
    Zstd = 4,
}

impl Compression {
    /// From `output.kafka.compression` (`none`, `gzip`, `snappy`, `lz4`,
    /// `zstd`).
    pub fn from_name(name: &str) -> Option<Compression> {
        Some(match name {
            "none" => Compression::None,
            "gzip" => Compression::Gzip,
            "snappy" => Compression::Snappy,
            "lz4" => Compression::Lz4,
            "zstd" => Compression::Zstd,
            _ => return None,
        })
    }

    /// The codec's name as configured.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// The Java client's murmur2 (Kafka `Utils.murmur2`), seed 0x9747b28c.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client's default partitioner (and librdkafka's
/// `murmur2_random`) picks for a non-empty key: `(murmur2(key) & 0x7fffffff)
/// % partitions`.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) as u32 & 0x7fff_ffff) % partitions.max(1)
}

/// `x % d` for a divisor fixed ahead (the partition count) with two
/// multiplications instead of a division (Lemire, Kaser and Kurz, "Faster
/// remainder by direct computation", 2019): exact for every 32-bit `x` and
/// `d`. A shard computes a record's partition this way.
#[derive(Debug, Clone, Copy)]
pub struct FastMod {
    d: u32,
    m: u64,
}

impl FastMod {
    /// For divisor `d` (0 is taken as 1).
    pub fn new(d: u32) -> FastMod {
        let d = d.max(1);
        FastMod {
            d,
            m: (u64::MAX / u64::from(d)).wrapping_add(1),
        }
    }

    /// `x % d`.
    #[inline]
    pub fn rem(&self, x: u32) -> u32 {
        let low = self.m.wrapping_mul(u64::from(x));
        ((u128::from(low) * u128::from(self.d)) >> 64) as u32
    }

    /// [`partition_for`] with this divisor as the partition count.
    #[inline]
    pub fn partition(&self, key: &[u8]) -> u32 {
        self.rem(murmur2(key) as u32 & 0x7fff_ffff)
    }
}

/// Bytes of `v` as a zigzag varint.
#[inline]
fn varint_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    // 7 bits per byte; 0 still takes one byte.
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

/// Writes `b`'s length (varint) and `b` at `out[at..]`; returns the bytes
/// written.
#[inline]
fn put_bytes_at(out: &mut [u8], at: usize, b: &[u8]) -> usize {
    let n = put_varint_at(out, at, b.len() as i64);
    out[at + n..at + n + b.len()].copy_from_slice(b);
    n + b.len()
}

/// Writes `v` as a zigzag varint at `out[at..]`; returns its length.
#[inline]
fn put_varint_at(out: &mut [u8], at: usize, v: i64) -> usize {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut i = at;
    while z >= 0x80 {
        out[i] = (z as u8) | 0x80;
        z >>= 7;
        i += 1;
    }
    out[i] = z as u8;
    i + 1 - at
}

#[cfg(test)]
fn put_varint(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

/// Reads one zigzag varint at `*at` (decoders and tests); None when the
/// bytes end first or it runs past 10 bytes.
pub fn get_varint(buf: &[u8], at: &mut usize) -> Option<i64> {
    let mut z: u64 = 0;
    for shift in (0..70).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        z |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some((z >> 1) as i64 ^ -((z & 1) as i64));
        }
    }
    None
}

/// One batch being written: records appended into a buffer that starts with
/// room for the header.
#[derive(Debug)]
pub struct BatchWriter {
    /// `buf[..end]` is the batch so far; `buf[end..]` bytes written before
    /// (a reused buffer's) that are overwritten, so a record is written
    /// without zeroing its room first.
    buf: Vec<u8>,
    end: usize,
    count: u32,
    base_ts: i64,
    max_ts: i64,
}

impl BatchWriter {
    /// A writer over `buf` (what it holds is overwritten; its capacity is
    /// kept).
    pub fn new(mut buf: Vec<u8>) -> BatchWriter {
        if buf.len() < BATCH_HEADER_LEN {
            buf.resize(BATCH_HEADER_LEN, 0);
        }
        BatchWriter {
            buf,
            end: BATCH_HEADER_LEN,
            count: 0,
            base_ts: 0,
            max_ts: 0,
        }
    }

    /// Records so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Bytes so far (header included, uncompressed).
    pub fn len(&self) -> usize {
        self.end
    }

    /// True before the first record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// At least the bytes a record with these parts takes (cheap; the
    /// exact figure is [`BatchWriter::record_len`]).
    #[inline]
    pub fn bound(key: &[u8], value: &[u8], headers: &[(&[u8], &[u8])]) -> usize {
        let mut n = 40 + key.len() + value.len();
        for (k, v) in headers {
            n += 10 + k.len() + v.len();
        }
        n
    }

    /// Bytes the next record with these parts takes (its length prefix
    /// included).
    pub fn record_len(
        ts_delta: i64,
        key: &[u8],
        value: &[u8],
        headers: &[(&[u8], &[u8])],
    ) -> usize {
        let body = Self::body_len(ts_delta, 0, key, value, headers);
        varint_len(body as i64) + body
    }

    fn body_len(
        ts_delta: i64,
        offset_delta: u32,
        key: &[u8],
        value: &[u8],
        headers: &[(&[u8], &[u8])],
    ) -> usize {
        let mut n = 1
            + varint_len(ts_delta)
            + varint_len(i64::from(offset_delta))
            + varint_len(key.len() as i64)
            + key.len()
            + varint_len(value.len() as i64)
            + value.len()
            + varint_len(headers.len() as i64);
        for (k, v) in headers {
            n += varint_len(k.len() as i64) + k.len() + varint_len(v.len() as i64) + v.len();
        }
        n
    }

    /// Appends one record: timestamp (ms), key, value, headers in order.
    ///
    /// One pass: the record is written after a 2-byte length (a record of
    /// 128–16,383 bytes, every klais record) into room reserved once, and
    /// moved only in the rare case its length takes another size.
    #[inline]
    pub fn push(&mut self, ts_ms: i64, key: &[u8], value: &[u8], headers: &[(&[u8], &[u8])]) {
        if self.count == 0 {
            self.base_ts = ts_ms;
            self.max_ts = ts_ms;
        }
        self.max_ts = self.max_ts.max(ts_ms);
        let ts_delta = ts_ms - self.base_ts;
        let bound = Self::bound(key, value, headers);
        let at = self.end;
        if self.buf.len() < at + bound {
            self.buf.resize(at + bound, 0);
        }
        let out = &mut self.buf[at..at + bound];
        let mut w = 2;
        w += put_varint_at(out, w, 0); // attributes (one zero byte)
        w += put_varint_at(out, w, ts_delta);
        w += put_varint_at(out, w, i64::from(self.count));
        w += put_bytes_at(out, w, key);
        w += put_bytes_at(out, w, value);
        w += put_varint_at(out, w, headers.len() as i64);
        for (k, v) in headers {
            w += put_bytes_at(out, w, k);
            w += put_bytes_at(out, w, v);
        }
        let body = w - 2;
        let len_bytes = varint_len(body as i64);
        if len_bytes != 2 {
            // Under 128 or over 16,383 bytes: move the body to fit.
            out.copy_within(2..w, len_bytes);
        }
        put_varint_at(out, 0, body as i64);
        self.end = at + len_bytes + body;
        self.count += 1;
    }

    /// Closes the batch: compresses the records with `codec`, writes the
    /// header (no producer id: see [`stamp`]) and the CRC. Returns the whole
    /// batch's bytes, and false when the codec failed and the records went
    /// uncompressed (valid, never lost).
    pub fn finish(mut self, codec: &mut Codec) -> (Vec<u8>, bool) {
        self.buf.truncate(self.end);
        let mut kind = codec.kind;
        let mut ok = true;
        if kind != Compression::None
            && self.count > 0
            && codec
                .compress_tail(&mut self.buf, BATCH_HEADER_LEN)
                .is_err()
        {
            kind = Compression::None;
            ok = false;
        }
        let count = self.count;
        let b = &mut self.buf;
        let batch_len = (b.len() - 12) as i32;
        b[0..8].copy_from_slice(&0i64.to_be_bytes());
        b[8..12].copy_from_slice(&batch_len.to_be_bytes());
        b[12..16].copy_from_slice(&(-1i32).to_be_bytes());
        b[16] = 2;
        b[21..23].copy_from_slice(&(kind as i16).to_be_bytes());
        b[23..27].copy_from_slice(&(count as i32 - 1).max(0).to_be_bytes());
        b[27..35].copy_from_slice(&self.base_ts.to_be_bytes());
        b[35..43].copy_from_slice(&self.max_ts.to_be_bytes());
        b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        b[51..53].copy_from_slice(&(-1i16).to_be_bytes());
        b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
        b[57..61].copy_from_slice(&(count as i32).to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_FROM..]);
        b[CRC_AT..CRC_FROM].copy_from_slice(&crc.to_be_bytes());
        (self.buf, ok)
    }

    /// Gives the buffer back without writing a batch (what it held is
    /// dropped).
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

/// The producer fields of a finished batch: (producerId, epoch, baseSequence).
pub fn producer_fields(batch: &[u8]) -> Option<(i64, i16, i32)> {
    let f = batch.get(PRODUCER_AT..PRODUCER_AT + 14)?;
    Some((
        i64::from_be_bytes(f[0..8].try_into().ok()?),
        i16::from_be_bytes(f[8..10].try_into().ok()?),
        i32::from_be_bytes(f[10..14].try_into().ok()?),
    ))
}

/// Records in a finished batch (its header's count).
pub fn record_count(batch: &[u8]) -> Option<u32> {
    let f = batch.get(57..61)?;
    Some(i32::from_be_bytes(f.try_into().ok()?).max(0) as u32)
}

/// Sets a finished batch's producer id, epoch and base sequence and updates
/// its CRC without reading the records: CRC-32C is linear, so the change of
/// 14 bytes followed by `n` unchanged bytes moves the CRC by the CRC of the
/// change shifted past `n` zero bytes (`crc32c_combine`, O(log n)).
pub fn stamp(batch: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
    if batch.len() < BATCH_HEADER_LEN {
        return;
    }
    let mut new = [0u8; 14];
    new[0..8].copy_from_slice(&producer_id.to_be_bytes());
    new[8..10].copy_from_slice(&epoch.to_be_bytes());
    new[10..14].copy_from_slice(&base_sequence.to_be_bytes());
    let old = &batch[PRODUCER_AT..PRODUCER_AT + 14];
    let mut delta = [0u8; 14];
    for i in 0..14 {
        delta[i] = old[i] ^ new[i];
    }
    // The linear part of the change: crc(delta) ^ crc(zeros of its length),
    // moved past the bytes that follow it.
    let lin = crc32c::crc32c(&delta) ^ crc32c::crc32c(&[0u8; 14]);
    let after = batch.len() - (PRODUCER_AT + 14);
    let shifted = crc32c_shift(lin, after);
    let crc = u32::from_be_bytes(batch[CRC_AT..CRC_FROM].try_into().unwrap_or_default());
    batch[CRC_AT..CRC_FROM].copy_from_slice(&(crc ^ shifted).to_be_bytes());
    batch[PRODUCER_AT..PRODUCER_AT + 14].copy_from_slice(&new);
}

/// CRC-32C's polynomial, reflected (x^32 implied).
const CRC32C_POLY: u32 = 0x82f6_3b78;

/// a(x)·b(x) mod p(x), reflected (zlib's `multmodp`).
const fn multmodp(a: u32, mut b: u32) -> u32 {
    let mut m: u32 = 1 << 31;
    let mut p: u32 = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 {
            (b >> 1) ^ CRC32C_POLY
        } else {
            b >> 1
        };
    }
    p
}

/// x^(2^k) mod p(x) for k = 0..32 (zlib's `x2n_table`), built at compile time.
const X2N: [u32; 32] = {
    let mut t = [0u32; 32];
    let mut p: u32 = 1 << 30; // x^1
    t[0] = p;
    let mut k = 1;
    while k < 32 {
        p = multmodp(p, p);
        t[k] = p;
        k += 1;
    }
    t
};

/// The CRC register `crc` moved past `n` zero bytes: zlib's current
/// `crc32_combine` (x^(8n) mod p by squaring, ~log2(n) multiplications of 32
/// steps). The `crc32c` crate's `crc32c_combine` is zlib's older matrix
/// method, 20–30 µs for a 100 KB batch on these machines: too slow for every
/// batch on the output core.
pub fn crc32c_shift(crc: u32, n: usize) -> u32 {
    let mut p: u32 = 1 << 31; // x^0
    let mut k = 3; // bytes: 2^3 bits
    let mut n = n as u64;
    while n != 0 {
        if n & 1 != 0 {
            p = multmodp(X2N[k & 31], p);
        }
        n >>= 1;
        k += 1;
    }
    multmodp(p, crc)
}

/// Why a batch could not be compressed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The codec library failed.
    #[error("{codec} compression failed: {why}")]
    Failed {
        /// Codec name.
        codec: &'static str,
        /// The library's message.
        why: String,
    },
}

/// A codec with its reused state and scratch buffer (one per shard).
pub struct Codec {
    kind: Compression,
    scratch: Vec<u8>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    snappy: snap::raw::Encoder,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").field("kind", &self.kind).finish()
    }
}

/// The LZ4 frame header klais writes: magic, FLG = version 01 + independent
/// blocks (no checksums, no content size), BD = 64 KiB blocks, and the
/// header checksum byte (xxh32 of FLG..BD, second byte).
const LZ4_FRAME_HEADER: [u8; 7] = [0x04, 0x22, 0x4d, 0x18, 0x60, 0x40, 0x82];
const LZ4_BLOCK: usize = 64 * 1024;

impl Codec {
    /// A codec of `kind`; zstd at `level` (1–19, 3 is zstd's default).
    pub fn new(kind: Compression, zstd_level: i32) -> Result<Codec, CodecError> {
        let zstd = if kind == Compression::Zstd {
            Some(
                zstd::bulk::Compressor::new(zstd_level).map_err(|e| CodecError::Failed {
                    codec: "zstd",
                    why: e.to_string(),
                })?,
            )
        } else {
            None
        };
        Ok(Codec {
            kind,
            scratch: Vec::new(),
            zstd,
            snappy: snap::raw::Encoder::new(),
        })
    }

    /// Replaces `buf[from..]` by its compressed form.
    fn compress_tail(&mut self, buf: &mut Vec<u8>, from: usize) -> Result<(), CodecError> {
        let fail = |codec: &'static str, why: String| CodecError::Failed { codec, why };
        let src = &buf[from..];
        let out = &mut self.scratch;
        out.clear();
        match self.kind {
            Compression::None => return Ok(()),
            Compression::Lz4 => {
                out.extend_from_slice(&LZ4_FRAME_HEADER);
                for block in src.chunks(LZ4_BLOCK) {
                    let at = out.len();
                    let bound = lz4_flex::block::get_maximum_output_size(block.len());
                    out.resize(at + 4 + bound, 0);
                    let n = lz4_flex::block::compress_into(block, &mut out[at + 4..])
                        .map_err(|e| fail("lz4", e.to_string()))?;
                    if n >= block.len() {
                        // Incompressible: stored, high bit set.
                        out.truncate(at + 4);
                        out.extend_from_slice(block);
                        let size = block.len() as u32 | 0x8000_0000;
                        out[at..at + 4].copy_from_slice(&size.to_le_bytes());
                    } else {
                        out.truncate(at + 4 + n);
                        out[at..at + 4].copy_from_slice(&(n as u32).to_le_bytes());
                    }
                }
                out.extend_from_slice(&0u32.to_le_bytes());
            }
            Compression::Snappy => {
                out.resize(snap::raw::max_compress_len(src.len()), 0);
                let n = self
                    .snappy
                    .compress(src, out)
                    .map_err(|e| fail("snappy", e.to_string()))?;
                out.truncate(n);
            }
            Compression::Zstd => {
                let z = self
                    .zstd
                    .as_mut()
                    .ok_or_else(|| fail("zstd", "no context".into()))?;
                out.reserve(zstd::zstd_safe::compress_bound(src.len()));
                z.compress_to_buffer(src, out)
                    .map_err(|e| fail("zstd", e.to_string()))?;
            }
            Compression::Gzip => {
                // A gzip member: 10-byte header, raw deflate, CRC-32, size.
                out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
                let mut enc = flate2::write::DeflateEncoder::new(
                    std::mem::take(out),
                    flate2::Compression::fast(),
                );
                enc.write_all(src)
                    .map_err(|e| fail("gzip", e.to_string()))?;
                *out = enc.finish().map_err(|e| fail("gzip", e.to_string()))?;
                let crc = crc32fast::hash(src);
                out.extend_from_slice(&crc.to_le_bytes());
                out.extend_from_slice(&(src.len() as u32).to_le_bytes());
            }
        }
        buf.truncate(from);
        buf.extend_from_slice(out);
        Ok(())
    }
}

/// One record read back from a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    /// Timestamp, ms.
    pub ts_ms: i64,
    /// Key.
    pub key: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
    /// Headers in order.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Why a batch could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchDecodeError {
    /// Short, bad CRC, a field out of bounds.
    #[error("record batch malformed: {0}")]
    Malformed(&'static str),
    /// The records did not decompress.
    #[error("record batch: {0} decompression failed")]
    Codec(&'static str),
}

/// Reads every record of a RecordBatch v2 that klais wrote (any codec; the
/// CRC checked). Allocates per record: for the rare path that re-splits a
/// batch encoded before the partition count was known, never per message on
/// the hot path.
pub fn decode_batch(batch: &[u8]) -> Result<Vec<DecodedRecord>, BatchDecodeError> {
    use std::io::Read as _;
    let bad = BatchDecodeError::Malformed;
    if batch.len() < BATCH_HEADER_LEN || batch[16] != 2 {
        return Err(bad("not a v2 batch"));
    }
    let crc = u32::from_be_bytes([batch[17], batch[18], batch[19], batch[20]]);
    if crc32c::crc32c(&batch[CRC_FROM..]) != crc {
        return Err(bad("CRC mismatch"));
    }
    let attributes = i16::from_be_bytes([batch[21], batch[22]]);
    let base_ts = i64::from_be_bytes(batch[27..35].try_into().map_err(|_| bad("header"))?);
    let count = i32::from_be_bytes([batch[57], batch[58], batch[59], batch[60]]);
    if count < 0 || count as usize > batch.len() {
        return Err(bad("record count"));
    }
    let src = &batch[BATCH_HEADER_LEN..];
    let fail = BatchDecodeError::Codec;
    let plain: Vec<u8> = match attributes & 7 {
        0 => src.to_vec(),
        1 => {
            let mut v = Vec::new();
            flate2::read::GzDecoder::new(src)
                .read_to_end(&mut v)
                .map_err(|_| fail("gzip"))?;
            v
        }
        2 => snap::raw::Decoder::new()
            .decompress_vec(src)
            .map_err(|_| fail("snappy"))?,
        3 => {
            let mut v = Vec::new();
            lz4_flex::frame::FrameDecoder::new(src)
                .read_to_end(&mut v)
                .map_err(|_| fail("lz4"))?;
            v
        }
        4 => zstd::stream::decode_all(src).map_err(|_| fail("zstd"))?,
        _ => return Err(bad("unknown codec")),
    };
    let mut at = 0;
    let mut out = Vec::with_capacity(count as usize);
    let take = |at: &mut usize, buf: &[u8]| -> Result<Vec<u8>, BatchDecodeError> {
        let n = get_varint(buf, at).ok_or(bad("varint"))?;
        if n < 0 {
            return Ok(Vec::new());
        }
        let end = at.checked_add(n as usize).ok_or(bad("length"))?;
        let v = buf.get(*at..end).ok_or(bad("length"))?.to_vec();
        *at = end;
        Ok(v)
    };
    for _ in 0..count {
        let len = get_varint(&plain, &mut at).ok_or(bad("record length"))?;
        let end = at
            .checked_add(usize::try_from(len).map_err(|_| bad("record length"))?)
            .filter(|&e| e <= plain.len())
            .ok_or(bad("record length"))?;
        let rec = &plain[..end];
        at += 1; // attributes
        let ts_delta = get_varint(rec, &mut at).ok_or(bad("timestamp"))?;
        let _offset_delta = get_varint(rec, &mut at).ok_or(bad("offset"))?;
        let key = take(&mut at, rec)?;
        let value = take(&mut at, rec)?;
        let nh = get_varint(rec, &mut at).ok_or(bad("header count"))?;
        if nh < 0 || nh as usize > rec.len() {
            return Err(bad("header count"));
        }
        let mut headers = Vec::with_capacity(nh as usize);
        for _ in 0..nh {
            let k = take(&mut at, rec)?;
            let v = take(&mut at, rec)?;
            headers.push((k, v));
        }
        if at != end {
            return Err(bad("record length"));
        }
        out.push(DecodedRecord {
            ts_ms: base_ts + ts_delta,
            key,
            value,
            headers,
        });
    }
    if at != plain.len() {
        return Err(bad("bytes after the last record"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_codec_decodes_back_to_the_records_written() {
        for kind in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut codec = Codec::new(kind, 3).unwrap();
            let mut w = BatchWriter::new(Vec::new());
            let mut want = Vec::new();
            for i in 0..300u32 {
                let key = format!("dev-{}", i % 7).into_bytes();
                let value = format!("{{\"t\":{i},\"pad\":\"{}\"}}", "x".repeat(i as usize % 50))
                    .into_bytes();
                let seq = i.to_string().into_bytes();
                let ts = 1_700_000_000_000 + i64::from(i / 3);
                w.push(
                    ts,
                    &key,
                    &value,
                    &[(b"sequence", &seq), (b"gateway", b"gw")],
                );
                want.push(DecodedRecord {
                    ts_ms: ts,
                    key,
                    value,
                    headers: vec![
                        (b"sequence".to_vec(), seq),
                        (b"gateway".to_vec(), b"gw".to_vec()),
                    ],
                });
            }
            let (bytes, ok) = w.finish(&mut codec);
            assert!(ok);
            assert_eq!(decode_batch(&bytes).unwrap(), want, "{kind:?}");
            let mut bad = bytes.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(
                decode_batch(&bad).is_err(),
                "{kind:?}: a flipped bit is caught"
            );
        }
    }

    use super::*;

    #[test]
    fn fast_mod_is_the_remainder_at_the_edges() {
        for d in [0u32, 1, 2, 3, 7, 64, 1000, 65_537, u32::MAX - 1, u32::MAX] {
            let m = FastMod::new(d);
            for x in [
                0u32,
                1,
                2,
                d.wrapping_sub(1),
                d,
                d.wrapping_add(1),
                0x7fff_ffff,
                u32::MAX,
            ] {
                assert_eq!(m.rem(x), x % d.max(1), "{x} % {d}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn fast_mod_is_the_remainder(x: u32, d: u32) {
            proptest::prop_assert_eq!(FastMod::new(d).rem(x), x % d.max(1));
        }

        #[test]
        fn fast_mod_picks_the_partition_partition_for_picks(key: Vec<u8>, n in 1u32..10_000) {
            proptest::prop_assert_eq!(FastMod::new(n).partition(&key), partition_for(&key, n));
        }
    }

    #[test]
    fn murmur2_matches_the_java_client() {
        // Kafka's UtilsTest.testMurmur2.
        for (s, want) in [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ] {
            assert_eq!(murmur2(s.as_bytes()), want, "{s}");
        }
    }

    #[test]
    fn the_crc_shift_matches_the_crates_combine() {
        for n in [
            0usize, 1, 2, 3, 7, 8, 63, 64, 1000, 65_536, 1_000_000, 123_457,
        ] {
            for crc in [0u32, 1, 0xdead_beef, u32::MAX] {
                assert_eq!(
                    crc32c_shift(crc, n),
                    crc32c::crc32c_combine(crc, 0, n),
                    "{crc:x} {n}"
                );
            }
        }
    }

    #[test]
    fn varints_round_trip() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            300,
            -300,
            i32::MAX.into(),
            i64::MIN,
            i64::MAX,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            let mut at = 0;
            assert_eq!(get_varint(&b, &mut at), Some(v));
            assert_eq!(at, b.len());
        }
        assert_eq!(get_varint(&[0x80, 0x80], &mut 0), None);
    }

    fn sample(kind: Compression) -> Vec<u8> {
        let mut codec = Codec::new(kind, 3).unwrap();
        let mut w = BatchWriter::new(Vec::new());
        for i in 0..200u32 {
            let key = format!("dev-{}", i % 7);
            let value = format!("{{\"t\":{i},\"pad\":\"{}\"}}", "x".repeat(40));
            let seq = i.to_string();
            w.push(
                1_700_000_000_000 + i64::from(i),
                key.as_bytes(),
                value.as_bytes(),
                &[(b"sequence", seq.as_bytes()), (b"gateway", b"gw")],
            );
        }
        w.finish(&mut codec).0
    }

    #[test]
    fn the_crc_covers_attributes_to_end_and_stamp_keeps_it_right() {
        for kind in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut b = sample(kind);
            let crc = |b: &[u8]| u32::from_be_bytes(b[17..21].try_into().unwrap());
            assert_eq!(crc(&b), crc32c::crc32c(&b[21..]), "{kind:?}");
            assert_eq!(producer_fields(&b), Some((-1, -1, -1)));
            stamp(&mut b, 4242, 3, 1_000_000);
            assert_eq!(producer_fields(&b), Some((4242, 3, 1_000_000)));
            assert_eq!(crc(&b), crc32c::crc32c(&b[21..]), "{kind:?} after stamp");
            stamp(&mut b, 7, 0, 0);
            assert_eq!(crc(&b), crc32c::crc32c(&b[21..]), "{kind:?} restamped");
            assert_eq!(record_count(&b), Some(200));
            assert_eq!(
                i32::from_be_bytes(b[8..12].try_into().unwrap()) as usize,
                b.len() - 12
            );
            if kind != Compression::None {
                assert!(b.len() < sample(Compression::None).len(), "{kind:?}");
            }
        }
    }

    #[test]
    fn lz4_frames_decode_with_a_standard_reader() {
        use std::io::Read;
        let plain = sample(Compression::None);
        let lz = sample(Compression::Lz4);
        let mut out = Vec::new();
        lz4_flex::frame::FrameDecoder::new(&lz[61..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, plain[61..]);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&sample(Compression::Gzip)[61..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, plain[61..]);
        let z = sample(Compression::Zstd);
        assert_eq!(zstd::decode_all(&z[61..]).unwrap(), plain[61..]);
        let s = sample(Compression::Snappy);
        assert_eq!(
            snap::raw::Decoder::new().decompress_vec(&s[61..]).unwrap(),
            plain[61..]
        );
    }

    #[test]
    fn records_decode_field_by_field() {
        let b = sample(Compression::None);
        let mut at = 61;
        let len = get_varint(&b, &mut at).unwrap() as usize;
        let start = at;
        assert_eq!(b[at], 0);
        at += 1;
        assert_eq!(get_varint(&b, &mut at), Some(0)); // ts delta
        assert_eq!(get_varint(&b, &mut at), Some(0)); // offset delta
        let kl = get_varint(&b, &mut at).unwrap() as usize;
        assert_eq!(&b[at..at + kl], b"dev-0");
        at += kl;
        let vl = get_varint(&b, &mut at).unwrap() as usize;
        at += vl;
        assert_eq!(get_varint(&b, &mut at), Some(2));
        let hk = get_varint(&b, &mut at).unwrap() as usize;
        assert_eq!(&b[at..at + hk], b"sequence");
        at += hk;
        let hv = get_varint(&b, &mut at).unwrap() as usize;
        assert_eq!(&b[at..at + hv], b"0");
        at += hv;
        let hk = get_varint(&b, &mut at).unwrap() as usize;
        at += hk;
        let hv = get_varint(&b, &mut at).unwrap() as usize;
        at += hv;
        assert_eq!(at - start, len);
        assert_eq!(
            BatchWriter::record_len(
                0,
                b"dev-0",
                &b[0..vl],
                &[(b"sequence", b"0"), (b"gateway", b"gw")]
            ),
            at - 61
        );
    }
}
