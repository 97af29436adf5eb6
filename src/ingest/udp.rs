//! The UDP backend: one socket per shard, SO_REUSEPORT, a large receive buffer,
//! received through io_uring with the io-uring crate directly: 64 `recv`
//! operations stay in flight, each completion batch is prefetched, processed
//! and published at once, and its buffers go straight back in.
//!
//! Why not glommio's socket: `cargo bench --bench udp_recv` measured 1,211 ns
//! per 200-byte datagram for glommio's `recv_from` against 812 ns for this
//! (and 837 ns for `recvmmsg` of 64) on loopback with the datagrams already
//! queued. The shard still runs on its pinned glommio executor.
//!
//! The socket is made with socket2 so SO_RCVBUF is set before bind (the kernel
//! default drops bursts; MACHINE-NOTES).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::shard::{Shard, ShardSnapshot};
use crate::telemetry::Published;
use crate::wire::MAX_DATAGRAM;

/// Why the UDP socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    /// socket(2) or a socket option failed.
    #[error("cannot create a UDP socket for {addr}: {source}")]
    Socket {
        /// Listen address.
        addr: SocketAddr,
        /// OS error.
        source: io::Error,
    },
    /// bind(2) failed.
    #[error(
        "cannot bind UDP {addr}: {source} (is another process using the port? see ingest.listen)"
    )]
    Bind {
        /// Listen address.
        addr: SocketAddr,
        /// OS error.
        source: io::Error,
    },
}

/// A bound receive socket and the buffer size the kernel granted.
#[derive(Debug)]
pub struct BoundSocket {
    /// The socket, not yet handed to an executor.
    pub socket: Socket,
    /// Receive buffer the kernel reports (it doubles the request for bookkeeping).
    pub recv_buffer_bytes: usize,
}

