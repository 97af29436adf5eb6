//! The few Kafka requests the native producer speaks, encoded and decoded by
//! hand: ApiVersions v0, Metadata v1–v8, InitProducerId v1 or v3 (the one
//! flexible version here: brokers such as tansu give an idempotent producer
//! id only from v3), Produce v3–v8. Every decoder is bounds-checked and
//! returns [`DecodeError`] on anything short, negative or inconsistent: a
//! broker response that makes no sense is an error counted, never a panic
//! (`fuzz/fuzz_targets/kafka_response.rs` holds it to that).
//!
//! Frames are `size i32 | body`; a request body starts with header v1
//! (`api_key i16 | api_version i16 | correlation_id i32 | client_id string`),
//! a response body with header v0 (`correlation_id i32`).

/// API keys used here.
pub const PRODUCE: i16 = 0;
/// Metadata.
pub const METADATA: i16 = 3;
/// ApiVersions.
pub const API_VERSIONS: i16 = 18;
/// InitProducerId.
pub const INIT_PRODUCER_ID: i16 = 22;
/// SaslHandshake.
pub const SASL_HANDSHAKE: i16 = 17;
/// SaslAuthenticate.
pub const SASL_AUTHENTICATE: i16 = 36;

/// Produce versions this client can speak (v9 is the first flexible one).
pub const PRODUCE_VERSIONS: (i16, i16) = (3, 8);

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes ended inside a field.
    #[error("response truncated at byte {0}")]
    Truncated(usize),
    /// A length or count was negative where it cannot be, or absurd.
    #[error("bad length {len} at byte {at}")]
    BadLength {
        /// Byte offset.
        at: usize,
        /// The value read.
        len: i64,
    },
    /// Bytes left over after the last field.
    #[error("{0} bytes after the end of the response")]
    Trailing(usize),
    /// A string was not UTF-8.
    #[error("string at byte {0} is not UTF-8")]
    Utf8(usize),
}

