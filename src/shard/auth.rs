//! Device authentication for protocol v2 (wire format in [`crate::wire`]):
//! per-port policy, per-device keys, MAC check and replay window.
//!
//! - **Policy per port** ([`PortPolicies`]): `v1` takes v1 only, `v2` takes
//!   authenticated v2 only, `both` takes v1 and v2 (a v2 datagram that says it
//!   is authenticated must then verify). A datagram the port's policy does not
//!   take is rejected as `policy`.
//! - **MAC**: SipHash-2-4, 64-bit tag, 128-bit key per device
//!   (docs/protocol.md, "Protocol v2: device authentication", has the measurement behind the choice: a PRF made
//!   for short inputs, ~3× cheaper than HMAC-SHA256 at telemetry sizes). Checked
//!   on the shard that received the datagram, against its own copy of the key
//!   table, so a forged datagram never crosses the shard mesh; compared in
//!   constant time.
//! - **Replay window** (RFC 4303 style, [`REPLAY_WINDOW`] sequences): on the
//!   shard that owns the device (it alone sees all of the device's traffic), only
//!   after the MAC verified (so forged sequences cannot move the window). A
//!   sequence above the highest seen moves the window; one inside it is taken
//!   once; one below it is a replay. A v2 device therefore keeps its sequence
//!   across restarts (or gets a new key: a key change resets its window); its
//!   resent copy of a message the Dam dropped counts as a replay.
//!
//! Per packet this allocates nothing: each shard's table is built at start
//! with an entry for every device in the key file.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};

use crate::wire::{self, DeviceKey, Reject, DEVICE_ID_LEN, MAC_LEN};

/// Sequences the replay window remembers below the highest one seen.
pub const REPLAY_WINDOW: u32 = 64;
const _: () = assert!(REPLAY_WINDOW <= 64, "the window is one u64 of bits");

pub use crate::wire::policy::{Policy, PortPolicies, MAX_PORT_POLICIES};

/// Why the replay state (`auth.replay_state`) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplayStateError {
    /// The file exists but cannot be read.
    #[error("auth.replay_state: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line is not `<device id> <sequence> <key fingerprint>`.
    #[error("auth.replay_state: {path} line {line}: expected `<device id> <sequence> <key fingerprint>` (delete the file to start the windows empty)")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("auth.keys: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Group or other users may read it.
    #[error("auth.keys: {path} is readable by other users (mode {mode:o}); `chmod 600 {path}` and own it by klais's user")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// A line is not `<device id> <32 hex digits>`.
    #[error("auth.keys: {path} line {line}: {reason} (expected `<device id> <32 hex digits>`)")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Every device's key, from the key file.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeyTable {
    keys: Vec<([u8; DEVICE_ID_LEN], DeviceKey)>,
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys.
        write!(f, "KeyTable({} devices)", self.keys.len())
    }
}

impl KeyTable {
    /// Reads a key file: one device per line, `<device id> <key>`, the key as
    /// 32 hex digits (128 bits); `#` starts a comment. The file must not be
    /// readable by group or others.
    pub fn load(path: &Path) -> Result<KeyTable, KeyFileError> {
        use std::os::unix::fs::PermissionsExt;
        let read = |source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        KeyTable::parse(&text).map_err(|(line, reason)| KeyFileError::Line {
            path: path.to_owned(),
            line,
            reason,
        })
    }

