//! The AF_XDP backend: one XDP socket per NIC queue, owned by its shard.
//!
//! The XDP filter (`bpf/`) redirects klais traffic that passed its checks into
//! the socket bound at `xsks[rx_queue]`; frames land in a UMEM area this
//! socket owns. [`XskSocket::recv_batch`] takes up to a batch of frames, hands
//! each frame's UDP payload to the caller (the shard copies what it keeps into
//! its ring) and returns all of them to the fill ring in one step. The fill
//! ring is sized to hold every frame (a smaller one silently drops traffic,
//! MACHINE-NOTES), and `need_wakeup` avoids a syscall while the kernel keeps
//! up.
//!
//! Crate choice: xdpilone (pure Rust) instead of xsk-rs, whose libxdp-sys pins
//! libbpf-sys 1.5.1 and cannot build beside libbpf-rs 0.27, which loads the
//! XDP program (docs/dependencies.md).
//!
//! # Requires
//! Root or CAP_NET_RAW + CAP_NET_ADMIN; the interface and queue must exist.
//! On veth the kernel uses copy mode.

use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::RawFd;
use std::ptr::NonNull;

use xdpilone::{DeviceQueue, IfInfo, RingRx, Socket, SocketConfig, Umem, UmemConfig, User};

/// `KLAIS_META_TAG` (bpf/klais.h).
const KLAIS_META_TAG: u16 = 0xC1A5;
/// `KLAIS_ACT_MARK` (bpf/klais.h).
const KLAIS_ACT_MARK: u8 = 2;

/// The classifier's mark in front of a redirected frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpMark {
    /// Class (0–3), 0xff when not classified.
    pub class: u8,
    /// The class's action is mark.
    pub marked: bool,
    /// Low 32 bits of the device hash the kernel saw.
    pub hash_lo: u32,
}

impl XdpMark {
    /// Record flags for a frame whose device hash is `hash`: the mark when
    /// it is one and belongs to this frame, else 0.
    #[inline]
    pub fn flags_for(mark: Option<XdpMark>, hash: Option<u64>) -> u8 {
        match (mark, hash) {
            (Some(m), Some(h)) if m.marked && m.hash_lo == h as u32 => {
                crate::handoff::FLAG_MODEL_MARK | ((m.class & 0x3) << 4)
            }
            _ => 0,
        }
    }
}

/// The two passes [`XskSocket::recv_batch`] makes over a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Start loading what processing will touch.
    Prefetch,
    /// Process the frame.
    Process,
}

/// Sizes of one socket's UMEM and rings (config `[ingest.af_xdp]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XskConfig {
    /// Frames in the UMEM (power of two).
    pub frames: u32,
    /// Bytes per frame: 2048 or 4096.
    pub frame_size: u32,
    /// Descriptors in the RX ring (power of two).
    pub rx_ring: u32,
    /// Frames taken per receive call.
    pub batch: u32,
}

impl Default for XskConfig {
    fn default() -> Self {
        Self {
            frames: 8192,
            frame_size: 2048,
            rx_ring: 4096,
            batch: 64,
        }
    }
}

/// Why a socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// A size is not usable.
    #[error("AF_XDP sizes: {0}")]
    Config(String),
    /// A step of the setup failed.
    #[error("AF_XDP socket on {iface} queue {queue}: {step} failed: {errno} (needs root or CAP_NET_RAW + CAP_NET_ADMIN, and the queue must exist: `ethtool -l {iface}`)")]
    Setup {
        /// Interface.
        iface: String,
        /// Queue.
        queue: u32,
        /// Which step.
        step: &'static str,
        /// errno text.
        errno: String,
    },
}

/// One AF_XDP socket with its UMEM. Fields drop in order: rings before the
/// socket, the socket before the memory the kernel writes into.
pub struct XskSocket {
    rx: RingRx,
    device: DeviceQueue,
    user: User,
    _sock: Socket,
    umem: Umem,
    area: memmap2::MmapMut,
    frame_mask: u64,
    batch: u32,
    /// Descriptors read this batch (reserved once).
    descs: Vec<xdpilone::xdp::XdpDesc>,
    /// Frame addresses read this batch, to refill in one step.
    recycle: Vec<u64>,
    /// Frames delivered.
    pub frames: u64,
    /// Frames whose descriptor pointed outside the UMEM (never expected).
    pub bad_descriptors: u64,
    /// Read the classifier's mark in front of each frame (see
    /// [`XskSocket::set_read_marks`]).
    read_marks: bool,
    /// Every frame starts with the 8-byte mark (see
    /// [`XskSocket::set_mark_prefix`]).
    mark_prefix: bool,
}

