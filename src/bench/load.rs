//! The load generators of `klais bench`: batched UDP (`sendmmsg`) for any
//! machine, and AF_XDP TX (copy or zero-copy) for line rate, on one or more
//! threads (one TX queue each). Every datagram is a v1 message of
//! [`crate::gen::write_message`]: its JSON payload carries the send time and
//! the device's sequence, so the measurement side computes latency and loss
//! exactly. Devices are split between threads by `device % threads`, so each
//! device's sequence leaves from one thread in order.
//!
//! The generator never drops on its side: a send the kernel refuses is
//! retried (and counted), so every sequence number is sent exactly once and a
//! gap at the receiver is loss downstream of the generator.

use std::io;
use std::net::SocketAddrV4;
use std::num::NonZeroU32;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::frame::{Flow, FRAME_HEADERS};
use crate::gen::{make_malformed, write_message};
use crate::wire::HEADER_LEN;

/// Messages per send call.
const BATCH: usize = 64;

/// How the offered rate moves over the run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Rate {
    /// This many messages per second; 0 sends as fast as the sender can.
    Fixed {
        /// Messages per second.
        pps: u64,
    },
    /// Linear from `from` to `to` messages per second over the run.
    Ramp {
        /// Start rate.
        from: u64,
        /// End rate.
        to: u64,
    },
}

/// The arrival pattern around the rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Shape {
    /// Devices take turns, evenly spaced.
    Periodic,
    /// Exponential gaps (a Poisson process); each message from a random device.
    Poisson,
    /// On/off: `on_ms` at the rate scaled up by (on+off)/on, then `off_ms` silent.
    Bursts {
        /// Sending period, ms.
        on_ms: u64,
        /// Silent period, ms.
        off_ms: u64,
    },
    /// A reconnection storm: silent from `at` (share of the run) for `outage`
    /// (share of the run), then every device flushes its backlog at `flush`×
    /// the rate until caught up (sequences continue: nothing is skipped).
    Storm {
        /// Start of the outage, share of the run.
        at: f64,
        /// Length of the outage, share of the run.
        outage: f64,
        /// Flush rate over normal rate (> 1).
        flush: f64,
    },
}

/// Payload sizes (bytes after the 22-byte header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PayloadSize {
    /// Every payload this long.
    Fixed {
        /// Bytes.
        bytes: usize,
    },
    /// Uniform between `min` and `max` bytes.
    Uniform {
        /// Smallest.
        min: usize,
        /// Largest.
        max: usize,
    },
}

impl PayloadSize {
    /// Parses `200` or `64-512`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let n = |t: &str| {
            t.trim().parse::<usize>().map_err(|_| {
                format!("payload size {s:?}: expected BYTES or MIN-MAX, e.g. 200 or 64-512")
            })
        };
        let p = match s.split_once('-') {
            Some((a, b)) => Self::Uniform {
                min: n(a)?,
                max: n(b)?,
            },
            None => Self::Fixed { bytes: n(s)? },
        };
        let (lo, hi) = match p {
            Self::Fixed { bytes } => (bytes, bytes),
            Self::Uniform { min, max } => (min, max),
        };
        if lo > hi || !(48..=1400).contains(&lo) || hi > 1400 {
            return Err(format!(
                "payload size {s:?}: between 48 (the JSON skeleton) and 1400 bytes (protocol.max_payload_bytes), min <= max"
            ));
        }
        Ok(p)
    }

    fn draw(self, rng: &mut ChaCha8Rng) -> usize {
        match self {
            Self::Fixed { bytes } => bytes,
            Self::Uniform { min, max } => rng.gen_range(min..=max),
        }
    }
}

/// Which sender.
#[derive(Debug, Clone, PartialEq)]
pub enum Sender {
    /// UDP sockets, `sendmmsg` in batches of 64.
    Udp,
    /// AF_XDP TX sockets on `iface`, queue = thread number.
    AfXdp {
        /// The sending interface.
        iface: String,
        /// Link addresses and ports.
        flow: Flow,
        /// Zero-copy (driver support needed; veth has none) instead of copy mode.
        zero_copy: bool,
    },
}