    /// Parses key-file text; errors give the line number and the fault.
    pub fn parse(text: &str) -> Result<KeyTable, (usize, String)> {
        let mut keys = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut it = line.split_whitespace();
            let (Some(id), Some(hex), None) = (it.next(), it.next(), it.next()) else {
                return Err((i + 1, "not two fields".into()));
            };
            let raw = wire::raw_device_id(id).map_err(|e| (i + 1, e.to_string()))?;
            let key = parse_key(hex).ok_or((i + 1, "the key is not 32 hex digits".into()))?;
            if !seen.insert(raw) {
                return Err((i + 1, format!("device {id} is listed twice")));
            }
            // The shards key their tables by the device hash: two ids with
            // one hash would share a key slot (astronomically rare; refused).
            if !hashes.insert(wire::device_hash(&raw)) {
                return Err((
                    i + 1,
                    format!("device {id} has the same FNV-1a hash as a device listed before it; rename one"),
                ));
            }
            keys.push((raw, key));
        }
        Ok(KeyTable { keys })
    }

    /// Devices with a key.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no device has a key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key of a device (tests, the generator).
    pub fn key_of(&self, raw_id: &[u8; DEVICE_ID_LEN]) -> Option<&DeviceKey> {
        self.keys.iter().find(|(r, _)| r == raw_id).map(|(_, k)| k)
    }
}

/// A random 128-bit key from the kernel's generator (`getrandom`).
pub fn random_key() -> std::io::Result<DeviceKey> {
    let mut key = [0u8; 16];
    let mut filled = 0;
    while filled < key.len() {
        // SAFETY: getrandom writes at most the given length into `key`.
        let r =
            unsafe { libc::getrandom(key[filled..].as_mut_ptr().cast(), key.len() - filled, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += r as usize;
    }
    Ok(key)
}

fn parse_key(hex: &str) -> Option<DeviceKey> {
    let b = hex.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut key = [0u8; 16];
    for (i, k) in key.iter_mut().enumerate() {
        *k = nib(b[2 * i])? << 4 | nib(b[2 * i + 1])?;
    }
    Some(key)
}

/// The highest authenticated sequence of each device, kept across restarts
/// (`auth.replay_state`): saved at a clean stop, read at start, so a datagram
/// captured before a restart cannot be replayed after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayState {
    /// Device → (highest sequence, fingerprint of the key it was under).
    tops: HashMap<[u8; DEVICE_ID_LEN], (u32, u32)>,
}

/// A short fingerprint of a key (not the key): a saved window applies only
/// while the device keeps the same key, so a new key starts a new window.
pub fn key_fingerprint(key: &DeviceKey) -> u32 {
    let t = wire::mac(key, b"klais replay state");
    u32::from_le_bytes([t[0], t[1], t[2], t[3]])
}

impl ReplayState {
    /// Reads a state file (`<device id> <highest sequence> <key fingerprint>`
    /// per line); a
    /// missing file is an empty state (the first start).
    pub fn load(path: &Path) -> Result<ReplayState, ReplayStateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ReplayStateError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let mut tops = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = || ReplayStateError::Line {
                path: path.to_path_buf(),
                line: i + 1,
            };
            let mut it = line.split_whitespace();
            let (Some(id), Some(seq), Some(fp), None) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(bad());
            };
            let raw = wire::raw_device_id(id).map_err(|_| bad())?;
            let seq: u32 = seq.parse().map_err(|_| bad())?;
            let fp = u32::from_str_radix(fp, 16).map_err(|_| bad())?;
            tops.insert(raw, (seq, fp));
        }
        Ok(ReplayState { tops })
    }

    /// Records `top` as a device's highest sequence under the key with
    /// fingerprint `fp` (the higher one wins; a new key replaces the old).
    pub fn record(&mut self, raw_id: [u8; DEVICE_ID_LEN], top: u32, fp: u32) {
        let e = self.tops.entry(raw_id).or_insert((top, fp));
        *e = if e.1 == fp {
            (e.0.max(top), fp)
        } else {
            (top, fp)
        };
    }

    /// Devices in the state.
    pub fn len(&self) -> usize {
        self.tops.len()
    }

    /// True when no device is in the state.
    pub fn is_empty(&self) -> bool {
        self.tops.is_empty()
    }

    /// Writes the state (mode 600, through a temporary file and a rename, so
    /// a crash mid-write leaves the old state).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut text = String::from(
            "# klais replay state: <device id> <highest authenticated sequence> <key fingerprint>\n",
        );
        let mut rows: Vec<_> = self.tops.iter().collect();
        rows.sort();
        for (raw, (top, fp)) in rows {
            let len = raw.iter().position(|&b| b == 0).unwrap_or(DEVICE_ID_LEN);
            text.push_str(&String::from_utf8_lossy(&raw[..len]));
            text.push_str(&format!(" {top} {fp:08x}\n"));
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

/// The replay window of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest sequence taken.
    top: u32,
    /// Bit i: sequence `top - i` was taken.
    bits: u64,
    /// Anything taken yet.
    seen: bool,
}

