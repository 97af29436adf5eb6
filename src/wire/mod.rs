//! Wire protocol v1: the datagram devices in the field send (DESIGN.md §2).
//!
//! ```text
//! offset 0   u16  magic 0xAA55 (big-endian)
//! offset 2   16B  device id, UTF-8, NUL-padded
//! offset 18  u32  sequence (big-endian)
//! offset 22  ..   payload, JSON
//! ```
//!
//! [`parse`] is zero-copy: it borrows the receive buffer and returns either a
//! [`Datagram`] view or a [`Reject`] reason. It never allocates and never panics,
//! whatever the bytes (property-tested below), because it runs once per packet on
//! a shard core. [`encode`] is the inverse, used by the traffic generator and tests.
//! Protocol v2 (authenticated devices) is told apart by its magic; v1 stays as
//! it is. v2 keeps v1's offsets for the device id and the sequence (so the
//! kernel's per-device buckets, the shard hash and the classifier read both
//! versions alike) and adds a flags byte and, when authenticated, a MAC:
//!
//! ```text
//! offset 0   u16  magic 0xAA56 (big-endian)
//! offset 2   16B  device id, UTF-8, NUL-padded
//! offset 18  u32  sequence (big-endian)
//! offset 22  u8   flags: bit 0 urgent, bit 1 authenticated; others must be 0
//! offset 23  u8   reserved, 0
//! offset 24  ..   payload, JSON
//! last 8B         MAC (only with the authenticated flag): SipHash-2-4 under
//!                 the device's 128-bit key over every byte before it, the
//!                 reference implementation's 8 output bytes (little-endian)
//! ```
//!
//! [`parse`] checks the v2 framing only; the MAC and the replay window are the
//! shard's ([`crate::shard::auth`]): they need the device's key and state.

mod fnv;
pub mod kafka;
pub mod policy;

pub use fnv::{device_hash, fnv1a64, FNV1A64_OFFSET, FNV1A64_PRIME};

/// Magic of protocol v1.
pub const MAGIC_V1: u16 = 0xAA55;
/// Magic of protocol v2 (flags, optional MAC).
pub const MAGIC_V2: u16 = 0xAA56;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 22;
/// Bytes before the payload in protocol v2.
pub const V2_HEADER_LEN: usize = 24;
/// Bytes of the v2 MAC trailer.
pub const MAC_LEN: usize = 8;
/// v2 flag: the device marks this message urgent (the Dam's urgent lane and
/// the batcher's urgent release).
pub const V2_FLAG_URGENT: u8 = 1;
/// v2 flag: a MAC trailer follows the payload.
pub const V2_FLAG_AUTHENTICATED: u8 = 2;
/// Every v2 flag this version knows.
pub const V2_FLAGS_KNOWN: u8 = V2_FLAG_URGENT | V2_FLAG_AUTHENTICATED;
/// Width of the device id field.
pub const DEVICE_ID_LEN: usize = 16;
/// The largest UDP payload an IPv4 datagram can carry (65535 - 20 - 8).
pub const MAX_DATAGRAM: usize = 65_507;

/// Why a datagram was rejected. Each reason has its own counter
/// ([`RejectCounters`]); the discriminant indexes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Reject {
    /// Fewer than [`HEADER_LEN`] bytes.
    TooShort = 0,
    /// The first two bytes are not a known magic.
    BadMagic = 1,
    /// The device id is all NUL.
    DeviceIdEmpty = 2,
    /// The device id is not UTF-8, or has bytes after its NUL padding.
    DeviceIdNotUtf8 = 3,
    /// The payload is longer than `protocol.max_payload_bytes`.
    PayloadTooLarge = 4,
    /// The payload is not valid JSON (only when `protocol.validate_json` is on).
    PayloadNotJson = 5,
    /// The device sent this sequence number already (shard sequence tracking).
    DuplicateSequence = 6,
    /// The hand-off ring to the output stage and the shard's overflow queue
    /// (or the ring to the owning shard) had no room.
    QueueFull = 7,
    /// Over the shard's admission rate (`admission.shard_rate_pps`).
    RateLimited = 8,
    /// The port's policy (`[auth] policy`, `[auth.ports]`) does not take
    /// this protocol version: v1 or unauthenticated v2 where v2 is required,
    /// v2 where only v1 is allowed.
    Policy = 9,
    /// A v2 datagram with flag bits this version does not know, or a
    /// non-zero reserved byte.
    BadFlags = 10,
    /// An authenticated v2 datagram from a device without a key.
    UnknownDevice = 11,
    /// The MAC does not match the device's key (forged, corrupted, or the
    /// wrong key).
    BadMac = 12,
    /// A correctly authenticated sequence the device sent already, or one
    /// older than the replay window.
    Replay = 13,
    /// The device is on the operator's deny list (admin API); the kernel
    /// drops it first when the XDP filter runs.
    Denied = 14,
    /// A device that has a key sent without a MAC (v1, or v2 without the
    /// authenticated flag): once a device has a key, nothing unauthenticated
    /// may speak for it.
    Unauthenticated = 15,
}