impl Sender {
    /// Short name for tables and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Udp => "udp-sendmmsg",
            Self::AfXdp {
                zero_copy: false, ..
            } => "af_xdp-copy",
            Self::AfXdp {
                zero_copy: true, ..
            } => "af_xdp-zerocopy",
        }
    }
}

/// What to send.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSpec {
    /// The sender.
    pub sender: Sender,
    /// Destination.
    pub target: SocketAddrV4,
    /// Device population.
    pub devices: u32,
    /// Offered rate.
    pub rate: Rate,
    /// Arrival pattern.
    pub shape: Shape,
    /// Payload sizes.
    pub payload: PayloadSize,
    /// Malformed datagrams per million, too short and bad magic in turn (not
    /// counted as expected messages).
    pub malformed_ppm: u32,
    /// How long.
    pub duration: Duration,
    /// Sending threads (and queues for AF_XDP).
    pub threads: u32,
    /// Seed for device choice, sizes and the malformed share.
    pub seed: u64,
    /// Network namespace to send from (a name under /var/run/netns).
    pub netns: Option<String>,
}

/// What was sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct LoadReport {
    /// Well-formed messages sent (the receiver should deliver each once).
    pub sent_valid: u64,
    /// Malformed datagrams sent (the receiver should reject each).
    pub sent_malformed: u64,
    /// UDP payload bytes sent.
    pub bytes: u64,
    /// Sends the kernel refused and the generator retried.
    pub retries: u64,
    /// Wall time, ns.
    pub elapsed_ns: u64,
    /// Valid messages sent per device (= the next sequence number).
    #[serde(skip)]
    pub per_device: Vec<u32>,
    /// Valid messages sent in each second of the run.
    pub per_second: Vec<u64>,
}

impl LoadReport {
    /// Valid messages per second over the run.
    pub fn rate(&self) -> f64 {
        self.sent_valid as f64 / (self.elapsed_ns.max(1) as f64 / 1e9)
    }
}

/// The offered rate (messages/s, all threads) at `t` seconds into a run of `d`.
fn rate_at(rate: Rate, shape: Shape, t: f64, d: f64) -> f64 {
    let base = match rate {
        Rate::Fixed { pps } => pps as f64,
        Rate::Ramp { from, to } => {
            from as f64 + (to as f64 - from as f64) * (t / d).clamp(0.0, 1.0)
        }
    };
    match shape {
        Shape::Periodic | Shape::Poisson => base,
        Shape::Bursts { on_ms, off_ms } => {
            let period = (on_ms + off_ms).max(1) as f64 / 1e3;
            if (t % period) < on_ms as f64 / 1e3 {
                base * period / (on_ms.max(1) as f64 / 1e3)
            } else {
                0.0
            }
        }
        Shape::Storm { at, outage, flush } => {
            let (start, end) = (at * d, (at + outage) * d);
            let flush = flush.max(1.01);
            let flush_end = end + (end - start) / (flush - 1.0);
            if t >= start && t < end {
                0.0
            } else if t >= end && t < flush_end {
                base * flush
            } else {
                base
            }
        }
    }
}

/// When the rate is 0 at `t`, the next time it is not (or `d`).
fn next_nonzero(rate: Rate, shape: Shape, t: f64, d: f64) -> f64 {
    match shape {
        Shape::Bursts { on_ms, off_ms } => {
            let period = (on_ms + off_ms).max(1) as f64 / 1e3;
            ((t / period).floor() + 1.0) * period
        }
        Shape::Storm { at, outage, .. } if t >= at * d && t < (at + outage) * d => {
            (at + outage) * d
        }
        _ => {
            // A ramp from 0: step ahead a millisecond.
            let _ = rate;
            t + 1e-3
        }
    }
}

