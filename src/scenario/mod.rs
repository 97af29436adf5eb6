//! The traffic scenario generator: one seeded, reproducible source of labeled
//! device traffic for training the models (`klais model train`), the storm
//! simulator (`klais simulate`) and the wire (`klais gen --scenario`, which
//! the bench harness is to build on).
//!
//! A [`Spec`] describes a population and the events laid over it; a
//! [`Generator`] turns it into a time-ordered stream of [`Packet`]s, each
//! labeled with what produced it ([`Label`]):
//!
//! - **normal telemetry**: Poisson and periodic devices (a `periodic_share`
//!   of them), rates spread around `rate_per_device`, modulated by a diurnal
//!   curve (`diurnal_amplitude` over a compressed `diurnal_period_s` "day");
//!   legitimate **bursts** (a device sends 2–5 messages 5–20 ms apart);
//! - a **reconnection storm** ([`Storm`]): the network goes away, devices
//!   keep generating and hold a backlog (device-side loss beyond
//!   `backlog_max`), come back within `jitter_s` restarting their sequence at
//!   0 and flush their backlog — all of it legitimate, labeled normal;
//! - **floods** ([`Flood`]): a few real device ids sending far over their
//!   rate (label flood);
//! - **id sweeps** ([`Sweep`]): spoofed random device ids, each seen once,
//!   with arbitrary sequences (label sweep);
//! - **replays** ([`Replay`]): earlier datagrams of real devices sent again
//!   (old sequence and length; label replay);
//! - **malformed** datagrams (a `malformed_share` of normal emissions: bad
//!   magic, too short or invalid JSON; label malformed).
//!
//! Splits: [`suite`] builds a varied set of specs per [`Split`] from disjoint
//! seed ranges (train 1000+, validation 2000+, test 3000+); training and
//! tuning read only the first two, `klais model eval` reports on the third.
//!
//! Times are virtual (ns from the start); nothing here sleeps.
//! `klais gen --scenario` paces the same stream against the wall clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::wire::{self, DEVICE_ID_LEN, HEADER_LEN};

const SEC: f64 = 1e9;

/// What produced a packet. The first four are the in-kernel classifier's
/// classes (in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Label {
    /// Legitimate telemetry (including bursts and reconnection storms).
    Normal = 0,
    /// A device far over its rate.
    Flood = 1,
    /// A spoofed device id from a sweep.
    Sweep = 2,
    /// A replayed earlier datagram.
    Replay = 3,
    /// Not a valid datagram (never reaches the classifier's training set).
    Malformed = 4,
}

impl Label {
    /// The classifier's classes.
    pub const CLASSES: [Label; 4] = [Label::Normal, Label::Flood, Label::Sweep, Label::Replay];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Label::Normal => "normal",
            Label::Flood => "flood",
            Label::Sweep => "sweep",
            Label::Replay => "replay",
            Label::Malformed => "malformed",
        }
    }
}

/// How a malformed datagram is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than the header.
    TooShort,
    /// Wrong magic.
    BadMagic,
    /// Payload is not JSON.
    BadJson,
}

/// One generated datagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Packet {
    /// Virtual send time, ns from the start.
    pub t_ns: u64,
    /// The raw 16-byte device id.
    pub id: [u8; DEVICE_ID_LEN],
    /// FNV-1a 64 of the id (the device hash everywhere in klais).
    pub hash: u64,
    /// Device index in the population (`u32::MAX` for spoofed ids).
    pub device: u32,
    /// Sequence number in the header.
    pub seq: u32,
    /// JSON payload length, bytes.
    pub payload_len: u16,
    /// Ground truth.
    pub label: Label,
    /// How it is broken, for [`Label::Malformed`].
    pub malformed: Option<Malformed>,
    /// The first datagram of a device after it reconnected (sequence reset).
    pub reconnect: bool,
}

impl Packet {
    /// Datagram length on the wire (UDP payload).
    pub fn len(&self) -> usize {
        match self.malformed {
            Some(Malformed::TooShort) => HEADER_LEN - 1,
            _ => HEADER_LEN + usize::from(self.payload_len),
        }
    }