impl ReplayWindow {
    /// Takes `seq` if it is new: above the window's top, or inside the
    /// window and not taken yet. False: a replay.
    #[inline]
    pub fn take(&mut self, seq: u32) -> bool {
        if !self.seen || seq > self.top {
            let shift = if self.seen {
                seq - self.top
            } else {
                REPLAY_WINDOW
            };
            self.bits = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.bits << shift
            } | 1;
            self.top = seq;
            self.seen = true;
            return true;
        }
        let back = self.top - seq;
        if back >= REPLAY_WINDOW {
            return false;
        }
        let bit = 1u64 << back;
        if self.bits & bit != 0 {
            return false;
        }
        self.bits |= bit;
        true
    }
}

/// A device-hash hasher for tables keyed by the FNV-1a hash the shard has
/// already computed: one multiply to spread FNV's weak low bits.
#[derive(Default)]
pub struct DeviceHashHasher(u64);

impl Hasher for DeviceHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
}

/// A table keyed by device hash.
pub type DeviceMap<V> = HashMap<u64, V, BuildHasherDefault<DeviceHashHasher>>;

#[derive(Debug, Clone, Copy)]
struct Device {
    raw_id: [u8; DEVICE_ID_LEN],
    key: DeviceKey,
    window: ReplayWindow,
}

/// One shard's authentication state: every device's key (for the MAC check
/// on whatever queue a datagram arrives) and the replay windows of the
/// devices the shard owns.
#[derive(Clone)]
pub struct Auth {
    devices: DeviceMap<Device>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth({} devices)", self.devices.len())
    }
}

impl Auth {
    /// A shard's table for `keys`, each device's window starting above its
    /// sequence in `state` (everything at or below it is a replay).
    pub fn with_state(keys: &KeyTable, state: &ReplayState) -> Auth {
        let mut a = Auth::new(keys);
        for d in a.devices.values_mut() {
            if let Some(&(top, _)) = state
                .tops
                .get(&d.raw_id)
                .filter(|(_, fp)| *fp == key_fingerprint(&d.key))
            {
                d.window = ReplayWindow {
                    top,
                    bits: u64::MAX,
                    seen: true,
                };
            }
        }
        a
    }

    /// Each device's highest authenticated sequence, for the devices `owned`
    /// says this shard owns (by hash) and that sent one.
    pub fn tops(&self, owned: impl Fn(u64) -> bool) -> Vec<([u8; DEVICE_ID_LEN], u32, u32)> {
        self.devices
            .iter()
            .filter(|(h, d)| d.window.seen && owned(**h))
            .map(|(_, d)| (d.raw_id, d.window.top, key_fingerprint(&d.key)))
            .collect()
    }

    /// A shard's table for `keys` (allocated here, once).
    pub fn new(keys: &KeyTable) -> Auth {
        let mut devices = DeviceMap::default();
        devices.reserve(keys.len());
        for (raw_id, key) in &keys.keys {
            devices.insert(
                wire::device_hash(raw_id),
                Device {
                    raw_id: *raw_id,
                    key: *key,
                    window: ReplayWindow::default(),
                },
            );
        }
        Auth { devices }
    }