/// Runs the load on `spec.threads` threads until the duration ends or `stop`.
/// `progress` counts valid messages sent (updated once per batch). The clock
/// starts once every thread has its socket open (no catch-up burst for the
/// set-up time); its wall-clock start goes into `started_ns`.
pub fn run(
    spec: &LoadSpec,
    stop: &AtomicBool,
    progress: &AtomicU64,
    started_ns: &AtomicU64,
) -> io::Result<LoadReport> {
    if spec.devices == 0 || spec.threads == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "devices and threads must be at least 1",
        ));
    }
    let threads = spec.threads.min(spec.devices);
    let ready = std::sync::Barrier::new(threads as usize);
    let go = std::sync::Barrier::new(threads as usize);
    let start_cell = std::sync::OnceLock::new();
    let sync = Sync_ {
        ready: &ready,
        go: &go,
        start: &start_cell,
        started_ns,
    };
    let results: Vec<io::Result<ThreadReport>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let sync = &sync;
                std::thread::Builder::new()
                    .name(format!("bench-gen-{t}"))
                    .spawn_scoped(s, move || {
                        thread_main(spec, t, threads, sync, stop, progress)
                    })
                    .expect("spawning a generator thread")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("generator thread panicked")))
            })
            .collect()
    });
    let mut report = LoadReport {
        per_device: vec![0; spec.devices as usize],
        ..LoadReport::default()
    };
    for (t, r) in results.into_iter().enumerate() {
        let r = r?;
        report.sent_valid += r.sent_valid;
        report.sent_malformed += r.sent_malformed;
        report.bytes += r.bytes;
        report.retries += r.retries;
        for (k, n) in r.seqs.iter().enumerate() {
            report.per_device[t + k * threads as usize] = *n;
        }
        if report.per_second.len() < r.per_second.len() {
            report.per_second.resize(r.per_second.len(), 0);
        }
        for (a, b) in report.per_second.iter_mut().zip(&r.per_second) {
            *a += b;
        }
    }
    report.elapsed_ns = start_cell
        .get()
        .map_or(0, |s| s.elapsed().as_nanos() as u64);
    Ok(report)
}

/// Start line shared by the generator threads.
struct Sync_<'a> {
    ready: &'a std::sync::Barrier,
    go: &'a std::sync::Barrier,
    start: &'a std::sync::OnceLock<Instant>,
    started_ns: &'a AtomicU64,
}

/// Enters the sending namespace and opens thread `t`'s sender.
fn open_sender(spec: &LoadSpec, t: u32) -> io::Result<Box<dyn Out>> {
    if let Some(ns) = &spec.netns {
        enter_netns(ns)?;
    }
    Ok(match &spec.sender {
        Sender::Udp => Box::new(UdpOut::new(spec.target)?),
        Sender::AfXdp {
            iface,
            flow,
            zero_copy,
        } => {
            let mut f = *flow;
            f.src.set_port(flow.src.port().wrapping_add(t as u16));
            Box::new(XdpOut::open(iface, t, f, *zero_copy)?)
        }
    })
}

struct ThreadReport {
    sent_valid: u64,
    sent_malformed: u64,
    bytes: u64,
    retries: u64,
    /// Next sequence of each of this thread's devices (device = t + k·threads).
    seqs: Vec<u32>,
    per_second: Vec<u64>,
}

/// Moves the calling thread into network namespace `ns`.
pub fn enter_netns(ns: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/var/run/netns/{ns}"))
        .map_err(|e| io::Error::new(e.kind(), format!("network namespace {ns}: {e}")))?;
    // SAFETY: setns on a valid namespace fd changes only this thread's namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("entering network namespace {ns}: {e} (needs CAP_SYS_ADMIN)"),
        ));
    }
    Ok(())
}

/// One message slot prepared for sending.
struct Plan {
    dev: u32,
    seq: u32,
    payload: usize,
    malformed: Option<u8>,
}