    /// Never empty (kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the datagram into `buf` (at least [`Packet::len`] bytes) with
    /// the send timestamp `ts_ns` in its JSON (`{"ts_ns":…,"seq":…,"pad":"…"}`,
    /// padded to `payload_len`) and returns its length. No allocation.
    pub fn write(&self, ts_ns: u64, buf: &mut [u8]) -> usize {
        let len = self.len().min(buf.len());
        buf[0] = (wire::MAGIC_V1 >> 8) as u8;
        buf[1] = (wire::MAGIC_V1 & 0xff) as u8;
        buf[2..18].copy_from_slice(&self.id);
        buf[18..22].copy_from_slice(&self.seq.to_be_bytes());
        if self.malformed == Some(Malformed::TooShort) {
            return len.min(HEADER_LEN - 1);
        }
        let body = &mut buf[HEADER_LEN..len];
        let cap = body.len();
        let mut cur = std::io::Cursor::new(&mut body[..]);
        let _ = write!(cur, "{{\"ts_ns\":{ts_ns},\"seq\":{},\"pad\":\"", self.seq);
        let used = (cur.position() as usize).min(cap);
        if used + 2 <= cap {
            body[used..cap - 2].fill(b'x');
            body[cap - 2..].copy_from_slice(b"\"}");
        }
        match self.malformed {
            Some(Malformed::BadMagic) => {
                buf[0] = 0xDE;
                buf[1] = 0xAD;
            }
            Some(Malformed::BadJson) => buf[HEADER_LEN] = b'!',
            _ => {}
        }
        len
    }
}

/// A reconnection storm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Storm {
    /// When the network goes away, seconds.
    pub at_s: f64,
    /// How long it stays away, seconds.
    pub outage_s: f64,
    /// Share of devices that come back with their backlog (the rest discard it).
    pub reconnect_share: f64,
    /// Reconnections spread uniformly over this many seconds.
    pub jitter_s: f64,
    /// Messages a device holds while disconnected.
    pub backlog_max: u32,
    /// Messages per second a device flushes its backlog at.
    pub flush_rate: f64,
}

impl Default for Storm {
    fn default() -> Self {
        Storm {
            at_s: 20.0,
            outage_s: 30.0,
            reconnect_share: 0.8,
            jitter_s: 2.0,
            backlog_max: 30,
            flush_rate: 100.0,
        }
    }
}

/// A few real devices flooding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flood {
    /// Start, seconds.
    pub at_s: f64,
    /// Duration, seconds.
    pub duration_s: f64,
    /// Devices taking part (the first ones of a seeded shuffle).
    pub devices: u32,
    /// Datagrams per second per device.
    pub rate: f64,
}

/// Spoofed ids, each seen once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sweep {
    /// Start, seconds.
    pub at_s: f64,
    /// Duration, seconds.
    pub duration_s: f64,
    /// Datagrams per second.
    pub rate: f64,
}

/// Earlier datagrams of real devices sent again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replay {
    /// Start, seconds.
    pub at_s: f64,
    /// Duration, seconds.
    pub duration_s: f64,
    /// Datagrams per second.
    pub rate: f64,
    /// Victim devices.
    pub victims: u32,
}

/// A scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Seed: same spec, same packets.
    pub seed: u64,
    /// Device population.
    pub devices: u32,
    /// Mean messages per second per device.
    pub rate_per_device: f64,
    /// Per-device rates are spread over rate/spread … rate·spread (1 = all equal).
    pub rate_spread: f64,
    /// Share of devices reporting on a fixed period (the rest are Poisson).
    pub periodic_share: f64,
    /// Diurnal modulation: rate × (1 + a·sin(2πt/period)), a in 0–1.
    pub diurnal_amplitude: f64,
    /// The compressed "day", seconds.
    pub diurnal_period_s: f64,
    /// Chance that a normal emission is a burst of 2–5 messages.
    pub burst_prob: f64,
    /// Share of normal emissions that are malformed.
    pub malformed_share: f64,
    /// Seconds generated.
    pub duration_s: f64,
    /// A reconnection storm.
    pub storm: Option<Storm>,
    /// Floods.
    pub floods: Vec<Flood>,
    /// Id sweeps.
    pub sweeps: Vec<Sweep>,
    /// Replays.
    pub replays: Vec<Replay>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            seed: 1,
            devices: 10_000,
            rate_per_device: 1.0,
            rate_spread: 2.0,
            periodic_share: 0.5,
            diurnal_amplitude: 0.3,
            diurnal_period_s: 120.0,
            burst_prob: 0.02,
            malformed_share: 0.0,
            duration_s: 60.0,
            storm: None,
            floods: Vec::new(),
            sweeps: Vec::new(),
            replays: Vec::new(),
        }
    }
}