    /// Checks a datagram's MAC: `hash` and `raw_id` of its device, `signed`
    /// the bytes before the MAC.
    #[inline]
    pub fn verify(
        &self,
        hash: u64,
        raw_id: &[u8; DEVICE_ID_LEN],
        signed: &[u8],
        mac: &[u8; MAC_LEN],
    ) -> Result<(), Reject> {
        let d = self
            .devices
            .get(&hash)
            .filter(|d| &d.raw_id == raw_id)
            .ok_or(Reject::UnknownDevice)?;
        let want = wire::mac(&d.key, signed);
        // Constant time: no early exit on the first differing byte.
        let diff = want.iter().zip(mac).fold(0u8, |a, (x, y)| a | (x ^ y));
        if diff == 0 {
            Ok(())
        } else {
            Err(Reject::BadMac)
        }
    }

    /// Whether this device has a key.
    #[inline]
    pub fn has_key(&self, hash: u64, raw_id: &[u8; DEVICE_ID_LEN]) -> bool {
        self.devices.get(&hash).is_some_and(|d| &d.raw_id == raw_id)
    }

    /// The replay check of a verified datagram, on the device's owner shard.
    #[inline]
    pub fn take_sequence(&mut self, hash: u64, seq: u32) -> Result<(), Reject> {
        let d = self.devices.get_mut(&hash).ok_or(Reject::UnknownDevice)?;
        if d.window.take(seq) {
            Ok(())
        } else {
            Err(Reject::Replay)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_window_takes_each_sequence_once_and_refuses_what_fell_behind_it() {
        let mut w = ReplayWindow::default();
        assert!(w.take(100));
        assert!(!w.take(100));
        assert!(w.take(98), "inside the window, not seen");
        assert!(!w.take(98));
        assert!(w.take(200));
        assert!(w.take(137), "200 - 137 = 63: the window's last slot");
        assert!(!w.take(136), "64 behind: outside the window");
        assert!(!w.take(99));
        assert!(w.take(u32::MAX));
        assert!(!w.take(0));
    }

    proptest! {
        #[test]
        fn no_sequence_is_taken_twice(seqs in proptest::collection::vec(0u32..300, 0..400)) {
            let mut w = ReplayWindow::default();
            let mut taken = std::collections::HashSet::new();
            for s in seqs {
                if w.take(s) {
                    prop_assert!(taken.insert(s), "sequence {s} taken twice");
                }
            }
        }

        #[test]
        fn a_rising_sequence_is_always_taken(start in any::<u32>(), steps in proptest::collection::vec(1u32..1000, 0..100)) {
            let mut w = ReplayWindow::default();
            let mut s = start;
            prop_assert!(w.take(s));
            for d in steps {
                let Some(n) = s.checked_add(d) else { break };
                s = n;
                prop_assert!(w.take(s));
            }
        }
    }

    #[test]
    fn the_key_file_parses_and_names_its_faults() {
        let t = KeyTable::parse(
            "# devices\nsensor-1 000102030405060708090a0b0c0d0e0f\n\nsensor-2 FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF # spare\n",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        let raw = wire::raw_device_id("sensor-1").unwrap();
        assert_eq!(t.key_of(&raw).unwrap()[15], 0x0f);
        assert_eq!(KeyTable::parse("a 00").unwrap_err().0, 1);
        assert_eq!(KeyTable::parse("\na").unwrap_err().0, 2);
        let e = KeyTable::parse(
            "a 000102030405060708090a0b0c0d0e0f\na 000102030405060708090a0b0c0d0e0f",
        )
        .unwrap_err();
        assert!(e.1.contains("twice"), "{e:?}");
        assert!(KeyTable::parse("seventeen-bytes-x 000102030405060708090a0b0c0d0e0f").is_err());
        assert!(!format!("{t:?}").contains("0f"), "keys are never printed");
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        std::fs::write(&p, "d 000102030405060708090a0b0c0d0e0f\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = KeyTable::load(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(KeyTable::load(&p).unwrap().len(), 1);
    }

    #[test]
    fn verify_takes_the_right_key_only_and_the_owner_refuses_replays() {
        let t = KeyTable::parse("d1 000102030405060708090a0b0c0d0e0f").unwrap();
        let mut a = Auth::new(&t);
        let raw = wire::raw_device_id("d1").unwrap();
        let h = wire::device_hash(&raw);
        let key = *t.key_of(&raw).unwrap();
        let mut buf = [0u8; 64];
        let n = wire::encode_v2("d1", 5, 0, b"{}", Some(&key), &mut buf).unwrap();
        let opts = wire::ParseOptions {
            max_payload: 1024,
            validate_json: true,
        };
        let d = wire::parse(&buf[..n], &opts).unwrap();
        assert_eq!(a.verify(h, d.raw_id, d.signed, d.mac.unwrap()), Ok(()));
        assert_eq!(a.take_sequence(h, 5), Ok(()));
        assert_eq!(a.take_sequence(h, 5), Err(Reject::Replay));
        let wrong = [0u8; 16];
        let n = wire::encode_v2("d1", 6, 0, b"{}", Some(&wrong), &mut buf).unwrap();
        let d = wire::parse(&buf[..n], &opts).unwrap();
        assert_eq!(
            a.verify(h, d.raw_id, d.signed, d.mac.unwrap()),
            Err(Reject::BadMac)
        );
        let other = wire::raw_device_id("d2").unwrap();
        assert_eq!(
            a.verify(wire::device_hash(&other), &other, d.signed, d.mac.unwrap()),
            Err(Reject::UnknownDevice)
        );
    }

    #[test]
    fn a_saved_state_makes_what_came_before_a_restart_a_replay() {
        let t = KeyTable::parse("d1 000102030405060708090a0b0c0d0e0f").unwrap();
        let raw = wire::raw_device_id("d1").unwrap();
        let h = wire::device_hash(&raw);
        let mut a = Auth::new(&t);
        for seq in [3, 9, 7] {
            a.take_sequence(h, seq).unwrap();
        }
        let mut st = ReplayState::default();
        for (r, top, fp) in a.tops(|_| true) {
            st.record(r, top, fp);
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/replay-state");
        st.save(&p).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = ReplayState::load(&p).unwrap();
        assert_eq!(back, st);
        let mut b = Auth::with_state(&t, &back);
        assert_eq!(b.take_sequence(h, 9), Err(Reject::Replay));
        assert_eq!(
            b.take_sequence(h, 8),
            Err(Reject::Replay),
            "below the saved top"
        );
        assert_eq!(b.take_sequence(h, 10), Ok(()));
        assert!(ReplayState::load(&dir.path().join("none"))
            .unwrap()
            .is_empty());
        // A new key starts a new window: the device may begin again at 0.
        let t2 = KeyTable::parse("d1 ffff02030405060708090a0b0c0d0e0f").unwrap();
        let mut c = Auth::with_state(&t2, &back);
        assert_eq!(c.take_sequence(h, 0), Ok(()));
        std::fs::write(&p, "d1 x\n").unwrap();
        assert!(ReplayState::load(&p)
            .unwrap_err()
            .to_string()
            .contains("line 1"));
    }

    #[test]
    fn ports_take_their_own_policy_and_the_rest_the_default() {
        let p = PortPolicies::new(Policy::Both, &[(7001, Policy::V2), (7002, Policy::V1)]);
        assert_eq!(p.of(7001), Policy::V2);
        assert_eq!(p.of(7002), Policy::V1);
        assert_eq!(p.of(9), Policy::Both);
        assert!(Policy::Both.admits(1, false) && Policy::Both.admits(2, false));
        assert!(!Policy::V2.admits(1, false) && !Policy::V2.admits(2, false));
        assert!(Policy::V2.admits(2, true) && !Policy::V1.admits(2, true));
    }
}