fn thread_main(
    spec: &LoadSpec,
    t: u32,
    threads: u32,
    sync: &Sync_<'_>,
    stop: &AtomicBool,
    progress: &AtomicU64,
) -> io::Result<ThreadReport> {
    let opened = open_sender(spec, t);
    // Every thread reaches the start line, also one whose socket failed (the
    // others would wait for it forever); it returns its error after.
    if sync.ready.wait().is_leader() {
        let _ = sync.start.set(Instant::now());
        sync.started_ns
            .store(crate::clock::now_ns(), Ordering::Relaxed);
    }
    sync.go.wait();
    let mut out = opened?;
    let start = *sync
        .start
        .get()
        .expect("set by the leader before the second barrier");
    // A hard end: no send loop may outlive the run by more than 10 s.
    let deadline = start + spec.duration + Duration::from_secs(10);
    let own = (spec.devices - t).div_ceil(threads);
    let mut rep = ThreadReport {
        sent_valid: 0,
        sent_malformed: 0,
        bytes: 0,
        retries: 0,
        seqs: vec![0; own as usize],
        per_second: Vec::new(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ (u64::from(t) << 32));
    let d = spec.duration.as_secs_f64();
    let share = 1.0 / f64::from(threads);
    let as_fast = matches!(spec.rate, Rate::Fixed { pps: 0 });
    let mut next_due = 0.0f64;
    let mut rr = 0u32;
    let mut malformed_kind = 0u8;
    let mut plans: Vec<Plan> = Vec::with_capacity(BATCH);
    loop {
        let now = start.elapsed().as_secs_f64();
        if now >= d || stop.load(Ordering::Relaxed) {
            break;
        }
        // Take every message due by now (at most one batch).
        plans.clear();
        while plans.len() < BATCH && (as_fast || next_due <= now) && next_due < d {
            let k = match spec.shape {
                Shape::Poisson => rng.gen_range(0..own),
                _ => {
                    rr = (rr + 1) % own;
                    rr
                }
            };
            let bad = spec.malformed_ppm > 0 && rng.gen_range(0..1_000_000) < spec.malformed_ppm;
            // Too short and bad magic in turn: every receiver rejects both
            // (a payload that is not JSON passes klais unless
            // protocol.validate_json is on, and passes the baselines).
            let malformed = bad.then(|| {
                malformed_kind = (malformed_kind + 1) % 2;
                malformed_kind
            });
            let seq = rep.seqs[k as usize];
            if malformed.is_none() {
                rep.seqs[k as usize] = seq.wrapping_add(1);
            }
            plans.push(Plan {
                dev: t + k * threads,
                seq,
                payload: spec.payload.draw(&mut rng),
                malformed,
            });
            if !as_fast {
                let r = rate_at(spec.rate, spec.shape, next_due, d) * share;
                if r <= 0.0 {
                    next_due = next_nonzero(spec.rate, spec.shape, next_due, d);
                } else {
                    let gap = match spec.shape {
                        Shape::Poisson => -(1.0 - rng.gen::<f64>()).ln() / r,
                        _ => 1.0 / r,
                    };
                    next_due += gap;
                }
            }
        }
        if plans.is_empty() {
            // Sleep until the next message is due (the kernel's timer slack
            // makes it up to ~50 µs late; the messages due meanwhile leave
            // in the next batch, on schedule on average). No spinning: at
            // low rates a spinning generator would take a core from the
            // target it measures.
            let wait = (next_due - now).min(d - now);
            if wait > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(wait));
            }
            continue;
        }
        let (valid, bytes, retries) = out.send(&plans, deadline)?;
        rep.retries += retries;
        rep.bytes += bytes;
        rep.sent_valid += valid;
        rep.sent_malformed += plans.len() as u64 - valid;
        progress.fetch_add(valid, Ordering::Relaxed);
        let sec = start.elapsed().as_secs() as usize;
        if rep.per_second.len() <= sec {
            rep.per_second.resize(sec + 1, 0);
        }
        rep.per_second[sec] += valid;
    }
    out.finish();
    Ok(rep)
}