/// A named preset (`--scenario NAME` on the commands that take one).
pub fn preset(name: &str, seed: u64) -> Option<Spec> {
    let base = Spec {
        seed,
        ..Spec::default()
    };
    Some(match name {
        "normal" => base,
        "storm" => Spec {
            duration_s: 60.0,
            storm: Some(Storm::default()),
            ..base
        },
        "flood" => Spec {
            floods: vec![Flood {
                at_s: 10.0,
                duration_s: 20.0,
                devices: 5,
                rate: 2_000.0,
            }],
            ..base
        },
        "mixed" => Spec {
            malformed_share: 0.01,
            storm: Some(Storm {
                at_s: 15.0,
                outage_s: 10.0,
                ..Storm::default()
            }),
            floods: vec![Flood {
                at_s: 5.0,
                duration_s: 10.0,
                devices: 3,
                rate: 1_000.0,
            }],
            sweeps: vec![Sweep {
                at_s: 35.0,
                duration_s: 5.0,
                rate: 2_000.0,
            }],
            replays: vec![Replay {
                at_s: 45.0,
                duration_s: 10.0,
                rate: 300.0,
                victims: 50,
            }],
            ..base
        },
        _ => return None,
    })
}

/// The preset names.
pub const PRESETS: [&str; 4] = ["normal", "storm", "flood", "mixed"];

/// Which part of the data a scenario belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// For fitting weights.
    Train,
    /// For choosing calibration and thresholds.
    Validation,
    /// For the reported figures only.
    Test,
}

impl Split {
    /// First seed of the split's range (ranges never overlap).
    pub fn seed_base(self) -> u64 {
        match self {
            Split::Train => 1000,
            Split::Validation => 2000,
            Split::Test => 3000,
        }
    }
}

/// `n` varied scenarios of a split: population, rates, periodic share and
/// diurnal curve drawn from the split's seeds, each with a storm, floods,
/// sweeps and replays at drawn times and sizes (some without a storm, for
/// false alarms).
pub fn suite(split: Split, n: u32) -> Vec<Spec> {
    (0..u64::from(n))
        .map(|i| {
            let seed = split.seed_base() + i;
            let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x5ce9_a210);
            // Scenarios without a storm run longer: they measure false alarms.
            let duration_s = if i % 3 == 2 { 300.0 } else { 60.0 };
            let devices = r.gen_range(1_000..6_000);
            let storm = (i % 3 != 2).then(|| Storm {
                at_s: r.gen_range(10.0..25.0),
                outage_s: r.gen_range(5.0..25.0),
                reconnect_share: r.gen_range(0.5..1.0),
                jitter_s: r.gen_range(0.5..2.0),
                backlog_max: r.gen_range(5..40),
                // From a trickle to a device dumping its buffer at once.
                flush_rate: r.gen_range(20f64.ln()..50_000f64.ln()).exp(),
            });
            let floods = vec![Flood {
                at_s: r.gen_range(2.0..50.0),
                duration_s: r.gen_range(2.0..8.0),
                devices: r.gen_range(1..6),
                rate: r.gen_range(100.0..2_000.0),
            }];
            let sweeps = vec![Sweep {
                at_s: r.gen_range(2.0..50.0),
                duration_s: r.gen_range(1.0..5.0),
                rate: r.gen_range(200.0..2_000.0),
            }];
            let replays = vec![Replay {
                at_s: r.gen_range(2.0..50.0),
                duration_s: r.gen_range(2.0..8.0),
                rate: r.gen_range(50.0..500.0),
                victims: r.gen_range(5..100),
            }];
            Spec {
                seed,
                devices,
                // From near-silent populations (a storm out of quiet) to busy ones.
                rate_per_device: r.gen_range(0.01f64.ln()..2f64.ln()).exp(),
                rate_spread: 2.0,
                periodic_share: r.gen_range(0.0..1.0),
                diurnal_amplitude: r.gen_range(0.0..0.5),
                diurnal_period_s: r.gen_range(30.0..120.0),
                burst_prob: r.gen_range(0.0..0.05),
                malformed_share: 0.005,
                duration_s,
                storm,
                floods,
                sweeps,
                replays,
            }
        })
        .collect()
}

