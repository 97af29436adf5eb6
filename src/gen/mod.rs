//! Traffic generator: devices speaking wire protocol v1 toward a klais.
//!
//! Used by `klais gen`, by `klais demo`, by the tests and by perf runs, so all of
//! them send the same traffic. Seeded and reproducible: device `i` is
//! `dev-{i:08}`, devices take turns, each device's sequence starts at 0 and
//! rises by one, and the malformed share is chosen by a seeded xorshift.
//! Every payload is JSON carrying the send time and the sequence
//! (`{"ts_ns":…,"seq":…,"pad":"…"}`), so a receiver computes latency and loss
//! exactly. One buffer is reused: sending allocates nothing per datagram.
//!
//! The scenario generator of the models issue (storms, floods, sweeps) grows
//! out of this module rather than beside it.

use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::wire::{self, HEADER_LEN};

/// What to send.
#[derive(Debug, Clone, PartialEq)]
pub struct GenSpec {
    /// Destination (a klais listen address).
    pub target: SocketAddr,
    /// Device population.
    pub devices: u32,
    /// Datagrams per second; 0 sends as fast as the socket takes them.
    pub rate_pps: u64,
    /// Stop after this many datagrams (None: until `duration` or stopped).
    pub count: Option<u64>,
    /// Stop after this long (None: until `count` or stopped).
    pub duration: Option<Duration>,
    /// Payload size in bytes (at least the JSON skeleton, ~40 bytes).
    pub payload_bytes: usize,
    /// Malformed datagrams per million (too short, bad magic, invalid JSON in turn).
    pub malformed_ppm: u32,
    /// Seed for the malformed choice.
    pub seed: u64,
    /// Send protocol v2, authenticated: device `i`'s key is `v2_keys[i]`
    /// ([`keys_for_devices`]). None: protocol v1.
    pub v2_keys: Option<std::sync::Arc<Vec<wire::DeviceKey>>>,
}

/// The v2 key of every generated device `dev-00000000 … dev-{n-1}` from a
/// key table; the error names the first device without one and the fix.
pub fn keys_for_devices(
    table: &crate::shard::auth::KeyTable,
    devices: u32,
) -> Result<Vec<wire::DeviceKey>, String> {
    (0..devices)
        .map(|d| {
            let mut id = [0u8; 16];
            let n = device_name(d, &mut id);
            let name = std::str::from_utf8(&id[..n]).unwrap_or("dev");
            let raw = wire::raw_device_id(name).map_err(|e| e.to_string())?;
            table.key_of(&raw).copied().ok_or_else(|| {
                format!("the key file has no key for {name}; `klais keys generate --devices {devices} --out FILE` writes keys for every generated device")
            })
        })
        .collect()
}

/// Key-file text for the generated devices `dev-00000000 …`, with random
/// 128-bit keys from the kernel's generator (`getrandom`).
pub fn generate_keys(devices: u32) -> io::Result<String> {
    let mut out = String::with_capacity(devices as usize * 46 + 64);
    out.push_str("# klais v2 device keys (klais keys generate): <device id> <128-bit key, hex>\n");
    for d in 0..devices {
        let key = crate::shard::auth::random_key()?;
        let mut id = [0u8; 16];
        let n = device_name(d, &mut id);
        out.push_str(std::str::from_utf8(&id[..n]).unwrap_or("dev"));
        out.push(' ');
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for b in key {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        out.push('\n');
    }
    Ok(out)
}

/// Turns the v1 datagram of `len` bytes in `buf` into an authenticated v2
/// one under `key` (payload moved 2 bytes on, flags, MAC appended); returns
/// its length. `buf` must have 10 bytes to spare. Allocates nothing.
pub fn to_v2(buf: &mut [u8], len: usize, key: &wire::DeviceKey) -> usize {
    buf.copy_within(HEADER_LEN..len, wire::V2_HEADER_LEN);
    buf[..2].copy_from_slice(&wire::MAGIC_V2.to_be_bytes());
    buf[22] = wire::V2_FLAG_AUTHENTICATED;
    buf[23] = 0;
    let end = len + 2;
    let tag = wire::mac(key, &buf[..end]);
    buf[end..end + wire::MAC_LEN].copy_from_slice(&tag);
    end + wire::MAC_LEN
}

impl Default for GenSpec {
    fn default() -> Self {
        Self {
            target: SocketAddr::from(([127, 0, 0, 1], 7700)),
            devices: 10_000,
            rate_pps: 10_000,
            count: None,
            duration: Some(Duration::from_secs(10)),
            payload_bytes: 200,
            malformed_ppm: 0,
            seed: 1,
            v2_keys: None,
        }
    }
}

/// What was sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenReport {
    /// Well-formed datagrams sent.
    pub sent_valid: u64,
    /// Deliberately malformed datagrams sent.
    pub sent_malformed: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Sends the kernel refused (ENOBUFS and the like); not retried.
    pub send_errors: u64,
    /// Wall time spent sending, ns.
    pub elapsed_ns: u64,
}

pub use crate::scenario::device_name;