/// Creates and binds a shard's socket with SO_REUSEPORT and the requested
/// receive buffer. Beyond `net.core.rmem_max` it tries SO_RCVBUFFORCE
/// (needs CAP_NET_ADMIN); the caller warns when the grant is still short.
pub fn bind(addr: SocketAddr, recv_buffer_bytes: usize) -> Result<BoundSocket, UdpError> {
    let sock_err = |source| UdpError::Socket { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(sock_err)?;
    socket.set_reuse_port(true).map_err(sock_err)?;
    socket
        .set_recv_buffer_size(recv_buffer_bytes)
        .map_err(sock_err)?;
    let mut granted = socket.recv_buffer_size().map_err(sock_err)?;
    if granted < recv_buffer_bytes {
        force_recv_buffer(&socket, recv_buffer_bytes);
        granted = socket.recv_buffer_size().map_err(sock_err)?;
    }
    socket
        .bind(&addr.into())
        .map_err(|source| UdpError::Bind { addr, source })?;
    Ok(BoundSocket {
        socket,
        recv_buffer_bytes: granted,
    })
}

/// SO_RCVBUFFORCE: ignores rmem_max when the process has CAP_NET_ADMIN.
/// Failure is not an error here: the caller compares the granted size.
fn force_recv_buffer(socket: &Socket, bytes: usize) {
    let val: libc::c_int = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: the fd is a valid open socket owned by `socket` for the whole
    // call; the option value points to a live c_int and its exact size is passed.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Receive loop of one shard. Runs on the shard's pinned executor until `stop`
/// is set, then reads what the socket already holds (for at most 200 ms, so a
/// sender that never pauses cannot hold up shutdown) and returns. Waits for
/// completions at most 1 ms at a time, which bounds the added latency of a
/// lone message and keeps the mesh and the stop flag served when idle; within
/// that, for 32 datagrams or `coalesce_us` (then for the first).
///
/// One multishot receive takes every datagram into a ring of provided
/// buffers ([`BufRing`]): one poll entry on the socket. (64 single receives
/// in flight, as before, each woke on every datagram: at 20,000 evenly
/// spaced datagrams/s a profile put 56% of the shard in receives retried
/// and polls re-armed.)
///
/// # Requires
/// io_uring with `IORING_FEAT_EXT_ARG` (Linux 5.11+), provided-buffer rings
/// and multishot receive (Linux 6.0+).
pub async fn receive_loop(
    socket: Socket,
    shard: &mut Shard,
    stop: &AtomicBool,
    published: &Published<ShardSnapshot>,
    tick: Duration,
    coalesce_us: u32,
) -> io::Result<()> {
    // Declared before the ring: the ring (and the receive still in flight)
    // is dropped first.
    let mut bufs = BufRing::new()?;
    let mut ring = coalescing_ring(4 * BufRing::COUNT as u32)?;
    let min_timeout = ring.params().is_feature_min_timeout();
    let coalesce_us = coalesce_us.min(1000);
    // The last wait brought nothing (see `wait_plan`).
    let mut quiet = true;
    // SAFETY: the ring memory and the buffers live in `bufs`, which
    // outlives `ring` (declared first, dropped last).
    unsafe { bufs.register(&ring) }.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot register the UDP receive buffers with io_uring ({e}): klais needs Linux 6.0 or later"
            ),
        )
    })?;
    let fd = io_uring::types::Fd(socket.as_raw_fd());
    let recv = io_uring::opcode::RecvMulti::new(fd, BufRing::GROUP)
        .build()
        .user_data(RECV);
    // SAFETY: the entry borrows no user memory (the kernel picks buffers
    // from the registered ring); the queue has room.
    let _ = unsafe { ring.submission().push(&recv) };
    let wait = io_uring::types::Timespec::new().nsec(1_000_000);
    // (buffer id, length) of each datagram of a wake-up, then its hash.
    let mut done: Vec<(u16, usize)> = Vec::with_capacity(BufRing::COUNT);
    let mut hashes: Vec<Option<u64>> = Vec::with_capacity(BufRing::COUNT);
    // Published every 10 ms at most: the control core's tick.
    let publish_every = tick.min(Duration::from_millis(10));
    let mut next_publish = Instant::now() + publish_every;
    let mut publications = 0u32;
    let mut stopping: Option<Instant> = None;
    let mut errors = 0u64;
    loop {
        let (want, wait_ns, min_wait) = wait_plan(min_timeout, coalesce_us, quiet);
        let ts = io_uring::types::Timespec::new().nsec(wait_ns);
        let args = io_uring::types::SubmitArgs::new()
            .timespec(&ts)
            .min_wait_usec(min_wait);
        match ring.submitter().submit_with_args(want, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        let (rearm, failed) = bufs.take(&mut ring, RECV, &mut done);
        errors += failed;
        quiet = done.is_empty();
        let now = now_ns();
        hashes.clear();
        hashes.extend(
            done.iter()
                .map(|&(bid, len)| shard.prefetch(bufs.get(bid, len))),
        );
        for (&(bid, len), &h) in done.iter().zip(hashes.iter()) {
            let _ = shard.on_prefetched(bufs.get(bid, len), now, h);
            bufs.recycle(bid);
        }
        bufs.publish();
        if rearm {
            // SAFETY: as for the first receive.
            let _ = unsafe { ring.submission().push(&recv) };
        }
        shard.pump();
        let t = Instant::now();
        if t >= next_publish {
            // /proc/net/udp is read every tenth publication (100 ms).
            publications = publications.wrapping_add(1);
            if publications % 10 == 0 {
                if let Some(d) = socket_drops(fd.0) {
                    shard.set_queue_drops(d);
                }
            }
            let mut snap = shard.snapshot();
            shard.tick_model(&mut snap);
            published.publish(snap);
            shard.apply_setpoints();
            next_publish = t + publish_every;
        }
        if let Some(deadline) = stopping {
            // Drained (nothing arrived within a wait), or the senders keep
            // going: stop taking new datagrams after a bounded drain.
            if done.is_empty() || t >= deadline {
                break;
            }
        } else if stop.load(Ordering::Relaxed) {
            stopping = Some(t + Duration::from_millis(200));
        }
        glommio::yield_if_needed().await;
    }
    // Cancel the receive and wait for its last completion, so no buffer is
    // freed while the kernel could still write into it; a datagram that
    // completes meanwhile is still taken.
    let cancel = io_uring::opcode::AsyncCancel::new(RECV)
        .build()
        .user_data(CANCEL);
    // SAFETY: the cancel entry references no user memory.
    let _ = unsafe { ring.submission().push(&cancel) };
    let mut ended = false;
    let deadline = Instant::now() + Duration::from_secs(2);
    while !ended && Instant::now() < deadline {
        let args = io_uring::types::SubmitArgs::new().timespec(&wait);
        let _ = ring.submitter().submit_with_args(1, &args);
        let now = now_ns();
        let (last, failed) = bufs.take(&mut ring, RECV, &mut done);
        ended |= last;
        errors += failed;
        for &(bid, len) in &done {
            let _ = shard.on_datagram(bufs.get(bid, len), now);
            bufs.recycle(bid);
        }
        bufs.publish();
    }
    if !ended {
        // Never expected: keep the buffers alive rather than risk the kernel
        // writing into freed memory.
        tracing::error!(
            shard = shard.id(),
            "the UDP receive did not cancel; leaking its buffers"
        );
        std::mem::forget(bufs);
    }
    if errors > 0 {
        tracing::warn!(shard = shard.id(), errors, "UDP receive operations failed");
    }
    if let Some(d) = socket_drops(fd.0) {
        shard.set_queue_drops(d);
    }
    shard.pump();
    drop(ring);
    Ok(())
}