impl Reject {
    /// Every reason, in counter order.
    pub const ALL: [Reject; 16] = [
        Reject::TooShort,
        Reject::BadMagic,
        Reject::DeviceIdEmpty,
        Reject::DeviceIdNotUtf8,
        Reject::PayloadTooLarge,
        Reject::PayloadNotJson,
        Reject::DuplicateSequence,
        Reject::QueueFull,
        Reject::RateLimited,
        Reject::Policy,
        Reject::BadFlags,
        Reject::UnknownDevice,
        Reject::BadMac,
        Reject::Replay,
        Reject::Denied,
        Reject::Unauthenticated,
    ];

    /// Stable snake_case name, used in counters, metrics and summaries.
    pub const fn name(self) -> &'static str {
        match self {
            Reject::TooShort => "too_short",
            Reject::BadMagic => "bad_magic",
            Reject::DeviceIdEmpty => "device_id_empty",
            Reject::DeviceIdNotUtf8 => "device_id_not_utf8",
            Reject::PayloadTooLarge => "payload_too_large",
            Reject::PayloadNotJson => "payload_not_json",
            Reject::DuplicateSequence => "duplicate_sequence",
            Reject::QueueFull => "queue_full",
            Reject::RateLimited => "rate_limited",
            Reject::Policy => "policy",
            Reject::BadFlags => "bad_flags",
            Reject::UnknownDevice => "unknown_device",
            Reject::BadMac => "bad_mac",
            Reject::Replay => "replay",
            Reject::Denied => "denied",
            Reject::Unauthenticated => "unauthenticated",
        }
    }
}

/// One plain counter per [`Reject`] reason. Owned by one core; never shared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RejectCounters(pub [u64; Reject::ALL.len()]);

impl RejectCounters {
    /// Counts one reject.
    #[inline]
    pub fn bump(&mut self, r: Reject) {
        self.0[r as usize] += 1;
    }
    /// The count for one reason.
    pub fn get(&self, r: Reject) -> u64 {
        self.0[r as usize]
    }
    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    /// Adds another set of counters (per-shard totals into a summary).
    pub fn add(&mut self, other: &RejectCounters) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
}

/// Parser settings taken from `[protocol]` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseOptions {
    /// Longest payload accepted, in bytes.
    pub max_payload: usize,
    /// Reject payloads that are not JSON.
    pub validate_json: bool,
}

/// A parsed datagram (v1 or v2) borrowing the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Protocol version: 1 or 2.
    pub version: u8,
    /// v2 flags (`V2_FLAG_*`); 0 for v1.
    pub flags: u8,
    /// The v2 MAC trailer, when the authenticated flag is set.
    pub mac: Option<&'a [u8; MAC_LEN]>,
    /// The bytes the MAC covers (everything before it); the whole datagram
    /// when there is no MAC.
    pub signed: &'a [u8],
    /// The 16 raw id bytes, padding included (what the hash and the kernel see).
    pub raw_id: &'a [u8; DEVICE_ID_LEN],
    /// The id as text, NUL padding trimmed.
    pub device_id: &'a str,
    /// The device's sequence number.
    pub sequence: u32,
    /// The application payload, unchanged.
    pub payload: &'a [u8],
}

impl Datagram<'_> {
    /// FNV-1a 64 of the raw id: the device's shard and kernel bucket key.
    #[inline]
    pub fn device_hash(&self) -> u64 {
        device_hash(self.raw_id)
    }
}