/// Writes plan `p` into `buf` (which holds the datagram, from the header
/// on), stamped `ts_ns` (one clock read per batch).
fn write_plan(p: &Plan, ts_ns: u64, buf: &mut [u8]) -> usize {
    let len = write_message(p.dev, p.seq, ts_ns, p.payload, buf);
    match p.malformed {
        None => len,
        Some(k) => make_malformed(k, buf, len),
    }
}

trait Out {
    /// Sends every plan (retrying refused sends); returns (valid sent, bytes, retries).
    fn send(&mut self, plans: &[Plan], deadline: Instant) -> io::Result<(u64, u64, u64)>;
    /// Waits for what is in flight to leave.
    fn finish(&mut self) {}
}

/// UDP with `sendmmsg`: one socket per thread, unconnected (an ICMP error
/// from a receiver not yet listening must not fail later sends).
struct UdpOut {
    sock: socket2::Socket,
    addr: socket2::SockAddr,
    bufs: Vec<u8>,
    slot: usize,
    iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl UdpOut {
    fn new(to: SocketAddrV4) -> io::Result<Self> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        let _ = sock.set_send_buffer_size(8 << 20);
        sock.bind(&std::net::SocketAddr::from(([0, 0, 0, 0], 0)).into())?;
        let slot = HEADER_LEN + 1400 + 64;
        Ok(Self {
            sock,
            addr: std::net::SocketAddr::V4(to).into(),
            bufs: vec![0; slot * BATCH],
            slot,
            // SAFETY: iovec and mmsghdr are plain C structs; all-zero is valid.
            iov: vec![unsafe { std::mem::zeroed() }; BATCH],
            // SAFETY: as above.
            msgs: vec![unsafe { std::mem::zeroed() }; BATCH],
        })
    }
}

impl Out for UdpOut {
    fn send(&mut self, plans: &[Plan], deadline: Instant) -> io::Result<(u64, u64, u64)> {
        use std::os::fd::AsRawFd;
        let ts = crate::clock::now_ns();
        let mut bytes = 0u64;
        for (i, p) in plans.iter().enumerate() {
            let buf = &mut self.bufs[i * self.slot..(i + 1) * self.slot];
            let len = write_plan(p, ts, buf);
            bytes += len as u64;
            self.iov[i] = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: len,
            };
            let h = &mut self.msgs[i].msg_hdr;
            h.msg_name = self.addr.as_ptr() as *mut libc::c_void;
            h.msg_namelen = self.addr.len();
            h.msg_iov = &mut self.iov[i];
            h.msg_iovlen = 1;
        }
        let mut done = 0usize;
        let mut retries = 0u64;
        while done < plans.len() {
            // SAFETY: msgs[done..len] point at iovecs and buffers owned by self,
            // alive for the call; the fd is a valid UDP socket.
            let n = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    self.msgs.as_mut_ptr().add(done),
                    (plans.len() - done) as u32,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR | libc::ECONNREFUSED) => {
                        retries += 1;
                        if Instant::now() > deadline {
                            return Err(io::Error::other(format!("sendmmsg keeps failing: {e}")));
                        }
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    _ => return Err(io::Error::new(e.kind(), format!("sendmmsg: {e}"))),
                }
            } else {
                done += n as usize;
            }
        }
        let valid = plans.iter().filter(|p| p.malformed.is_none()).count() as u64;
        Ok((valid, bytes, retries))
    }
}

/// AF_XDP TX on one queue: frames written into the UMEM, handed to the TX
/// ring, recycled from the completion ring. Fields drop in order: rings, then
/// the socket, then the memory.
struct XdpOut {
    tx: xdpilone::RingTx,
    device: xdpilone::DeviceQueue,
    _user: xdpilone::User,
    _sock: xdpilone::Socket,
    _umem: xdpilone::Umem,
    area: memmap2::MmapMut,
    free: Vec<u64>,
    flow: Flow,
    ip_id: u16,
    descs: Vec<xdpilone::xdp::XdpDesc>,
}