/// A bounds-checked big-endian reader.
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(DecodeError::Truncated(self.at))?;
        let s = self
            .buf
            .get(self.at..end)
            .ok_or(DecodeError::Truncated(self.at))?;
        self.at = end;
        Ok(s)
    }

    /// i8 as bool.
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        Ok(self.take(1)?[0] != 0)
    }

    /// i16.
    pub fn i16(&mut self) -> Result<i16, DecodeError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    /// i32.
    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// i64.
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    /// An array count: at most what the remaining bytes could hold at
    /// `min_item` bytes each (a forged count cannot make us allocate).
    pub fn count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let at = self.at;
        let n = self.i32()?;
        if n == -1 {
            return Ok(0);
        }
        let left = self.buf.len() - self.at;
        if n < 0 || (n as usize).saturating_mul(min_item.max(1)) > left {
            return Err(DecodeError::BadLength {
                at,
                len: i64::from(n),
            });
        }
        Ok(n as usize)
    }

    /// A nullable string (None for -1).
    pub fn nullable_str(&mut self) -> Result<Option<&'a str>, DecodeError> {
        let at = self.at;
        let n = self.i16()?;
        if n == -1 {
            return Ok(None);
        }
        if n < 0 {
            return Err(DecodeError::BadLength {
                at,
                len: i64::from(n),
            });
        }
        let b = self.take(n as usize)?;
        std::str::from_utf8(b)
            .map(Some)
            .map_err(|_| DecodeError::Utf8(at))
    }

    /// A string (null read as empty).
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        Ok(self.nullable_str()?.unwrap_or(""))
    }

    /// Nothing may follow.
    pub fn end(&self) -> Result<(), DecodeError> {
        match self.buf.len() - self.at {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// Appends a request frame's 4-byte size field (zero until
/// [`finish_frame`] fills it) and header v1.
pub fn start_frame(out: &mut Vec<u8>, api_key: i16, version: i16, correlation: i32, client: &str) {
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&api_key.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&correlation.to_be_bytes());
    put_str(out, client);
}

/// Writes the size of the frame that starts at `start` and ends with `out`
/// plus `extra` bytes sent separately.
pub fn finish_frame(out: &mut [u8], start: usize, extra: usize) {
    let size = (out.len() - start - 4 + extra) as i32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// A string.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// ApiVersions v0 request.
pub fn api_versions(out: &mut Vec<u8>, correlation: i32, client: &str) {
    let start = out.len();
    start_frame(out, API_VERSIONS, 0, correlation, client);
    finish_frame(out, start, 0);
}

/// (api_key, min version, max version) per API a broker speaks.
pub type ApiVersionList = Vec<(i16, i16, i16)>;

/// ApiVersions response: error code, then (api_key, min, max) per API.
pub fn decode_api_versions(body: &[u8]) -> Result<(i16, ApiVersionList), DecodeError> {
    let mut r = Reader::new(body);
    let err = r.i16()?;
    let n = r.count(6)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push((r.i16()?, r.i16()?, r.i16()?));
    }
    // v0 has nothing more; a broker answering UNSUPPORTED_VERSION may use a
    // later layout: ignore what follows.
    Ok((err, v))
}

/// SaslHandshake v1 request: the mechanism; the exchange then goes in
/// SaslAuthenticate requests (v0 would send raw SASL tokens instead).
pub fn sasl_handshake(out: &mut Vec<u8>, correlation: i32, client: &str, mechanism: &str) {
    let start = out.len();
    start_frame(out, SASL_HANDSHAKE, 1, correlation, client);
    put_str(out, mechanism);
    finish_frame(out, start, 0);
}

/// SaslHandshake v1 response: error code and the broker's enabled
/// mechanisms.
pub fn decode_sasl_handshake(body: &[u8]) -> Result<(i16, Vec<String>), DecodeError> {
    let mut r = Reader::new(body);
    let err = r.i16()?;
    let n = r.count(2)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(r.str()?.to_string());
    }
    r.end()?;
    Ok((err, v))
}

/// SaslAuthenticate v0 or v1 request (not flexible): one SASL message.
pub fn sasl_authenticate(
    out: &mut Vec<u8>,
    version: i16,
    correlation: i32,
    client: &str,
    auth: &[u8],
) {
    let start = out.len();
    start_frame(out, SASL_AUTHENTICATE, version, correlation, client);
    out.extend_from_slice(&(auth.len() as i32).to_be_bytes());
    out.extend_from_slice(auth);
    finish_frame(out, start, 0);
}

/// What a SaslAuthenticate response says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslAuth {
    /// Error code (0: none; 58: SASL_AUTHENTICATION_FAILED).
    pub error: i16,
    /// The broker's message, if any.
    pub message: Option<String>,
    /// The server's SASL message.
    pub auth: Vec<u8>,
}

/// SaslAuthenticate v0 or v1 response.
pub fn decode_sasl_authenticate(body: &[u8], version: i16) -> Result<SaslAuth, DecodeError> {
    let mut r = Reader::new(body);
    let error = r.i16()?;
    let message = r.nullable_str()?.map(str::to_string);
    let at = r.at;
    let n = r.i32()?;
    let auth = if n == -1 {
        Vec::new()
    } else if n < 0 {
        return Err(DecodeError::BadLength {
            at,
            len: i64::from(n),
        });
    } else {
        r.take(n as usize)?.to_vec()
    };
    if version >= 1 {
        let _session_lifetime_ms = r.i64()?;
    }
    r.end()?;
    Ok(SaslAuth {
        error,
        message,
        auth,
    })
}

/// Metadata versions this client can speak (v9 is the first flexible one).
pub const METADATA_VERSIONS: (i16, i16) = (1, 8);