/// Parses one datagram. Checks run in the order of DESIGN.md §2, so each packet
/// is rejected for its first fault; JSON validation (the only costly check) runs
/// last and only when enabled.
#[inline]
pub fn parse<'a>(buf: &'a [u8], opts: &ParseOptions) -> Result<Datagram<'a>, Reject> {
    let Some((header, payload)) = buf.split_first_chunk::<HEADER_LEN>() else {
        return Err(Reject::TooShort);
    };
    let (version, flags, mac, signed, payload) = match u16::from_be_bytes([header[0], header[1]]) {
        MAGIC_V1 => (1, 0, None, buf, payload),
        MAGIC_V2 => {
            let [flags, reserved, body @ ..] = payload else {
                return Err(Reject::TooShort);
            };
            if flags & !V2_FLAGS_KNOWN != 0 || *reserved != 0 {
                return Err(Reject::BadFlags);
            }
            if flags & V2_FLAG_AUTHENTICATED != 0 {
                let Some((body, mac)) = body.split_last_chunk::<MAC_LEN>() else {
                    return Err(Reject::TooShort);
                };
                (2, *flags, Some(mac), &buf[..buf.len() - MAC_LEN], body)
            } else {
                (2, *flags, None, buf, body)
            }
        }
        _ => return Err(Reject::BadMagic),
    };
    let raw_id: &[u8; DEVICE_ID_LEN] = header[2..18].try_into().map_err(|_| Reject::TooShort)?;
    let device_id = device_id_text(raw_id)?;
    let sequence = u32::from_be_bytes([header[18], header[19], header[20], header[21]]);
    if payload.len() > opts.max_payload {
        return Err(Reject::PayloadTooLarge);
    }
    if opts.validate_json && !is_json(payload) {
        return Err(Reject::PayloadNotJson);
    }
    Ok(Datagram {
        version,
        flags,
        mac,
        signed,
        raw_id,
        device_id,
        sequence,
        payload,
    })
}

/// The id text: bytes up to the first NUL; everything after it must be NUL too.
///
/// Fast path for the common case, an ASCII id: the 16 bytes as one u128, the
/// non-NUL bytes must form a prefix; no loop, no branch per byte. Non-ASCII
/// ids take the general path through `str::from_utf8`.
#[inline]
fn device_id_text(raw: &[u8; DEVICE_ID_LEN]) -> Result<&str, Reject> {
    const LOW7: u128 = 0x7f7f_7f7f_7f7f_7f7f_7f7f_7f7f_7f7f_7f7f;
    const HIGH: u128 = !LOW7;
    let v = u128::from_le_bytes(*raw);
    if v & HIGH == 0 {
        // Exact per-byte "is non-zero" flags in each byte's high bit (no carries
        // cross bytes because every byte is below 0x80).
        let nonzero = (v + LOW7) & HIGH;
        // Byte i (memory order) is bits 8i..8i+7 on a little-endian load.
        let len = (!nonzero & HIGH).trailing_zeros() as usize / 8;
        if len == 0 {
            return Err(if v == 0 {
                Reject::DeviceIdEmpty
            } else {
                Reject::DeviceIdNotUtf8
            });
        }
        if len < DEVICE_ID_LEN && nonzero >> (8 * len) != 0 {
            return Err(Reject::DeviceIdNotUtf8);
        }
        // SAFETY: every byte of `raw` is below 0x80 (checked: `v & HIGH == 0`),
        // and ASCII bytes are always valid UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(&raw[..len]) });
    }
    let len = raw.iter().position(|&b| b == 0).unwrap_or(DEVICE_ID_LEN);
    if len == 0 || raw[len..].iter().any(|&b| b != 0) {
        return Err(Reject::DeviceIdNotUtf8);
    }
    std::str::from_utf8(&raw[..len]).map_err(|_| Reject::DeviceIdNotUtf8)
}

/// JSON validity without building a value: serde_json into `IgnoredAny` (no
/// allocation for objects, arrays or unescaped strings). Chosen over simd-json by
/// the `wire` benchmark (docs/figures.md): simd-json needs a mutable copy of the
/// payload and its setup cost dominates at IoT payload sizes.
#[inline]
pub fn is_json(payload: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
}

/// Why [`encode`] refused its input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    /// Device ids are at most 16 bytes of UTF-8.
    #[error("device id is {len} bytes; protocol v1 allows 1..=16")]
    DeviceIdLength {
        /// Byte length of the id given.
        len: usize,
    },
    /// A NUL inside the id would be read as padding.
    #[error("device id contains a NUL byte")]
    DeviceIdNul,
    /// The output buffer cannot hold the datagram.
    #[error("buffer of {have} bytes cannot hold a {need}-byte datagram")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// Writes a v1 datagram into `out` and returns its length. No allocation, so