const XDP_FRAMES: u32 = 4096;
const XDP_FRAME: u32 = 2048;

impl XdpOut {
    fn open(iface: &str, queue: u32, flow: Flow, zero_copy: bool) -> io::Result<Self> {
        use xdpilone::{IfInfo, Socket, SocketConfig, Umem, UmemConfig};
        let err = |step: &str, e: xdpilone::Errno| {
            let hint = if zero_copy && step == "binding" {
                " (zero-copy needs driver support, which veth never has: use copy mode)"
            } else {
                " (needs root or CAP_NET_RAW + CAP_NET_ADMIN; the queue must exist: `ethtool -l IFACE`)"
            };
            io::Error::other(format!(
                "AF_XDP TX on {iface} queue {queue}: {step} failed: {e}{hint}"
            ))
        };
        let len = (XDP_FRAMES * XDP_FRAME) as usize;
        let mut area = memmap2::MmapMut::map_anon(len)?;
        let ptr = NonNull::new(std::ptr::slice_from_raw_parts_mut(area.as_mut_ptr(), len))
            .ok_or_else(|| io::Error::other("empty UMEM"))?;
        let ucfg = UmemConfig {
            fill_size: 64,
            complete_size: XDP_FRAMES,
            frame_size: XDP_FRAME,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: `area` is a page-aligned anonymous mapping of `len` bytes,
        // kept alive after the socket and rings (field order).
        let umem = unsafe { Umem::new(ucfg, ptr) }.map_err(|e| err("registering the UMEM", e))?;
        let mut info = IfInfo::invalid();
        let name =
            std::ffi::CString::new(iface).map_err(|_| io::Error::other("bad interface name"))?;
        info.from_name(&name)
            .map_err(|e| err("looking up the interface", e))?;
        info.set_queue(queue);
        let sock = Socket::with_shared(&info, &umem).map_err(|e| err("creating the socket", e))?;
        let device = umem
            .fq_cq(&sock)
            .map_err(|e| err("mapping the fill/completion rings", e))?;
        let flags = SocketConfig::XDP_BIND_NEED_WAKEUP
            | if zero_copy {
                SocketConfig::XDP_BIND_ZEROCOPY
            } else {
                SocketConfig::XDP_BIND_COPY
            };
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: None,
                    tx_size: NonZeroU32::new(XDP_FRAMES / 2),
                    bind_flags: flags,
                },
            )
            .map_err(|e| err("creating the TX ring", e))?;
        let tx = user.map_tx().map_err(|e| err("mapping the TX ring", e))?;
        umem.bind(&user).map_err(|e| err("binding", e))?;
        Ok(Self {
            tx,
            device,
            _user: user,
            _sock: sock,
            _umem: umem,
            area,
            free: (0..u64::from(XDP_FRAMES))
                .map(|i| i * u64::from(XDP_FRAME))
                .collect(),
            flow,
            ip_id: 0,
            descs: Vec::with_capacity(BATCH),
        })
    }

    fn reclaim(&mut self) {
        let mut c = self.device.complete(XDP_FRAMES);
        while let Some(addr) = c.read() {
            self.free.push(addr);
        }
        c.release();
    }
}

