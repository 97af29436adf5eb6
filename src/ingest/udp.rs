//! The UDP backend: one socket per shard, SO_REUSEPORT, a large receive buffer,
//! received through glommio (io_uring, with a direct non-blocking receive tried
//! first while the queue has data).
//!
//! The socket is made with socket2 so SO_RCVBUF is set before bind (glommio's own
//! `bind` leaves the kernel default, which drops bursts; MACHINE-NOTES). The
//! receive loop checks the stop flag and publishes the shard's counters every 64
//! datagrams or on the read timeout, never per datagram.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use glommio::GlommioError;
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
/// is set, then reads what the socket already holds (bounded by one second)
/// and returns. Records are published per batch ([`Shard::pump`]): every 32
/// datagrams, and when the socket has been quiet for 1 ms, which bounds the
/// added latency of a lone message.
pub async fn receive_loop(
    socket: Socket,
    shard: &mut Shard,
    stop: &AtomicBool,
    published: &Published<ShardSnapshot>,
    tick: Duration,
) -> io::Result<()> {
    // SAFETY: `into_raw_fd` gives up ownership of a valid open UDP socket fd;
    // glommio's UdpSocket takes sole ownership and closes it on drop.
    let sock = unsafe { glommio::net::UdpSocket::from_raw_fd(socket.into_raw_fd()) };
    sock.set_read_timeout(Some(Duration::from_millis(1)))
        .map_err(to_io)?;
    // One buffer for the shard's lifetime: large enough that no UDP datagram is
    // truncated, so over-size payloads are seen and counted, not cut.
    let mut buf = vec![0u8; MAX_DATAGRAM + 64];
    let mut since_pump = 0u32;
    let publish_every = tick.min(Duration::from_millis(100));
    let mut next_publish = Instant::now() + publish_every;
    let mut draining_until: Option<Instant> = None;
    loop {
        let timed_out = match sock.recv_from(&mut buf).await {
            Ok((n, _from)) => {
                let _ = shard.on_datagram(&buf[..n], now_ns());
                since_pump += 1;
                false
            }
            Err(e) if is_timeout(&e) => true,
            Err(e) => return Err(to_io(e)),
        };
        if !timed_out && since_pump < 32 {
            continue;
        }
        since_pump = 0;
        shard.pump();
        let now = Instant::now();
        if now >= next_publish {
            published.publish(shard.snapshot());
            next_publish = now + publish_every;
        }
        match draining_until {
            None if stop.load(Ordering::Relaxed) => {
                // Take what the kernel already queued, then stop.
                sock.set_read_timeout(Some(Duration::from_millis(20)))
                    .map_err(to_io)?;
                draining_until = Some(now + Duration::from_secs(1));
            }
            Some(deadline) if timed_out || now >= deadline => break,
            _ => {}
        }
    }
    shard.pump();
    Ok(())
}

fn is_timeout(e: &GlommioError<()>) -> bool {
    match e {
        GlommioError::TimedOut(_) => true,
        GlommioError::IoError(io) => io.kind() == io::ErrorKind::TimedOut,
        GlommioError::EnhancedIoError { source, .. } => source.kind() == io::ErrorKind::TimedOut,
        _ => false,
    }
}

fn to_io(e: GlommioError<()>) -> io::Error {
    match e {
        GlommioError::IoError(io) => io,
        other => io::Error::other(other.to_string()),
    }
}

/// Wall-clock receive time, ns since the Unix epoch (vDSO clock_gettime).
#[inline]
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