/// What the devices lost on their side (not klais's loss).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Messages a device could not hold while disconnected.
    pub overflowed: u64,
    /// Backlogs discarded by devices that came back without flushing.
    pub discarded: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Emit(u32),
    Burst(u32, u8),
    Reconnect(u32),
    Flush(u32),
    Flood(u16, u32),
    Sweep(u16),
    Replay(u16),
}

#[derive(Clone, Copy, Default)]
struct Device {
    seq: u32,
    /// Mean interval (Poisson) or period (periodic), ns.
    interval: f64,
    periodic: bool,
    payload_len: u16,
    pending: u32,
    back: bool,
    flusher: bool,
    reset: bool,
    /// The flood this device takes part in: [from, until) ns (0, 0: none).
    flooding: (u64, u64),
}

/// The packet stream of a [`Spec`] (an iterator, in time order).
pub struct Generator {
    spec: Spec,
    rng: ChaCha8Rng,
    heap: BinaryHeap<Reverse<(u64, Ev)>>,
    dev: Vec<Device>,
    /// (id, hash) per device, computed once.
    ids: Vec<([u8; DEVICE_ID_LEN], u64)>,
    end: u64,
    t_out: u64,
    t_back: u64,
    /// Recent (seq, len) per device, for replays: a small ring.
    history: Vec<[(u32, u16); 8]>,
    /// Device-side losses.
    pub device: DeviceStats,
}

fn exp(rng: &mut ChaCha8Rng, mean_ns: f64) -> u64 {
    let u: f64 = rng.gen_range(f64::EPSILON..1.0);
    (-u.ln() * mean_ns) as u64
}

impl Generator {
    /// A generator at time 0.
    pub fn new(spec: Spec) -> Generator {
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let n = spec.devices as usize;
        let mut ids = Vec::with_capacity(n);
        let mut dev = Vec::with_capacity(n);
        let mut heap = BinaryHeap::new();
        let mean = SEC / spec.rate_per_device.max(1e-6);
        for i in 0..spec.devices {
            let mut raw = [0u8; DEVICE_ID_LEN];
            device_name(i, &mut raw);
            ids.push((raw, wire::fnv1a64(&raw)));
            let periodic = rng.gen_bool(spec.periodic_share.clamp(0.0, 1.0));
            let spread = spec.rate_spread.max(1.0);
            let interval = if spread > 1.0 {
                mean * rng.gen_range(1.0 / spread..spread)
            } else {
                mean
            };
            let first = if periodic {
                rng.gen_range(0.0..interval) as u64
            } else {
                exp(&mut rng, interval)
            };
            heap.push(Reverse((first, Ev::Emit(i))));
            dev.push(Device {
                // Mid-life devices: the capture starts somewhere in their sequence.
                seq: rng.gen_range(0..100_000),
                interval,
                periodic,
                payload_len: rng.gen_range(60..240),
                ..Device::default()
            });
        }
        let (mut t_out, mut t_back) = (u64::MAX, u64::MAX);
        if let Some(s) = spec.storm {
            t_out = (s.at_s * SEC) as u64;
            t_back = ((s.at_s + s.outage_s) * SEC) as u64;
            for (i, d) in dev.iter_mut().enumerate() {
                d.flusher = rng.gen_bool(s.reconnect_share.clamp(0.0, 1.0));
                let t = t_back + (rng.gen::<f64>() * s.jitter_s * SEC) as u64;
                heap.push(Reverse((t, Ev::Reconnect(i as u32))));
            }
        }
        // Flood members: a seeded pick of distinct devices, each in at most
        // one flood.
        for (k, f) in spec.floods.iter().enumerate() {
            let from = (f.at_s * SEC) as u64;
            let until = ((f.at_s + f.duration_s) * SEC) as u64;
            let want = f.devices.min(spec.devices);
            let mut picked = 0;
            let mut tries = 0;
            while picked < want && tries < want * 100 {
                tries += 1;
                let m = rng.gen_range(0..spec.devices.max(1));
                if dev[m as usize].flooding != (0, 0) {
                    continue;
                }
                dev[m as usize].flooding = (from, until);
                heap.push(Reverse((
                    from + u64::from(picked) * 1_000,
                    Ev::Flood(k as u16, m),
                )));
                picked += 1;
            }
        }
        for (k, s) in spec.sweeps.iter().enumerate() {
            heap.push(Reverse(((s.at_s * SEC) as u64, Ev::Sweep(k as u16))));
        }
        for (k, r) in spec.replays.iter().enumerate() {
            heap.push(Reverse(((r.at_s * SEC) as u64, Ev::Replay(k as u16))));
        }
        Generator {
            end: (spec.duration_s * SEC) as u64,
            history: vec![[(0, 0); 8]; n],
            spec,
            rng,
            heap,
            dev,
            ids,
            t_out,
            t_back,
            device: DeviceStats::default(),
        }
    }