impl std::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSocket")
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl XskSocket {
    /// Opens and binds a socket on `iface` queue `queue` and fills its fill
    /// ring with every frame. Insert [`XskSocket::fd`] into the XDP program's
    /// XSKMAP to receive.
    pub fn open(iface: &str, queue: u32, cfg: &XskConfig) -> Result<Self, XskError> {
        if !cfg.frames.is_power_of_two()
            || !cfg.rx_ring.is_power_of_two()
            || cfg.frames < cfg.rx_ring
        {
            return Err(XskError::Config(format!(
                "frames ({}) and rx_ring ({}) must be powers of two with frames >= rx_ring",
                cfg.frames, cfg.rx_ring
            )));
        }
        if cfg.frame_size != 2048 && cfg.frame_size != 4096 {
            return Err(XskError::Config(format!(
                "frame_size {} must be 2048 or 4096",
                cfg.frame_size
            )));
        }
        let step = |step: &'static str| {
            let iface = iface.to_string();
            move |e: xdpilone::Errno| XskError::Setup {
                iface,
                queue,
                step,
                errno: e.to_string(),
            }
        };
        let len = cfg.frames as usize * cfg.frame_size as usize;
        let mut area = memmap2::MmapMut::map_anon(len).map_err(|e| XskError::Setup {
            iface: iface.to_string(),
            queue,
            step: "mapping the UMEM",
            errno: e.to_string(),
        })?;
        let ptr = NonNull::new(std::ptr::slice_from_raw_parts_mut(area.as_mut_ptr(), len))
            .ok_or_else(|| XskError::Config("empty UMEM".into()))?;
        let ucfg = UmemConfig {
            fill_size: cfg.frames,
            complete_size: cfg.frames.min(cfg.rx_ring),
            frame_size: cfg.frame_size,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: `area` is a page-aligned anonymous mapping of exactly `len`
        // bytes, owned by the returned struct and dropped after the socket and
        // rings that reference it (field order).
        let umem = unsafe { Umem::new(ucfg, ptr) }.map_err(step("registering the UMEM"))?;
        let mut info = IfInfo::invalid();
        let name = CString::new(iface)
            .map_err(|_| XskError::Config(format!("bad interface name {iface:?}")))?;
        info.from_name(&name)
            .map_err(step("looking up the interface"))?;
        info.set_queue(queue);
        let sock = Socket::with_shared(&info, &umem).map_err(step("creating the socket"))?;
        let mut device = umem
            .fq_cq(&sock)
            .map_err(step("mapping the fill/completion rings"))?;
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: NonZeroU32::new(cfg.rx_ring),
                    tx_size: None,
                    bind_flags: SocketConfig::XDP_BIND_NEED_WAKEUP,
                },
            )
            .map_err(step("creating the RX ring"))?;
        let rx = user.map_rx().map_err(step("mapping the RX ring"))?;
        umem.bind(&user).map_err(step("binding"))?;

        let frame_size = u64::from(cfg.frame_size);
        {
            let mut fill = device.fill(cfg.frames);
            let n = fill.insert((0..u64::from(cfg.frames)).map(|i| i * frame_size));
            fill.commit();
            if n != cfg.frames {
                return Err(XskError::Config(format!(
                    "the fill ring took {n} of {} frames",
                    cfg.frames
                )));
            }
        }
        Ok(Self {
            rx,
            device,
            user,
            _sock: sock,
            umem,
            area,
            frame_mask: !(frame_size - 1),
            batch: cfg.batch.max(1),
            descs: Vec::with_capacity(cfg.batch.max(1) as usize),
            recycle: Vec::with_capacity(cfg.batch.max(1) as usize),
            frames: 0,
            bad_descriptors: 0,
            read_marks: false,
            mark_prefix: false,
        })
    }

    /// Frames taken per receive call at most.
    pub fn batch(&self) -> u32 {
        self.batch
    }

    /// The socket's fd, for the XSKMAP.
    pub fn fd(&self) -> RawFd {
        self.user.as_raw_fd()
    }

    /// Reads the in-kernel classifier's mark (`struct klais_xdp_meta`, the
    /// 8 bytes of XDP metadata the program writes in front of every frame it
    /// redirects) from now on: [`XskSocket::recv_batch_marked`] hands it to
    /// the caller, who checks its hash bits against the frame's device (a
    /// stale mark in a reused frame never matches); the tag is cleared after
    /// reading.
    pub fn set_read_marks(&mut self, on: bool) {
        self.read_marks = on;
    }

    /// The program this socket is bound to puts the mark in an 8-byte prefix
    /// of every frame instead of the metadata area (a kernel that refuses
    /// `bpf_xdp_adjust_meta` in XDP programs; the XDP adapter probes it and
    /// sets this when it binds the socket): the prefix is read as the mark
    /// (when marks are read) and always stripped from the frame.
    pub fn set_mark_prefix(&mut self, on: bool) {
        self.mark_prefix = on;
    }

    /// Takes up to a batch of frames (see [`XskSocket::recv_batch_marked`]),
    /// without marks.
    #[inline]
    pub fn recv_batch(&mut self, mut on_frame: impl FnMut(Pass, &[u8])) -> u32 {
        self.recv_batch_marked(|pass, f, _| on_frame(pass, f))
    }

    /// Receives up to one batch and calls `on_frame` twice per frame with its
    /// bytes (an Ethernet frame): first [`Pass::Prefetch`] for every frame of
    /// the batch, then [`Pass::Process`] for every frame, so the caller can
    /// start the cache misses of the whole batch before working on any of it.
    /// Then returns the frames to the fill ring in one step. Returns the
    /// number of frames. Allocates nothing.
    /// The third argument is the classifier's mark in front of the frame
    /// (None when marks are not read or no tag is there).
    #[inline]
    pub fn recv_batch_marked(
        &mut self,
        mut on_frame: impl FnMut(Pass, &[u8], Option<XdpMark>),
    ) -> u32 {
        let area_len = self.area.len() as u64;
        self.descs.clear();
        {
            let mut rx = self.rx.receive(self.batch);
            while let Some(desc) = rx.read() {
                self.descs.push(desc);
            }
            rx.release();
        }
        let n = self.descs.len() as u32;
        if n == 0 {
            if self.device.needs_wakeup() {
                self.device.wake();
            }
            return 0;
        }
        let read_marks = self.read_marks;
        // Per socket, not per frame: the program's mark mode.
        let prefix: u64 = if self.mark_prefix { 8 } else { 0 };
        for pass in [Pass::Prefetch, Pass::Process] {
            for desc in &self.descs {
                let end = desc.addr + u64::from(desc.len);
                if end <= area_len && u64::from(desc.len) >= prefix {
                    let mut mark = None;
                    let start = desc.addr + prefix;
                    if read_marks && pass == Pass::Process && start >= 8 {
                        let m = start as usize - 8;
                        let meta = &mut self.area[m..m + 8];
                        if u16::from_ne_bytes([meta[0], meta[1]]) == KLAIS_META_TAG {
                            mark = Some(XdpMark {
                                class: meta[2],
                                marked: meta[3] == KLAIS_ACT_MARK,
                                hash_lo: u32::from_ne_bytes([meta[4], meta[5], meta[6], meta[7]]),
                            });
                            meta[0] = 0;
                            meta[1] = 0;
                        }
                    }
                    on_frame(pass, &self.area[start as usize..end as usize], mark);
                } else if pass == Pass::Process {
                    self.bad_descriptors += 1;
                }
            }
        }
        let mask = self.frame_mask;
        self.recycle
            .extend(self.descs.iter().map(|d| d.addr & mask));
        {
            let mut fill = self.device.fill(n);
            // The fill ring holds every frame, so there is always room for
            // the ones just released.
            fill.insert(self.recycle.drain(..));
            fill.commit();
        }
        self.frames += u64::from(n);
        if self.device.needs_wakeup() {
            self.device.wake();
        }
        n
    }

    /// Frames the kernel could not deliver to this socket (RX ring full, or no
    /// free frame in the fill ring), from XDP_STATISTICS. The shard never saw
    /// them; they are counted so such loss is never silent.
    pub fn kernel_drops(&self) -> u64 {
        self.user
            .statistics_v2()
            .map(|s| s.rx_dropped + s.rx_ring_full + s.rx_invalid_descs)
            .unwrap_or(0)
    }

    /// Number of UMEM frames (for diagnostics).
    pub fn umem_frames(&self) -> u32 {
        self.umem.len_frames()
    }
}