/// Metadata request (v1–v8) for one topic; the broker may create it.
pub fn metadata(out: &mut Vec<u8>, version: i16, correlation: i32, client: &str, topic: &str) {
    let start = out.len();
    start_frame(out, METADATA, version, correlation, client);
    out.extend_from_slice(&1i32.to_be_bytes());
    put_str(out, topic);
    if version >= 4 {
        out.push(1); // allow_auto_topic_creation
    }
    if version >= 8 {
        out.push(0); // include_cluster_authorized_operations
        out.push(0); // include_topic_authorized_operations
    }
    finish_frame(out, start, 0);
}

/// A broker of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerMeta {
    /// Node id.
    pub id: i32,
    /// Host.
    pub host: String,
    /// Port.
    pub port: i32,
}

/// One partition's leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionMeta {
    /// Partition index.
    pub index: i32,
    /// Error code (0: none).
    pub error: i16,
    /// Leader node id (-1: none).
    pub leader: i32,
}

/// Metadata v1 response, for the topics asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Brokers.
    pub brokers: Vec<BrokerMeta>,
    /// (topic, error code, partitions).
    pub topics: Vec<(String, i16, Vec<PartitionMeta>)>,
}

fn skip_ints(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    for _ in 0..r.count(4)? {
        r.i32()?;
    }
    Ok(())
}

/// Decodes a Metadata v1–v8 response body.
pub fn decode_metadata(body: &[u8], version: i16) -> Result<Metadata, DecodeError> {
    let mut r = Reader::new(body);
    let mut m = Metadata::default();
    if version >= 3 {
        let _throttle = r.i32()?;
    }
    for _ in 0..r.count(10)? {
        let id = r.i32()?;
        let host = r.str()?.to_string();
        let port = r.i32()?;
        let _rack = r.nullable_str()?;
        m.brokers.push(BrokerMeta { id, host, port });
    }
    if version >= 2 {
        let _cluster_id = r.nullable_str()?;
    }
    let _controller = r.i32()?;
    for _ in 0..r.count(9)? {
        let err = r.i16()?;
        let name = r.str()?.to_string();
        let _internal = r.bool()?;
        let mut parts = Vec::new();
        for _ in 0..r.count(18)? {
            let error = r.i16()?;
            let index = r.i32()?;
            let leader = r.i32()?;
            if version >= 7 {
                let _leader_epoch = r.i32()?;
            }
            skip_ints(&mut r)?;
            skip_ints(&mut r)?;
            if version >= 5 {
                skip_ints(&mut r)?;
            }
            parts.push(PartitionMeta {
                index,
                error,
                leader,
            });
        }
        if version >= 8 {
            let _topic_authorized_operations = r.i32()?;
        }
        m.topics.push((name, err, parts));
    }
    if version >= 8 {
        let _cluster_authorized_operations = r.i32()?;
    }
    r.end()?;
    Ok(m)
}

/// An unsigned varint (flexible versions' lengths and tag counts).
fn get_uvarint(r: &mut Reader<'_>) -> Result<u64, DecodeError> {
    let at = r.at;
    let mut v: u64 = 0;
    for shift in (0..35).step_by(7) {
        let b = r.take(1)?[0];
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DecodeError::BadLength { at, len: -1 })
}

/// Skips a flexible version's tagged fields.
fn skip_tags(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    let n = get_uvarint(r)?;
    for _ in 0..n {
        let _tag = get_uvarint(r)?;
        let size = get_uvarint(r)? as usize;
        r.take(size)?;
    }
    Ok(())
}

/// InitProducerId request for an idempotent producer (no transactional id):
/// v1, or v3 (flexible: header v2, producer id and epoch -1, no tags).
pub fn init_producer_id(out: &mut Vec<u8>, version: i16, correlation: i32, client: &str) {
    let start = out.len();
    start_frame(out, INIT_PRODUCER_ID, version, correlation, client);
    if version >= 2 {
        out.push(0); // request header tags
        out.push(0); // transactional_id: compact null
        out.extend_from_slice(&60_000i32.to_be_bytes());
        if version >= 3 {
            out.extend_from_slice(&(-1i64).to_be_bytes());
            out.extend_from_slice(&(-1i16).to_be_bytes());
        }
        out.push(0); // body tags
    } else {
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out.extend_from_slice(&60_000i32.to_be_bytes());
    }
    finish_frame(out, start, 0);
}