/// generators can reuse one buffer per socket.
pub fn encode(
    device_id: &str,
    sequence: u32,
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let id = device_id.as_bytes();
    if id.is_empty() || id.len() > DEVICE_ID_LEN {
        return Err(EncodeError::DeviceIdLength { len: id.len() });
    }
    if id.contains(&0) {
        return Err(EncodeError::DeviceIdNul);
    }
    let need = HEADER_LEN + payload.len();
    if out.len() < need {
        return Err(EncodeError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    out[0..2].copy_from_slice(&MAGIC_V1.to_be_bytes());
    out[2..2 + id.len()].copy_from_slice(id);
    out[2 + id.len()..18].fill(0);
    out[18..22].copy_from_slice(&sequence.to_be_bytes());
    out[22..need].copy_from_slice(payload);
    Ok(need)
}

/// A device's 128-bit v2 key (SipHash-2-4 key, the reference byte order).
pub type DeviceKey = [u8; 16];

/// The v2 MAC of `signed` (every datagram byte before the MAC) under `key`.
#[inline]
pub fn mac(key: &DeviceKey, signed: &[u8]) -> [u8; MAC_LEN] {
    siphasher::sip::SipHasher24::new_with_key(key)
        .hash(signed)
        .to_le_bytes()
}

/// Writes a v2 datagram into `out` and returns its length: with `key`, the
/// authenticated flag is set and the MAC appended. No allocation.
pub fn encode_v2(
    device_id: &str,
    sequence: u32,
    flags: u8,
    payload: &[u8],
    key: Option<&DeviceKey>,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let mac_len = if key.is_some() { MAC_LEN } else { 0 };
    let need = V2_HEADER_LEN + payload.len() + mac_len;
    if out.len() < need {
        return Err(EncodeError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    let mut head = [0u8; HEADER_LEN];
    encode(device_id, sequence, &[], &mut head)?;
    out[..HEADER_LEN].copy_from_slice(&head);
    out[0..2].copy_from_slice(&MAGIC_V2.to_be_bytes());
    let flags = (flags & V2_FLAG_URGENT)
        | if key.is_some() {
            V2_FLAG_AUTHENTICATED
        } else {
            0
        };
    out[22] = flags;
    out[23] = 0;
    out[V2_HEADER_LEN..V2_HEADER_LEN + payload.len()].copy_from_slice(payload);
    if let Some(key) = key {
        let end = V2_HEADER_LEN + payload.len();
        let tag = mac(key, &out[..end]);
        out[end..need].copy_from_slice(&tag);
    }
    Ok(need)
}

/// Pads a device id to its 16 raw bytes (what the kernel and the hash see).
pub fn raw_device_id(device_id: &str) -> Result<[u8; DEVICE_ID_LEN], EncodeError> {
    let mut buf = [0u8; HEADER_LEN];
    encode(device_id, 0, &[], &mut buf)?;
    let mut raw = [0u8; DEVICE_ID_LEN];
    raw.copy_from_slice(&buf[2..18]);
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LAX: ParseOptions = ParseOptions {
        max_payload: MAX_DATAGRAM,
        validate_json: false,
    };
    const STRICT: ParseOptions = ParseOptions {
        max_payload: 1024,
        validate_json: true,
    };

    fn datagram(id: &str, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN + payload.len()];
        let n = encode(id, seq, payload, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn a_valid_datagram_parses_into_a_borrowed_view() {
        let buf = datagram("sensor-0001", 42, br#"{"t":21.5}"#);
        let d = parse(&buf, &STRICT).unwrap();
        assert_eq!(d.device_id, "sensor-0001");
        assert_eq!(d.sequence, 42);
        assert_eq!(d.payload, br#"{"t":21.5}"#);
        assert_eq!(&d.raw_id[..11], b"sensor-0001");
        assert!(d.raw_id[11..].iter().all(|&b| b == 0));
        assert_eq!(
            d.payload.as_ptr(),
            buf[22..].as_ptr(),
            "payload is borrowed, not copied"
        );
    }

    const KEY: DeviceKey = *b"0123456789abcdef";

    fn v2(id: &str, seq: u32, flags: u8, payload: &[u8], key: Option<&DeviceKey>) -> Vec<u8> {
        let mut buf = vec![0u8; V2_HEADER_LEN + payload.len() + MAC_LEN];
        let n = encode_v2(id, seq, flags, payload, key, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn the_mac_is_siphash_2_4_as_in_the_reference_vectors() {
        // SipHash paper, appendix A: key 00..0f, message 00..0e.
        let key: DeviceKey = std::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(
            mac(&key, &msg),
            [0xe5, 0x45, 0xbe, 0x49, 0x61, 0xca, 0x29, 0xa1]
        );
    }

    #[test]
    fn a_v2_datagram_keeps_v1_offsets_and_carries_flags_and_mac() {
        let buf = v2("sensor-7", 9, V2_FLAG_URGENT, br#"{"a":1}"#, Some(&KEY));
        let d = parse(&buf, &STRICT).unwrap();
        assert_eq!((d.version, d.device_id, d.sequence), (2, "sensor-7", 9));
        assert_eq!(d.flags, V2_FLAG_URGENT | V2_FLAG_AUTHENTICATED);
        assert_eq!(d.payload, br#"{"a":1}"#);
        assert_eq!(d.signed, &buf[..buf.len() - MAC_LEN]);
        assert_eq!(d.mac.unwrap(), &mac(&KEY, d.signed));
        assert_eq!(&buf[2..22], &datagram("sensor-7", 9, b"")[2..22]);
        let plain = v2("sensor-7", 10, 0, b"{}", None);
        let d = parse(&plain, &STRICT).unwrap();
        assert_eq!(
            (d.version, d.flags, d.mac, d.payload),
            (2, 0, None, &b"{}"[..])
        );
    }

    #[test]
    fn v2_framing_faults_have_their_own_reasons() {
        let mut buf = v2("d", 1, 0, b"{}", Some(&KEY));
        assert_eq!(parse(&buf[..23], &LAX), Err(Reject::TooShort));
        assert_eq!(
            parse(&buf[..V2_HEADER_LEN + 7], &LAX),
            Err(Reject::TooShort)
        );
        buf[22] |= 0x80;
        assert_eq!(parse(&buf, &LAX), Err(Reject::BadFlags));
        buf[22] &= 0x7f;
        buf[23] = 1;
        assert_eq!(parse(&buf, &LAX), Err(Reject::BadFlags));
        buf[23] = 0;
        buf[1] = 0x57;
        assert_eq!(parse(&buf, &LAX), Err(Reject::BadMagic));
    }

    #[test]
    fn zero_and_twenty_one_bytes_are_too_short() {
        assert_eq!(parse(&[], &LAX), Err(Reject::TooShort));
        assert_eq!(parse(&[0xAA; 21], &LAX), Err(Reject::TooShort));
    }

    #[test]
    fn a_header_with_an_empty_payload_is_accepted_without_validation() {
        let buf = datagram("d", 1, b"");
        assert_eq!(parse(&buf, &LAX).unwrap().payload, b"");
        assert_eq!(parse(&buf, &STRICT), Err(Reject::PayloadNotJson));
    }

    #[test]
    fn wrong_magic_is_rejected() {
        let mut buf = datagram("d", 1, b"{}");
        buf[0] = 0x55;
        buf[1] = 0xAA;
        assert_eq!(parse(&buf, &LAX), Err(Reject::BadMagic));
    }

    #[test]
    fn an_all_nul_device_id_is_empty() {
        let mut buf = datagram("d", 1, b"{}");
        buf[2] = 0;
        assert_eq!(parse(&buf, &LAX), Err(Reject::DeviceIdEmpty));
    }

    #[test]
    fn invalid_utf8_in_the_device_id_is_rejected() {
        let mut buf = datagram("abcd", 1, b"{}");
        buf[3] = 0xC3; // lead byte followed by 'c', not a continuation byte
        assert_eq!(parse(&buf, &LAX), Err(Reject::DeviceIdNotUtf8));
    }

    #[test]
    fn bytes_after_the_nul_padding_are_rejected() {
        let mut buf = datagram("ab", 1, b"{}");
        buf[10] = b'x';
        assert_eq!(parse(&buf, &LAX), Err(Reject::DeviceIdNotUtf8));
        let mut buf = datagram("ab", 1, b"{}");
        buf[2] = 0; // leading NUL then text
        assert_eq!(parse(&buf, &LAX), Err(Reject::DeviceIdNotUtf8));
    }

    #[test]
    fn a_sixteen_byte_id_uses_the_whole_field() {
        let buf = datagram("0123456789abcdef", 7, b"{}");
        assert_eq!(parse(&buf, &LAX).unwrap().device_id, "0123456789abcdef");
    }

    #[test]
    fn a_64_kib_datagram_is_over_the_payload_maximum() {
        let mut buf = vec![b' '; 64 * 1024];
        let n = encode("big", 1, &[b' '; 64 * 1024 - HEADER_LEN], &mut buf).unwrap();
        assert_eq!(parse(&buf[..n], &STRICT), Err(Reject::PayloadTooLarge));
    }

    #[test]
    fn the_payload_maximum_is_inclusive() {
        let opts = ParseOptions {
            max_payload: 4,
            validate_json: false,
        };
        assert!(parse(&datagram("d", 1, b"1234"), &opts).is_ok());
        assert_eq!(
            parse(&datagram("d", 1, b"12345"), &opts),
            Err(Reject::PayloadTooLarge)
        );
    }

    #[test]
    fn invalid_json_is_rejected_only_when_validation_is_on() {
        let buf = datagram("d", 1, br#"{"t":"#);
        assert_eq!(parse(&buf, &STRICT), Err(Reject::PayloadNotJson));
        assert!(parse(&buf, &LAX).is_ok());
    }

    #[test]
    fn encode_refuses_ids_the_protocol_cannot_carry() {
        let mut buf = [0u8; 64];
        assert_eq!(
            encode("", 0, b"", &mut buf),
            Err(EncodeError::DeviceIdLength { len: 0 })
        );
        assert_eq!(
            encode("0123456789abcdefg", 0, b"", &mut buf),
            Err(EncodeError::DeviceIdLength { len: 17 })
        );
        assert_eq!(
            encode("a\0b", 0, b"", &mut buf),
            Err(EncodeError::DeviceIdNul)
        );
        assert_eq!(
            encode("a", 0, &[0; 64], &mut buf),
            Err(EncodeError::BufferTooSmall { need: 86, have: 64 })
        );
    }

    #[test]
    fn reject_names_are_distinct() {
        let mut names: Vec<_> = Reject::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reject::ALL.len());
        for (i, r) in Reject::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    fn device_id_strategy() -> impl Strategy<Value = String> {
        // 1..=16 bytes of UTF-8 without NUL.
        "[^\u{0}]{1,16}".prop_filter("fits 16 bytes", |s| {
            !s.is_empty() && s.len() <= DEVICE_ID_LEN
        })
    }

    /// The obvious definition the fast path must agree with.
    fn device_id_reference(raw: &[u8; 16]) -> Result<&str, Reject> {
        let len = raw.iter().position(|&b| b == 0).unwrap_or(16);
        if raw.iter().all(|&b| b == 0) {
            return Err(Reject::DeviceIdEmpty);
        }
        if len == 0 || raw[len..].iter().any(|&b| b != 0) {
            return Err(Reject::DeviceIdNotUtf8);
        }
        std::str::from_utf8(&raw[..len]).map_err(|_| Reject::DeviceIdNotUtf8)
    }

    proptest! {
        #[test]
        fn the_device_id_fast_path_agrees_with_the_definition(
            bytes in proptest::collection::vec(
                prop_oneof![Just(0u8), 1u8..0x80, any::<u8>()], 16),
            cut in 0usize..=16,
        ) {
            let mut raw = [0u8; 16];
            raw.copy_from_slice(&bytes);
            prop_assert_eq!(device_id_text(&raw), device_id_reference(&raw));
            // Well-formed padding: text then NULs.
            raw[cut..].fill(0);
            prop_assert_eq!(device_id_text(&raw), device_id_reference(&raw));
        }

        #[test]
        fn encode_then_parse_round_trips(
            id in device_id_strategy(),
            seq in any::<u32>(),
            payload in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let buf = datagram(&id, seq, &payload);
            let d = parse(&buf, &LAX).unwrap();
            prop_assert_eq!(d.device_id, id.as_str());
            prop_assert_eq!(d.sequence, seq);
            prop_assert_eq!(d.payload, &payload[..]);
            prop_assert_eq!(d.device_hash(), fnv1a64(&raw_device_id(&id).unwrap()));
        }

        #[test]
        fn json_payloads_round_trip_with_validation_on(
            id in device_id_strategy(),
            seq in any::<u32>(),
            t in any::<i32>(),
            s in "[a-z ]{0,40}",
        ) {
            let payload = serde_json::to_vec(&serde_json::json!({"t": t, "s": s})).unwrap();
            let buf = datagram(&id, seq, &payload);
            let d = parse(&buf, &STRICT).unwrap();
            prop_assert_eq!(d.payload, &payload[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = parse(&bytes, &STRICT);
            let _ = parse(&bytes, &LAX);
        }

        #[test]
        fn arbitrary_bytes_behind_a_valid_magic_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut buf = vec![0xAA, 0x55];
            buf.extend_from_slice(&bytes);
            let _ = parse(&buf, &STRICT);
        }
    }
}