    /// The spec.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// When the network comes back after the storm's outage (ns), if any.
    pub fn storm_back_ns(&self) -> Option<u64> {
        self.spec.storm.map(|_| self.t_back)
    }

    /// The ground-truth storm window: from the network's return until the
    /// last flushing device could have emptied its backlog.
    pub fn storm_window_ns(&self) -> Option<(u64, u64)> {
        self.spec.storm.map(|s| {
            let drain = f64::from(s.backlog_max) / s.flush_rate.max(1e-6) * 1.2;
            (
                self.t_back,
                self.t_back + ((s.jitter_s + drain) * SEC) as u64,
            )
        })
    }

    fn diurnal(&self, t: u64) -> f64 {
        let s = &self.spec;
        let x = std::f64::consts::TAU * t as f64 / SEC / s.diurnal_period_s.max(1.0);
        1.0 + s.diurnal_amplitude.clamp(0.0, 1.0) * x.sin()
    }

    fn next_emit(&mut self, i: u32, t: u64) -> u64 {
        let d = &self.dev[i as usize];
        if d.periodic {
            // ±2 % jitter around the period, the period stretched by the diurnal curve.
            let p = d.interval / self.diurnal(t);
            t + (p * self.rng.gen_range(0.98..1.02)) as u64
        } else {
            let amp = self.spec.diurnal_amplitude.clamp(0.0, 1.0);
            // Thinning: candidate arrivals at the peak rate, kept by m(t)/m_max.
            let peak = d.interval / (1.0 + amp);
            let mut tt = t;
            loop {
                tt += exp(&mut self.rng, peak).max(1);
                if self.rng.gen::<f64>() * (1.0 + amp) <= self.diurnal(tt) {
                    return tt;
                }
            }
        }
    }

    fn packet(&mut self, i: u32, t: u64, label: Label) -> Packet {
        let d = &mut self.dev[i as usize];
        let seq = d.seq;
        d.seq = d.seq.wrapping_add(1);
        let reconnect = std::mem::take(&mut d.reset);
        let jitter = self.rng.gen_range(0..8u16);
        let payload_len = d.payload_len + jitter;
        let h = &mut self.history[i as usize];
        h[(seq % 8) as usize] = (seq, payload_len);
        let (id, hash) = self.ids[i as usize];
        let mut p = Packet {
            t_ns: t,
            id,
            hash,
            device: i,
            seq,
            payload_len,
            label,
            malformed: None,
            reconnect,
        };
        if label == Label::Normal
            && self.spec.malformed_share > 0.0
            && self.rng.gen_bool(self.spec.malformed_share.min(1.0))
        {
            p.label = Label::Malformed;
            p.malformed = Some(match self.rng.gen_range(0..3) {
                0 => Malformed::TooShort,
                1 => Malformed::BadMagic,
                _ => Malformed::BadJson,
            });
        }
        p
    }

    fn normal_label(&self, i: u32, t: u64) -> Label {
        let (from, until) = self.dev[i as usize].flooding;
        if t >= from && t < until {
            // A flooding device's own telemetry is part of its flow.
            Label::Flood
        } else {
            Label::Normal
        }
    }
}

impl Iterator for Generator {
    type Item = Packet;