/// Writes one well-formed v1 datagram of device `dev` (`dev-{dev:08}`) with
/// sequence `seq` into `buf`: header, then JSON `{"ts_ns":…,"seq":…,"pad":"x…"}`
/// padded to `payload_bytes` (at least the skeleton). Returns its length.
/// `buf` must hold [`HEADER_LEN`] + `payload_bytes` bytes. Allocates nothing.
pub fn write_message(
    dev: u32,
    seq: u32,
    ts_ns: u64,
    payload_bytes: usize,
    buf: &mut [u8],
) -> usize {
    let mut id = [0u8; 16];
    let id_len = device_name(dev, &mut id);
    let id_str = std::str::from_utf8(&id[..id_len]).unwrap_or("dev");
    let body = &mut buf[HEADER_LEN..];
    let cap = payload_bytes.min(body.len());
    let mut cur = io::Cursor::new(&mut body[..cap]);
    let _ = write!(cur, "{{\"ts_ns\":{ts_ns},\"seq\":{seq},\"pad\":\"");
    let used = cur.position() as usize;
    let payload_len = if used + 2 <= cap {
        let pad = cap - used - 2;
        body[used..used + pad].fill(b'x');
        body[used + pad..used + pad + 2].copy_from_slice(b"\"}");
        used + pad + 2
    } else {
        // Too small for the skeleton: the shortest valid JSON object.
        let mut cur = io::Cursor::new(&mut body[..]);
        let _ = write!(cur, "{{\"ts_ns\":{ts_ns},\"seq\":{seq}}}");
        cur.position() as usize
    };
    // The header in front (encode with an empty payload writes only the header).
    let mut header = [0u8; HEADER_LEN];
    let _ = wire::encode(id_str, seq, &[], &mut header);
    buf[..HEADER_LEN].copy_from_slice(&header);
    HEADER_LEN + payload_len
}

/// Turns a well-formed datagram of length `len` in `buf` into malformed kind
/// `kind` (0 too short, 1 bad magic, 2 payload not JSON); returns the new length.
pub fn make_malformed(kind: u8, buf: &mut [u8], len: usize) -> usize {
    match kind % 3 {
        0 => 21,
        1 => {
            buf[0] = 0xDE;
            buf[1] = 0xAD;
            len
        }
        _ => {
            buf[HEADER_LEN] = b'!';
            len
        }
    }
}

/// Fills `buf` with datagram number `n` of the stream and returns its length.
fn build(spec: &GenSpec, seqs: &mut [u32], n: u64, malformed: Option<u8>, buf: &mut [u8]) -> usize {
    let dev = (n % u64::from(spec.devices)) as u32;
    let seq = seqs[dev as usize];
    seqs[dev as usize] = seq.wrapping_add(1);
    let len = write_message(dev, seq, crate::clock::now_ns(), spec.payload_bytes, buf);
    let len = match &spec.v2_keys {
        Some(keys) => to_v2(buf, len, &keys[dev as usize]),
        None => len,
    };
    match malformed {
        None => len,
        Some(k) => make_malformed(k, buf, len),
    }
}

/// A UDP socket of `to`'s family on an ephemeral port, connected to `to`.
fn connect(to: SocketAddr) -> io::Result<UdpSocket> {
    let bind: SocketAddr = if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = UdpSocket::bind(bind)?;
    sock.connect(to)?;
    Ok(sock)
}

/// Sends until `count`, `duration` or `stop`, pacing to `rate_pps` in batches.
pub fn run(spec: &GenSpec, stop: &AtomicBool) -> io::Result<GenReport> {
    if spec.devices == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "devices must be at least 1",
        ));
    }
    let sock = connect(spec.target)?;
    if spec
        .v2_keys
        .as_ref()
        .is_some_and(|k| k.len() < spec.devices as usize)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "fewer v2 keys than devices",
        ));
    }
    // v2 adds 2 header bytes and an 8-byte MAC.
    let mut buf = vec![0u8; HEADER_LEN + spec.payload_bytes.max(64) + 10];
    let mut seqs = vec![0u32; spec.devices as usize];
    let mut rng = spec.seed | 1;
    let mut report = GenReport::default();
    let start = Instant::now();
    let batch: u64 = 64;
    let mut n: u64 = 0;
    let mut malformed_kind = 0u8;
    'outer: loop {
        for _ in 0..batch {
            if spec.count.is_some_and(|c| n >= c) {
                break 'outer;
            }
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let bad = spec.malformed_ppm > 0 && (rng % 1_000_000) < u64::from(spec.malformed_ppm);
            let kind = if bad {
                malformed_kind = (malformed_kind + 1) % 3;
                Some(malformed_kind)
            } else {
                None
            };
            let len = build(spec, &mut seqs, n, kind, &mut buf);
            match sock.send(&buf[..len]) {
                Ok(_) => {
                    if bad {
                        report.sent_malformed += 1;
                    } else {
                        report.sent_valid += 1;
                    }
                    report.bytes += len as u64;
                }
                Err(_) => report.send_errors += 1,
            }
            n += 1;
        }
        if stop.load(Ordering::Relaxed) || spec.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        if spec.rate_pps > 0 {
            let due = Duration::from_secs_f64(n as f64 / spec.rate_pps as f64);
            let el = start.elapsed();
            if due > el {
                std::thread::sleep(due - el);
            }
        }
    }
    report.elapsed_ns = start.elapsed().as_nanos() as u64;
    Ok(report)
}