/// InitProducerId response (after the correlation id): (error, producer id,
/// epoch).
pub fn decode_init_producer_id(body: &[u8], version: i16) -> Result<(i16, i64, i16), DecodeError> {
    let mut r = Reader::new(body);
    if version >= 2 {
        skip_tags(&mut r)?; // response header v1
    }
    let _throttle = r.i32()?;
    let err = r.i16()?;
    let id = r.i64()?;
    let epoch = r.i16()?;
    if version >= 2 {
        skip_tags(&mut r)?;
    }
    r.end()?;
    Ok((err, id, epoch))
}

/// What every Produce request of a producer shares.
#[derive(Debug, Clone, Copy)]
pub struct ProduceHead<'a> {
    /// Negotiated version (3–8).
    pub version: i16,
    /// Client id.
    pub client: &'a str,
    /// -1 (all), 1 or 0.
    pub acks: i16,
    /// How long the broker may wait for replicas, ms.
    pub timeout_ms: i32,
    /// The topic.
    pub topic: &'a str,
}

/// The head of a Produce request for one topic and `parts` partitions; each
/// partition then follows as [`produce_partition`]'s 8 bytes and the batch.
pub fn produce_head(out: &mut Vec<u8>, h: &ProduceHead<'_>, correlation: i32, parts: usize) {
    start_frame(out, PRODUCE, h.version, correlation, h.client);
    out.extend_from_slice(&(-1i16).to_be_bytes()); // transactional_id: null
    out.extend_from_slice(&h.acks.to_be_bytes());
    out.extend_from_slice(&h.timeout_ms.to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    put_str(out, h.topic);
    out.extend_from_slice(&(parts as i32).to_be_bytes());
}

/// A partition's entry of a Produce request, before its batch bytes.
pub fn produce_partition(index: i32, batch_len: usize) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&index.to_be_bytes());
    b[4..8].copy_from_slice(&(batch_len as i32).to_be_bytes());
    b
}

/// One partition's outcome in a Produce response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionResult {
    /// Partition index.
    pub index: i32,
    /// Error code (0: none).
    pub error: i16,
    /// Offset of the batch's first record.
    pub base_offset: i64,
}

/// Decodes a Produce v3–v8 response body into `out` (partitions of every
/// topic, in order).
pub fn decode_produce(
    body: &[u8],
    version: i16,
    out: &mut Vec<PartitionResult>,
) -> Result<(), DecodeError> {
    out.clear();
    let mut r = Reader::new(body);
    for _ in 0..r.count(6)? {
        let _topic = r.str()?;
        for _ in 0..r.count(14)? {
            let index = r.i32()?;
            let error = r.i16()?;
            let base_offset = r.i64()?;
            let _log_append_time = r.i64()?;
            if version >= 5 {
                let _log_start_offset = r.i64()?;
            }
            if version >= 8 {
                for _ in 0..r.count(6)? {
                    let _batch_index = r.i32()?;
                    let _message = r.nullable_str()?;
                }
                let _message = r.nullable_str()?;
            }
            out.push(PartitionResult {
                index,
                error,
                base_offset,
            });
        }
    }
    let _throttle = r.i32()?;
    r.end()?;
    Ok(())
}

/// What a producer does with a partition error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written (0), or written before (DUPLICATE_SEQUENCE_NUMBER, 46).
    Delivered,
    /// Send again, in order, after new metadata.
    RetryAfterMetadata,
    /// Send again, in order.
    Retry,
    /// The producer id is gone or fenced: a new one, then send again.
    NewProducer,
    /// Never deliverable (too large, invalid, not authorised): dropped,
    /// counted as rejected.
    Reject,
}