/// Shortest idle nap of a shard, µs.
pub const NAP_MIN_US: u64 = 50;
/// Frames per publish tick (10 ms) below which traffic counts as light and
/// naps may grow: 300, i.e. 30,000 frames/s.
pub const LIGHT_FRAMES_PER_TICK: u32 = 300;
/// Longest idle nap of a shard, µs: the default 4,096-descriptor RX ring
/// overflows during one only above ~10M frames/s.
pub const NAP_MAX_US: u64 = 400;

/// The next idle nap after one in which `frames` arrived: fewer than 8
/// frames per wake-up (light traffic) doubles it up to [`NAP_MAX_US`], half a
/// batch or more (traffic picking up) goes back to [`NAP_MIN_US`]. At 20,000
/// frames/s this is ~2,500 wake-ups a second instead of ~20,000; the delay it
/// adds is at most one nap.
pub fn next_nap(nap_us: u64, frames: u32, batch: u32) -> u64 {
    if frames >= (batch / 2).max(8) {
        NAP_MIN_US
    } else if frames < 8 {
        (nap_us * 2).min(NAP_MAX_US)
    } else {
        nap_us
    }
}

/// Receive loop of one shard on its AF_XDP socket. Busy-polls the RX ring
/// while traffic flows, yields to the executor between batches, and naps once
/// idle for 64 empty polls: 50 µs, longer while traffic is light
/// ([`next_nap`]). One receive timestamp per
/// batch. When `stop` is set it calls `unbind` (the XDP program then passes
/// this queue's traffic to the kernel), takes what is already in the ring and
/// returns. Frames that are not UDP (never expected: the filter redirects only
/// klais UDP) are counted in the return value.
pub async fn receive_loop(
    xsk: &mut XskSocket,
    shard: &mut crate::shard::Shard,
    stop: &std::sync::atomic::AtomicBool,
    published: &crate::telemetry::Published<crate::shard::ShardSnapshot>,
    tick: std::time::Duration,
    unbind: impl FnOnce(),
) -> u64 {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let mut not_udp = 0u64;
    // Device hashes from the prefetch pass, in frame order (reserved once).
    let mut hashes: Vec<Option<u64>> = Vec::with_capacity(xsk.batch() as usize);
    let mut idle = 0u32;
    let mut polls = 0u32;
    // Idle naps, coalescing: while few frames arrive per wake-up the nap
    // doubles (50 µs up to NAP_MAX_US), a busy wake-up resets it; under load
    // the ring is never empty long enough to nap at all.
    let mut nap_us = NAP_MIN_US;
    let mut since_nap = 0u32;
    let mut tick_frames = 0u32;
    let mut light = true;
    // Published every 10 ms at most: the control core's tick.
    let publish_every = tick.min(Duration::from_millis(10));
    let mut next_publish = Instant::now() + publish_every;
    loop {
        let ts = crate::clock::now_ns();
        hashes.clear();
        let mut k = 0;
        let n = xsk.recv_batch_marked(|pass, frame, mark| match (pass, udp_payload_port(frame)) {
            (Pass::Prefetch, p) => hashes.push(p.and_then(|(_, p)| shard.prefetch(p))),
            (Pass::Process, Some((port, p))) => {
                let h = hashes.get(k).copied().flatten();
                k += 1;
                let flags = XdpMark::flags_for(mark, h);
                let _ = shard.on_packet(p, ts, h, flags, port);
            }
            (Pass::Process, None) => {
                k += 1;
                not_udp += 1;
            }
        });
        shard.pump();
        polls = polls.wrapping_add(1);
        if n == 0 {
            idle = idle.saturating_add(1);
        } else {
            idle = 0;
            since_nap = since_nap.saturating_add(n);
            tick_frames = tick_frames.saturating_add(n);
        }
        if polls % 64 == 0 || idle > 0 {
            let now = Instant::now();
            if now >= next_publish {
                shard.set_queue_drops(xsk.kernel_drops());
                let mut snap = shard.snapshot();
                shard.tick_model(&mut snap);
                published.publish(snap);
                shard.apply_setpoints();
                next_publish = now + publish_every;
                // Long naps only while the last tick was light: under load
                // the shard keeps the short nap and the 64-poll spin.
                light = tick_frames < LIGHT_FRAMES_PER_TICK;
                tick_frames = 0;
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        // Spin 64 empty polls before a nap (a burst may be right behind);
        // once two light wake-ups in a row grew the nap, nap at the first
        // empty poll: traffic is light, each spin a wasted syscall.
        if idle
            > if light && nap_us >= 4 * NAP_MIN_US {
                0
            } else {
                64
            }
        {
            nap_us = if light {
                next_nap(nap_us, since_nap, xsk.batch())
            } else {
                NAP_MIN_US
            };
            since_nap = 0;
            glommio::timer::sleep(Duration::from_micros(nap_us)).await;
        } else {
            glommio::yield_if_needed().await;
        }
    }
    unbind();
    // What the kernel put in the ring before the unbind took effect.
    let mut quiet = 0;
    while quiet < 3 {
        let ts = crate::clock::now_ns();
        let n = xsk.recv_batch(|pass, frame| match (pass, udp_payload_port(frame)) {
            (Pass::Process, Some((port, p))) => {
                let _ = shard.on_datagram_at(p, ts, port);
            }
            (Pass::Process, None) => not_udp += 1,
            _ => {}
        });
        shard.pump();
        if n == 0 {
            quiet += 1;
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
    }
    shard.set_queue_drops(xsk.kernel_drops());
    not_udp
}

/// The UDP payload of an Ethernet frame (up to two VLAN tags, IPv4 with
/// options or IPv6, UDP), bounded by the UDP length; None if the frame is not
/// a well-formed UDP datagram. The XDP filter only redirects klais UDP, so
/// None here means a frame the kernel should not have sent: counted, not
/// parsed further.
#[inline]
pub fn udp_payload(frame: &[u8]) -> Option<&[u8]> {
    udp_payload_port(frame).map(|(_, p)| p)
}

/// [`udp_payload`] with the datagram's destination port (its `[auth]` policy).
#[inline]
pub fn udp_payload_port(frame: &[u8]) -> Option<(u16, &[u8])> {
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
    off += 2;
    for _ in 0..2 {
        if ethertype == 0x8100 || ethertype == 0x88A8 {
            ethertype = u16::from_be_bytes([*frame.get(off + 2)?, *frame.get(off + 3)?]);
            off += 4;
        }
    }
    let l4 = match ethertype {
        0x0800 => {
            let vihl = *frame.get(off)?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            if vihl >> 4 != 4 || ihl < 20 || *frame.get(off + 9)? != 17 {
                return None;
            }
            off + ihl
        }
        0x86DD => {
            if *frame.get(off + 6)? != 17 {
                return None;
            }
            off + 40
        }
        _ => return None,
    };
    let udp = frame.get(l4..l4 + 8)?;
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if ulen < 8 {
        return None;
    }
    let port = u16::from_be_bytes([udp[2], udp[3]]);
    frame.get(l4 + 8..l4 + ulen).map(|p| (port, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdp::frame::{self, UdpFrame};

    #[test]
    fn the_udp_payload_is_found_behind_every_header_shape() {
        let payload = b"\xAA\x55hello-payload";
        for (vlans, ipv6, ip_options) in [
            (&[][..], false, 0),
            (&[(0x8100u16, 1u16)][..], false, 0),
            (&[(0x88A8, 1), (0x8100, 2)][..], true, 0),
            (&[][..], false, 40),
        ] {
            let f = frame::udp(&UdpFrame {
                vlans,
                ipv6,
                ip_options,
                dst_port: 7700,
                payload,
            });
            assert_eq!(
                udp_payload(&f),
                Some(&payload[..]),
                "{vlans:?} v6 {ipv6} opts {ip_options}"
            );
            // Ethernet padding after the datagram is not payload.
            let mut padded = f.clone();
            padded.extend_from_slice(&[0; 8]);
            assert_eq!(udp_payload(&padded), Some(&payload[..]));
        }
    }

    #[test]
    fn naps_grow_under_light_traffic_and_reset_when_it_picks_up() {
        let mut nap = NAP_MIN_US;
        for _ in 0..10 {
            nap = next_nap(nap, 1, 64);
        }
        assert_eq!(nap, NAP_MAX_US, "light traffic: the longest nap");
        assert_eq!(next_nap(nap, 12, 64), NAP_MAX_US, "in between: unchanged");
        assert_eq!(
            next_nap(nap, 32, 64),
            NAP_MIN_US,
            "half a batch: back to the shortest"
        );
        assert_eq!(next_nap(NAP_MIN_US, 0, 64), 2 * NAP_MIN_US);
    }

    #[test]
    fn non_udp_and_truncated_frames_have_no_payload() {
        assert_eq!(udp_payload(&frame::arp()), None);
        assert_eq!(udp_payload(&frame::tcp_syn(7700)), None);
        let f = frame::udp(&UdpFrame {
            dst_port: 7700,
            payload: b"0123456789012345678901234",
            ..Default::default()
        });
        for cut in 0..f.len() {
            assert_eq!(udp_payload(&f[..cut]), None, "cut {cut}");
        }
    }
}