    fn next(&mut self) -> Option<Packet> {
        while let Some(Reverse((t, ev))) = self.heap.pop() {
            if t > self.end {
                self.heap.clear();
                return None;
            }
            match ev {
                Ev::Emit(i) => {
                    let next = self.next_emit(i, t);
                    self.heap.push(Reverse((next, Ev::Emit(i))));
                    let d = &mut self.dev[i as usize];
                    let offline = t >= self.t_out && !d.back;
                    if offline {
                        let max = self.spec.storm.map_or(0, |s| s.backlog_max);
                        if d.pending >= max {
                            self.device.overflowed += 1;
                        } else {
                            d.pending += 1;
                        }
                        continue;
                    }
                    if d.pending > 0 {
                        d.pending += 1; // behind its backlog, which is flushing
                        continue;
                    }
                    if self.spec.burst_prob > 0.0 && self.rng.gen_bool(self.spec.burst_prob) {
                        let extra = self.rng.gen_range(1..5u8);
                        let gap = self.rng.gen_range(5_000_000..20_000_000);
                        self.heap.push(Reverse((t + gap, Ev::Burst(i, extra))));
                    }
                    let label = self.normal_label(i, t);
                    return Some(self.packet(i, t, label));
                }
                Ev::Burst(i, left) => {
                    let d = &self.dev[i as usize];
                    if t >= self.t_out && !d.back {
                        continue;
                    }
                    if left > 1 {
                        let gap = self.rng.gen_range(5_000_000..20_000_000);
                        self.heap.push(Reverse((t + gap, Ev::Burst(i, left - 1))));
                    }
                    let label = self.normal_label(i, t);
                    return Some(self.packet(i, t, label));
                }
                Ev::Reconnect(i) => {
                    let d = &mut self.dev[i as usize];
                    d.seq = 0;
                    d.reset = true;
                    d.back = true;
                    if d.flusher {
                        self.heap.push(Reverse((t, Ev::Flush(i))));
                    } else {
                        self.device.discarded += u64::from(d.pending);
                        d.pending = 0;
                    }
                }
                Ev::Flush(i) => {
                    if self.dev[i as usize].pending > 0 {
                        self.dev[i as usize].pending -= 1;
                        let rate = self.spec.storm.map_or(1.0, |s| s.flush_rate.max(1e-3));
                        self.heap
                            .push(Reverse((t + (SEC / rate) as u64, Ev::Flush(i))));
                        let label = self.normal_label(i, t);
                        return Some(self.packet(i, t, label));
                    }
                }
                Ev::Flood(k, i) => {
                    let f = self.spec.floods[k as usize];
                    let stop = ((f.at_s + f.duration_s) * SEC) as u64;
                    if t >= stop {
                        continue;
                    }
                    let gap = exp(&mut self.rng, SEC / f.rate.max(1e-3)).max(1);
                    self.heap.push(Reverse((t + gap, Ev::Flood(k, i))));
                    let d = &self.dev[i as usize];
                    if t >= self.t_out && !d.back {
                        continue; // the network is away for it too; it resumes after
                    }
                    return Some(self.packet(i, t, Label::Flood));
                }
                Ev::Sweep(k) => {
                    let s = self.spec.sweeps[k as usize];
                    if t >= ((s.at_s + s.duration_s) * SEC) as u64 {
                        continue;
                    }
                    let gap = exp(&mut self.rng, SEC / s.rate.max(1e-3)).max(1);
                    self.heap.push(Reverse((t + gap, Ev::Sweep(k))));
                    let mut id = [0u8; DEVICE_ID_LEN];
                    let v: u64 = self.rng.gen();
                    let mut cur = std::io::Cursor::new(&mut id[..]);
                    let _ = write!(cur, "x{:012x}", v >> 16);
                    return Some(Packet {
                        t_ns: t,
                        id,
                        hash: wire::fnv1a64(&id),
                        device: u32::MAX,
                        seq: self.rng.gen(),
                        // Lengths like real devices', so length gives nothing away.
                        payload_len: self.rng.gen_range(60..248),
                        label: Label::Sweep,
                        malformed: None,
                        reconnect: false,
                    });
                }
                Ev::Replay(k) => {
                    let r = self.spec.replays[k as usize];
                    if t >= ((r.at_s + r.duration_s) * SEC) as u64 || self.spec.devices == 0 {
                        continue;
                    }
                    let gap = exp(&mut self.rng, SEC / r.rate.max(1e-3)).max(1);
                    self.heap.push(Reverse((t + gap, Ev::Replay(k))));
                    let victims = r.victims.clamp(1, self.spec.devices);
                    // Victims: a fixed stride through the population.
                    let v = (self.rng.gen_range(0..victims) * 7919) % self.spec.devices;
                    let d = &self.dev[v as usize];
                    let back = self.rng.gen_range(1..8u32);
                    let (seq, len) =
                        self.history[v as usize][(d.seq.wrapping_sub(back) % 8) as usize];
                    if len == 0 {
                        continue; // nothing captured yet
                    }
                    let (id, hash) = self.ids[v as usize];
                    return Some(Packet {
                        t_ns: t,
                        id,
                        hash,
                        device: v,
                        seq,
                        payload_len: len,
                        label: Label::Replay,
                        malformed: None,
                        reconnect: false,
                    });
                }
            }
        }
        None
    }
}