/// The outcome of a Produce partition error code.
pub fn outcome(code: i16) -> Outcome {
    match code {
        0 | 46 => Outcome::Delivered,
        // UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE,
        // NOT_LEADER_OR_FOLLOWER, NOT_ENOUGH_REPLICAS(_AFTER_APPEND),
        // FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH, KAFKA_STORAGE_ERROR.
        3 | 5 | 6 | 74 | 75 | 56 => Outcome::RetryAfterMetadata,
        // UNKNOWN_PRODUCER_ID, INVALID_PRODUCER_EPOCH, PRODUCER_FENCED,
        // INVALID_PRODUCER_ID_MAPPING.
        59 | 47 | 90 | 49 => Outcome::NewProducer,
        // MESSAGE_TOO_LARGE, INVALID_TOPIC_EXCEPTION, RECORD_LIST_TOO_LARGE,
        // INVALID_REQUIRED_ACKS, TOPIC_AUTHORIZATION_FAILED,
        // CLUSTER_AUTHORIZATION_FAILED, INVALID_TIMESTAMP,
        // UNSUPPORTED_FOR_MESSAGE_FORMAT, POLICY_VIOLATION, INVALID_RECORD,
        // UNSUPPORTED_COMPRESSION_TYPE.
        10 | 17 | 18 | 21 | 29 | 31 | 32 | 43 | 44 | 87 | 76 => Outcome::Reject,
        // Everything else (CORRUPT_MESSAGE, REQUEST_TIMED_OUT,
        // NOT_ENOUGH_REPLICAS, OUT_OF_ORDER_SEQUENCE_NUMBER behind a failed
        // batch, NETWORK_EXCEPTION, THROTTLING …): again, in order.
        _ => Outcome::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_size_and_header() {
        let mut out = Vec::new();
        metadata(&mut out, 1, 7, "klais", "t");
        assert_eq!(
            i32::from_be_bytes(out[0..4].try_into().unwrap()) as usize,
            out.len() - 4
        );
        assert_eq!(&out[4..6], &METADATA.to_be_bytes());
        assert_eq!(&out[6..8], &1i16.to_be_bytes());
        assert_eq!(&out[8..12], &7i32.to_be_bytes());
    }

    #[test]
    fn produce_responses_decode_per_version_and_garbage_is_an_error() {
        for v in 3..=8i16 {
            let mut b = Vec::new();
            b.extend_from_slice(&1i32.to_be_bytes());
            put_str(&mut b, "t");
            b.extend_from_slice(&1i32.to_be_bytes());
            b.extend_from_slice(&2i32.to_be_bytes());
            b.extend_from_slice(&6i16.to_be_bytes());
            b.extend_from_slice(&42i64.to_be_bytes());
            b.extend_from_slice(&(-1i64).to_be_bytes());
            if v >= 5 {
                b.extend_from_slice(&0i64.to_be_bytes());
            }
            if v >= 8 {
                b.extend_from_slice(&0i32.to_be_bytes());
                b.extend_from_slice(&(-1i16).to_be_bytes());
            }
            b.extend_from_slice(&0i32.to_be_bytes());
            let mut out = Vec::new();
            decode_produce(&b, v, &mut out).unwrap();
            assert_eq!(
                out,
                vec![PartitionResult {
                    index: 2,
                    error: 6,
                    base_offset: 42
                }]
            );
            for cut in 0..b.len() {
                assert!(
                    decode_produce(&b[..cut], v, &mut out).is_err(),
                    "v{v} cut {cut}"
                );
            }
        }
        let mut out = Vec::new();
        assert!(decode_produce(&[0x7f, 0xff, 0xff, 0xff], 3, &mut out).is_err());
        assert_eq!(outcome(46), Outcome::Delivered);
        assert_eq!(outcome(6), Outcome::RetryAfterMetadata);
    }
}