/// What a scenario replay sent, per label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScenarioReport {
    /// Datagrams sent per [`crate::scenario::Label`] (normal, flood, sweep,
    /// replay, malformed).
    pub sent: [u64; 5],
    /// Sends the kernel refused.
    pub send_errors: u64,
    /// Wall time, ns.
    pub elapsed_ns: u64,
}

/// Sends a scenario's datagrams (the [`crate::scenario`] generator, the same
/// stream training and the simulator use) at their virtual times divided by
/// `speed` (2.0 = twice as fast), until it ends, `max` or `stop`. Each
/// datagram's JSON carries its send time (`ts_ns`) and its sequence.
pub fn run_scenario(
    spec: crate::scenario::Spec,
    to: SocketAddr,
    speed: f64,
    max: Option<Duration>,
    stop: &AtomicBool,
) -> io::Result<ScenarioReport> {
    let sock = connect(to)?;
    let mut buf = vec![0u8; 2048];
    let mut r = ScenarioReport::default();
    let start = Instant::now();
    let speed = speed.max(1e-3);
    for (k, p) in crate::scenario::Generator::new(spec).enumerate() {
        let due = Duration::from_secs_f64(p.t_ns as f64 / 1e9 / speed);
        if max.is_some_and(|m| due >= m) {
            break;
        }
        if k % 64 == 0 && stop.load(Ordering::Relaxed) {
            break;
        }
        let el = start.elapsed();
        if due > el + Duration::from_micros(200) {
            std::thread::sleep(due - el);
        }
        let n = p.write(crate::clock::now_ns(), &mut buf);
        match sock.send(&buf[..n]) {
            Ok(_) => r.sent[p.label as usize] += 1,
            Err(_) => r.send_errors += 1,
        }
    }
    r.elapsed_ns = start.elapsed().as_nanos() as u64;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{parse, ParseOptions, Reject};

    #[test]
    fn generated_v2_datagrams_verify_under_the_generated_keys() {
        let text = generate_keys(5).unwrap();
        let table = crate::shard::auth::KeyTable::parse(&text).unwrap();
        assert_eq!(table.len(), 5);
        let keys = keys_for_devices(&table, 5).unwrap();
        assert!(keys_for_devices(&table, 6)
            .unwrap_err()
            .contains("dev-00000005"));
        let spec = GenSpec {
            devices: 5,
            payload_bytes: 100,
            v2_keys: Some(std::sync::Arc::new(keys)),
            ..GenSpec::default()
        };
        let auth = crate::shard::auth::Auth::new(&table);
        let mut seqs = vec![0; 5];
        let mut buf = vec![0; 512];
        let opts = ParseOptions {
            max_payload: 1400,
            validate_json: true,
        };
        for n in 0..10 {
            let len = build(&spec, &mut seqs, n, None, &mut buf);
            let d = parse(&buf[..len], &opts).unwrap();
            assert_eq!(d.version, 2);
            assert_eq!(
                auth.verify(d.device_hash(), d.raw_id, d.signed, d.mac.unwrap()),
                Ok(())
            );
        }
    }

    #[test]
    fn generated_datagrams_parse_with_json_validation_and_rising_sequences() {
        let spec = GenSpec {
            devices: 3,
            payload_bytes: 120,
            ..GenSpec::default()
        };
        let mut seqs = vec![0; 3];
        let mut buf = vec![0; 512];
        let opts = ParseOptions {
            max_payload: 1400,
            validate_json: true,
        };
        for n in 0..9u64 {
            let len = build(&spec, &mut seqs, n, None, &mut buf);
            let d = parse(&buf[..len], &opts).unwrap();
            assert_eq!(d.device_id, format!("dev-{:08}", n % 3));
            assert_eq!(d.sequence, (n / 3) as u32);
            assert_eq!(d.payload.len(), 120);
            let v: serde_json::Value = serde_json::from_slice(d.payload).unwrap();
            assert_eq!(v["seq"], n / 3);
        }
    }

    #[test]
    fn malformed_kinds_hit_three_distinct_reject_reasons() {
        let spec = GenSpec::default();
        let mut seqs = vec![0; spec.devices as usize];
        let mut buf = vec![0; 512];
        let opts = ParseOptions {
            max_payload: 1400,
            validate_json: true,
        };
        let mut got = Vec::new();
        for k in 0..3 {
            let len = build(&spec, &mut seqs, 0, Some(k), &mut buf);
            got.push(parse(&buf[..len], &opts).unwrap_err());
        }
        assert_eq!(
            got,
            vec![Reject::TooShort, Reject::BadMagic, Reject::PayloadNotJson]
        );
    }
}