impl Out for XdpOut {
    fn send(&mut self, plans: &[Plan], deadline: Instant) -> io::Result<(u64, u64, u64)> {
        let mut retries = 0u64;
        let stuck = || {
            io::Error::other("AF_XDP TX: the kernel stopped taking frames (is the interface up?)")
        };
        self.reclaim();
        while self.free.len() < plans.len() {
            // Every frame is in flight: push the kernel, take completions.
            retries += 1;
            self.tx.wake();
            self.reclaim();
            if retries % 1024 == 0 && Instant::now() > deadline {
                return Err(stuck());
            }
        }
        let ts = crate::clock::now_ns();
        let mut bytes = 0u64;
        self.descs.clear();
        for p in plans {
            let addr = self.free.pop().unwrap_or(0);
            let frame = &mut self.area[addr as usize..(addr + u64::from(XDP_FRAME)) as usize];
            let len = write_plan(p, ts, &mut frame[FRAME_HEADERS..]);
            self.ip_id = self.ip_id.wrapping_add(1);
            let flen = self.flow.write_headers(frame, len, self.ip_id);
            bytes += len as u64;
            self.descs.push(xdpilone::xdp::XdpDesc {
                addr,
                len: flen as u32,
                options: 0,
            });
        }
        let mut off = 0usize;
        while off < self.descs.len() {
            let mut w = self.tx.transmit((self.descs.len() - off) as u32);
            let n = w.insert(self.descs[off..].iter().copied()) as usize;
            w.commit();
            drop(w);
            off += n;
            // Copy mode sends only inside the syscall, a few dozen frames at a
            // time: kick until the kernel took everything queued.
            self.tx.wake();
            if n == 0 {
                retries += 1;
                self.reclaim();
                if retries % 1024 == 0 && Instant::now() > deadline {
                    return Err(stuck());
                }
            }
        }
        let mut kicks = 0u32;
        while self.tx.pending() > 0 {
            self.tx.wake();
            kicks += 1;
            if kicks % 1024 == 0 && Instant::now() > deadline {
                return Err(stuck());
            }
        }
        let valid = plans.iter().filter(|p| p.malformed.is_none()).count() as u64;
        Ok((valid, bytes, retries))
    }

    fn finish(&mut self) {
        for _ in 0..1000 {
            self.tx.wake();
            self.reclaim();
            if self.free.len() == XDP_FRAMES as usize {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_sizes_parse_and_refuse_out_of_range() {
        assert_eq!(
            PayloadSize::parse("200"),
            Ok(PayloadSize::Fixed { bytes: 200 })
        );
        assert_eq!(
            PayloadSize::parse("64-512"),
            Ok(PayloadSize::Uniform { min: 64, max: 512 })
        );
        assert!(PayloadSize::parse("10").is_err());
        assert!(PayloadSize::parse("512-64").is_err());
        assert!(PayloadSize::parse("2000").is_err());
        assert!(PayloadSize::parse("abc").unwrap_err().contains("MIN-MAX"));
    }

    fn integral(rate: Rate, shape: Shape, d: f64) -> f64 {
        let steps = 200_000;
        (0..steps)
            .map(|i| {
                rate_at(rate, shape, (i as f64 + 0.5) * d / steps as f64, d) * d / steps as f64
            })
            .sum()
    }

    #[test]
    fn every_shape_offers_the_same_total_as_the_plain_rate() {
        let r = Rate::Fixed { pps: 10_000 };
        let d = 10.0;
        for shape in [
            Shape::Periodic,
            Shape::Poisson,
            Shape::Bursts {
                on_ms: 100,
                off_ms: 300,
            },
            Shape::Storm {
                at: 0.3,
                outage: 0.2,
                flush: 4.0,
            },
        ] {
            let n = integral(r, shape, d);
            assert!((n - 100_000.0).abs() < 200.0, "{shape:?}: {n}");
        }
        let ramp = integral(
            Rate::Ramp {
                from: 0,
                to: 20_000,
            },
            Shape::Periodic,
            d,
        );
        assert!((ramp - 100_000.0).abs() < 200.0, "{ramp}");
    }

    #[test]
    fn a_storm_is_silent_then_flushes() {
        let r = Rate::Fixed { pps: 1000 };
        let s = Shape::Storm {
            at: 0.5,
            outage: 0.1,
            flush: 3.0,
        };
        assert_eq!(rate_at(r, s, 5.5, 10.0), 0.0);
        assert_eq!(rate_at(r, s, 6.2, 10.0), 3000.0);
        assert_eq!(rate_at(r, s, 7.5, 10.0), 1000.0);
        assert_eq!(next_nonzero(r, s, 5.2, 10.0), 6.0);
    }
}