/// Writes device `i`'s id into `out` and returns its length.
pub fn device_name(i: u32, out: &mut [u8; 16]) -> usize {
    let mut cur = std::io::Cursor::new(&mut out[..]);
    // "dev-" + 8 digits = 12 bytes, always fits 16 for u32 < 10^8; larger ids
    // use more digits and still fit (at most 14 bytes).
    let _ = write!(cur, "dev-{i:08}");
    cur.position() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> Spec {
        Spec {
            seed,
            devices: 300,
            duration_s: 20.0,
            malformed_share: 0.01,
            storm: Some(Storm {
                at_s: 5.0,
                outage_s: 5.0,
                ..Storm::default()
            }),
            floods: vec![Flood {
                at_s: 2.0,
                duration_s: 2.0,
                devices: 2,
                rate: 500.0,
            }],
            sweeps: vec![Sweep {
                at_s: 12.0,
                duration_s: 1.0,
                rate: 500.0,
            }],
            replays: vec![Replay {
                at_s: 14.0,
                duration_s: 2.0,
                rate: 100.0,
                victims: 10,
            }],
            ..Spec::default()
        }
    }

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let a: Vec<Packet> = Generator::new(small(7)).collect();
        let b: Vec<Packet> = Generator::new(small(7)).collect();
        let c: Vec<Packet> = Generator::new(small(8)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.windows(2).all(|w| w[0].t_ns <= w[1].t_ns), "time ordered");
    }

    #[test]
    fn every_label_appears_and_datagrams_parse_as_labeled() {
        let mut seen = std::collections::BTreeMap::new();
        let mut buf = [0u8; 512];
        let opts = wire::ParseOptions {
            validate_json: true,
            max_payload: 4096,
        };
        let mut resets = 0;
        for p in Generator::new(small(3)) {
            *seen.entry(p.label).or_insert(0u64) += 1;
            resets += u64::from(p.reconnect);
            let n = p.write(123, &mut buf);
            let parsed = wire::parse(&buf[..n], &opts);
            assert_eq!(parsed.is_err(), p.label == Label::Malformed, "{p:?}");
            if let Ok(d) = parsed {
                assert_eq!(d.sequence, p.seq);
                assert_eq!(d.device_hash(), p.hash);
            }
        }
        for l in [
            Label::Normal,
            Label::Flood,
            Label::Sweep,
            Label::Replay,
            Label::Malformed,
        ] {
            assert!(
                seen.get(&l).copied().unwrap_or(0) > 0,
                "{l:?} missing: {seen:?}"
            );
        }
        assert!(resets > 200, "devices reconnect after the outage: {resets}");
    }

    #[test]
    fn storm_holds_traffic_during_the_outage_and_replays_it_after() {
        let mut g = Generator::new(small(4));
        let pk: Vec<Packet> = g.by_ref().collect();
        let in_outage = pk
            .iter()
            .filter(|p| {
                p.label == Label::Normal && p.t_ns > 5_100_000_000 && p.t_ns < 9_900_000_000
            })
            .count();
        assert_eq!(in_outage, 0, "nothing normal while the network is away");
        let (back, until) = g.storm_window_ns().unwrap();
        let after = pk
            .iter()
            .filter(|p| p.t_ns >= back && p.t_ns < until)
            .count();
        let before = pk
            .iter()
            .filter(|p| p.label == Label::Normal && p.t_ns < 5_000_000_000)
            .count();
        assert!(
            after as f64 > before as f64 * 0.5,
            "backlog flush: {after} vs {before}"
        );
    }

    #[test]
    fn splits_use_disjoint_seeds() {
        let t: Vec<u64> = suite(Split::Train, 20).iter().map(|s| s.seed).collect();
        let v: Vec<u64> = suite(Split::Validation, 20)
            .iter()
            .map(|s| s.seed)
            .collect();
        let x: Vec<u64> = suite(Split::Test, 20).iter().map(|s| s.seed).collect();
        for s in &t {
            assert!(!v.contains(s) && !x.contains(s));
        }
        for s in &v {
            assert!(!x.contains(s));
        }
    }
}