/// How a shard waits for datagrams: (completions wanted, timeout in ns,
/// the kernel's min-wait in µs). With the kernel's min-wait (Linux 6.12+)
/// one wait does it: up to 1 ms for 32 datagrams, returning for fewer once
/// `coalesce_us` has passed. Without it (Debian 12's 6.1) the same is done in
/// two kinds of wait: a shard whose last wait brought nothing (`quiet`) waits
/// up to 1 ms for the first datagram, and one that just received waits up to
/// `coalesce_us` for 32. `coalesce_us` 0: every wait is for the first.
fn wait_plan(min_timeout: bool, coalesce_us: u32, quiet: bool) -> (usize, u32, u32) {
    const MS: u32 = 1_000_000;
    let batch = BufRing::COUNT / 2;
    match (coalesce_us, min_timeout) {
        (0, _) => (1, MS, 0),
        (c, true) => (batch, MS, c),
        (_, false) if quiet => (1, MS, 0),
        (c, false) => (batch, c * 1000, 0),
    }
}

/// user_data of the multishot receive and of its cancel.
const RECV: u64 = 1;
const CANCEL: u64 = 2;

/// The shard's receive buffers as an io_uring provided-buffer ring: the
/// kernel takes a buffer per datagram, the shard gives it back once the
/// datagram is processed (the whole wake-up's at once). Each buffer is large
/// enough that no UDP datagram is truncated, so over-size payloads are seen
/// and counted, not cut.
pub struct BufRing {
    /// `COUNT` entries, page-aligned (the kernel's requirement).
    ring: std::ptr::NonNull<io_uring::types::BufRingEntry>,
    bufs: Box<[u8]>,
    /// Entries given to the kernel so far (wrapping); published by
    /// [`BufRing::publish`].
    tail: u16,
}

impl BufRing {
    /// Buffers (a power of two).
    pub const COUNT: usize = 64;
    /// Bytes per buffer: the largest UDP datagram, and some.
    pub const SIZE: usize = MAX_DATAGRAM + 64;
    /// The buffer group id.
    pub const GROUP: u16 = 0;
    /// No buffer (an empty datagram).
    pub const NONE: u16 = u16::MAX;

    fn layout() -> std::alloc::Layout {
        let bytes = Self::COUNT * std::mem::size_of::<io_uring::types::BufRingEntry>();
        // 4096 is a power of two and the size is small: never fails.
        std::alloc::Layout::from_size_align(bytes, 4096).expect("buffer ring layout")
    }

    /// Every buffer in the ring, not yet registered.
    pub fn new() -> io::Result<BufRing> {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout()) };
        let ring = std::ptr::NonNull::new(ptr.cast())
            .ok_or_else(|| io::Error::other("cannot allocate the UDP buffer ring"))?;
        let mut r = BufRing {
            ring,
            bufs: vec![0u8; Self::COUNT * Self::SIZE].into_boxed_slice(),
            tail: 0,
        };
        for bid in 0..Self::COUNT as u16 {
            r.recycle(bid);
        }
        Ok(r)
    }

    /// Registers the ring (with every buffer in it) as group `GROUP`.
    ///
    /// # Safety
    /// `self` must outlive `ring`'s use of it (the kernel writes the buffers
    /// and reads the entries until the ring is closed).
    pub unsafe fn register(&mut self, ring: &io_uring::IoUring) -> io::Result<()> {
        self.publish();
        // SAFETY: the caller keeps the memory alive; COUNT entries.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.ring.as_ptr() as u64,
                Self::COUNT as u16,
                Self::GROUP,
                0,
            )
        }
    }

    /// Takes the completions of receive `user_data` waiting in `ring`: each
    /// datagram as (buffer id, length) into `done` (an empty one takes no
    /// buffer: [`BufRing::NONE`]); a failed completion's buffer comes back
    /// at once. Returns whether the receive ended (it must be submitted
    /// again; out of buffers ends it too) and how many completions failed.
    pub fn take(
        &mut self,
        ring: &mut io_uring::IoUring,
        user_data: u64,
        done: &mut Vec<(u16, usize)>,
    ) -> (bool, u64) {
        done.clear();
        let (mut ended, mut failed) = (false, 0);
        for c in ring.completion() {
            if c.user_data() != user_data {
                continue;
            }
            match io_uring::cqueue::buffer_select(c.flags()) {
                Some(bid) if c.result() >= 0 => done.push((bid, c.result() as usize)),
                Some(bid) => {
                    failed += 1;
                    self.recycle(bid);
                }
                None if c.result() == 0 => done.push((Self::NONE, 0)),
                // Out of buffers is not a failure: the receive just ended.
                None if c.result() != -libc::ENOBUFS && c.result() != -libc::ECANCELED => {
                    failed += 1
                }
                None => {}
            }
            ended |= !io_uring::cqueue::more(c.flags());
        }
        (ended, failed)
    }

    /// Datagram `len` bytes long in buffer `bid`.
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        if bid == Self::NONE {
            return &[];
        }
        let at = usize::from(bid) % Self::COUNT * Self::SIZE;
        &self.bufs[at..at + len.min(Self::SIZE)]
    }

    /// Puts buffer `bid` back at the tail (seen by the kernel once
    /// published).
    pub fn recycle(&mut self, bid: u16) {
        if bid == Self::NONE {
            return;
        }
        let at = usize::from(self.tail) % Self::COUNT;
        let addr = self.bufs[usize::from(bid) % Self::COUNT * Self::SIZE..].as_ptr() as u64;
        // SAFETY: `at` < COUNT entries of the allocation; the kernel reads an
        // entry only once the tail published past it.
        let e = unsafe { &mut *self.ring.as_ptr().add(at) };
        e.set_addr(addr);
        e.set_len(Self::SIZE as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the tail: the recycled buffers are the kernel's again.
    pub fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's reserved field
        // (the kernel's layout); it is an aligned u16 the kernel only reads.
        unsafe {
            let tail = io_uring::types::BufRingEntry::tail(self.ring.as_ptr())
                .cast::<std::sync::atomic::AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { std::alloc::dealloc(self.ring.as_ptr().cast(), Self::layout()) };
    }
}

/// The receive ring: single issuer with deferred task work (Linux 6.1+),
/// so an arriving datagram does not wake the shard before a wait's count or
/// time is reached; a plain ring on older kernels.
pub fn coalescing_ring(entries: u32) -> io::Result<io_uring::IoUring> {
    io_uring::IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
        .or_else(|_| io_uring::IoUring::new(entries))
}

/// Datagrams the kernel dropped at this socket because its receive buffer
/// was full (the `drops` column of /proc/net/udp{,6} for the socket's inode,
/// as seen from the caller's network namespace). None if not found.
pub fn socket_drops(fd: std::os::fd::RawFd) -> Option<u64> {
    // SAFETY: fstat fills the zeroed stat struct for a valid open fd.
    let ino = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return None;
        }
        st.st_ino
    };
    let ino = ino.to_string();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            if cols.len() >= 13 && cols[9] == ino {
                return cols[12].parse().ok();
            }
        }
    }
    None
}

pub use crate::clock::now_ns;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_waits_for_a_handful_with_or_without_the_kernels_min_wait() {
        // With the kernel's min-wait: always one wait for 32, at most 1 ms,
        // returning for fewer after coalesce_us.
        assert_eq!(wait_plan(true, 500, true), (32, 1_000_000, 500));
        assert_eq!(wait_plan(true, 500, false), (32, 1_000_000, 500));
        // Without it: quiet, up to 1 ms for the first; busy, up to
        // coalesce_us for 32.
        assert_eq!(wait_plan(false, 500, true), (1, 1_000_000, 0));
        assert_eq!(wait_plan(false, 500, false), (32, 500_000, 0));
        // 0: every wait is for the first datagram.
        for (min, quiet) in [(true, true), (true, false), (false, true), (false, false)] {
            assert_eq!(wait_plan(min, 0, quiet), (1, 1_000_000, 0));
        }
    }
}
