//! The output core's sockets on one io_uring: connect, send (scatter-gather
//! from the shards' batch buffers, no copy) and receive, each completion
//! tagged with the connection's slot, its generation and the operation.
//!
//! Memory the kernel reads or writes (send vectors, the receive buffer, the
//! peer address) lives in the [`Conn`] slot and is never freed or moved while
//! an operation on it is outstanding: a closed connection is shut down, its
//! outstanding operations complete with an error, and only then is the slot
//! reused (with a new generation, so a late completion cannot be mistaken for
//! the new connection's).
//!
//! A connection with TLS keeps the same interface: its frames go through
//! rustls into one ciphertext buffer that is sent whole, received
//! ciphertext is decrypted into `rbuf`, and the connect is reported only once
//! the handshake is done (a TLS failure is reported as a failed connect or
//! receive, with the reason in [`Conn::error`]).

use std::collections::VecDeque;
use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types, IoUring};

/// Operation kinds in a completion's user data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A connect finished.
    Connect = 1,
    /// A send finished (bytes written, or an error).
    Send = 2,
    /// A receive finished (bytes read, 0 at end of stream, or an error).
    Recv = 3,
    /// The doorbell's eventfd was read: a shard handed over a batch.
    Wake = 4,
}

/// Encodes (slot, generation, op) as a completion's user data.
fn user_data(slot: usize, gen: u32, op: Op) -> u64 {
    (u64::from(gen) << 32) | ((slot as u64) << 8) | op as u64
}

/// Decodes a completion's user data.
fn decode(ud: u64) -> (usize, u32, Option<Op>) {
    let op = match ud & 0xff {
        1 => Some(Op::Connect),
        2 => Some(Op::Send),
        3 => Some(Op::Recv),
        4 => Some(Op::Wake),
        _ => None,
    };
    (((ud >> 8) & 0xff_ffff) as usize, (ud >> 32) as u32, op)
}

/// Bytes a connection reads into at a time (grown for a larger response).
const RECV_CHUNK: usize = 64 * 1024;

/// One outgoing frame: a head buffer and the byte ranges sent after it
/// (pointers into the shards' batches, which stay put until acknowledged).
#[derive(Debug, Default)]
pub struct Frame {
    /// Request header and body up to the first borrowed range, and the small
    /// pieces between ranges (`Part::Head` ranges index into it).
    pub head: Vec<u8>,
    /// (offset in head, len) or a borrowed range, in send order.
    pub parts: Vec<Part>,
}

/// A piece of a frame.
#[derive(Debug, Clone, Copy)]
pub enum Part {
    /// `head[off..off + len]`.
    Head(usize, usize),
    /// Borrowed bytes (a batch in a lane; it outlives the send).
    Borrowed(*const u8, usize),
}

/// A TLS connection's state: rustls and the ciphertext buffers the kernel
/// reads and writes.
struct Tls {
    conn: rustls::ClientConnection,
    /// Ciphertext to send; `out[out_off..]` not yet sent. Not touched while a
    /// send is outstanding.
    out: Vec<u8>,
    out_off: usize,
    /// Ciphertext received (fixed size: not moved while a receive is
    /// outstanding).
    inb: Vec<u8>,
    /// The handshake finished and was reported.
    up: bool,
    /// Frames encrypted into `out` and not yet all sent.
    frames_in_out: u64,
}

/// The frames one `sendmsg` carries (every frame queued when it started, up
/// to [`MAX_IOV`] pieces): several requests in one system call. Its vectors
/// are kept and reused.
struct Sending {
    frames: Vec<Frame>,
    /// What is left to send.
    iov: Vec<libc::iovec>,
    /// Boxed: the kernel reads it while the send is outstanding.
    hdr: Box<libc::msghdr>,
}

impl Sending {
    fn new() -> Sending {
        Sending {
            frames: Vec::new(),
            iov: Vec::new(),
            // SAFETY: msghdr is plain data; zeroed is its empty value.
            hdr: Box::new(unsafe { std::mem::zeroed() }),
        }
    }

    fn active(&self) -> bool {
        !self.frames.is_empty()
    }

    /// Ends the send: its frames go to `spare` for reuse.
    fn finish(&mut self, spare: &mut Vec<Frame>) {
        self.iov.clear();
        for mut f in self.frames.drain(..) {
            if spare.len() < SPARE_FRAMES {
                f.head.clear();
                f.parts.clear();
                spare.push(f);
            }
        }
    }
}

/// Iovecs in one `sendmsg` at most (the kernel's IOV_MAX).
const MAX_IOV: usize = 1024;

/// Sent frames kept for reuse.
const SPARE_FRAMES: usize = 64;

/// A connection slot.
pub struct Conn {
    /// The socket (None once closed).
    pub sock: Option<socket2::Socket>,
    /// Generation of the slot.
    pub gen: u32,
    /// Peer.
    pub addr: SocketAddr,
    addr_raw: Box<socket2::SockAddr>,
    /// Connected.
    pub connected: bool,
    /// Closing: no new operation; the slot is free when none is outstanding.
    pub closing: bool,
    connect_busy: bool,
    send_busy: bool,
    recv_busy: bool,
    /// Frames waiting to be sent, in order ([`Uring::enqueue`]).
    queue: VecDeque<Frame>,
    /// Frames enqueued since the connect.
    queued: u64,
    /// How many of them the kernel has taken whole: frame `n` (from
    /// [`Uring::enqueue`]) is written once `written >= n`, and only then may
    /// what it borrows be reused.
    pub written: u64,
    /// The frames of the send under way, their iovecs and how far it got.
    sending: Sending,
    /// Bytes read and not yet parsed: `rbuf[..rlen]`.
    pub rbuf: Vec<u8>,
    /// Filled length of `rbuf`.
    pub rlen: usize,
    tls: Option<Box<Tls>>,
    /// Why the connection failed, when the errno does not say (TLS).
    pub error: Option<String>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("addr", &self.addr)
            .field("connected", &self.connected)
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// True while the kernel may still touch this slot's memory.
    pub fn busy(&self) -> bool {
        self.connect_busy || self.send_busy || self.recv_busy
    }
}

/// The ring and its connection slots.
pub struct Uring {
    ring: IoUring,
    /// Connection slots (a closed one is reused once idle).
    pub conns: Vec<Conn>,
    /// Completions pushed back for the caller: (slot, op, result).
    pub done: Vec<(usize, Op, i32)>,
    /// Reused: the completions of one reap.
    cqes: Vec<(u64, i32)>,
    /// The doorbell read: its 8-byte buffer (the kernel writes it while the
    /// read is outstanding; boxed so it never moves) and whether it is armed.
    wake_buf: Box<[u8; 8]>,
    wake_armed: bool,
    /// Sent frames, emptied, for [`Uring::frame`] to hand out again.
    spare: Vec<Frame>,
    /// Sends submitted (plaintext and TLS).
    pub sends: u64,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("conns", &self.conns)
            .finish_non_exhaustive()
    }
}

impl Uring {
    /// A ring with room for `entries` operations.
    pub fn new(entries: u32) -> io::Result<Uring> {
        Ok(Uring {
            ring: IoUring::new(entries)?,
            conns: Vec::new(),
            done: Vec::new(),
            cqes: Vec::new(),
            wake_buf: Box::new([0; 8]),
            wake_armed: false,
            spare: Vec::new(),
            sends: 0,
        })
    }

    fn push(&mut self, sqe: &io_uring::squeue::Entry) -> io::Result<()> {
        // SAFETY: every pointer in the entries built here refers to memory
        // owned by a Conn slot that is not freed or moved while the operation
        // is outstanding (busy flags), see the module's documentation.
        unsafe {
            if self.ring.submission().push(sqe).is_err() {
                self.ring.submit()?;
                self.ring
                    .submission()
                    .push(sqe)
                    .map_err(|_| io::Error::other("io_uring submission queue full"))?;
            }
        }
        Ok(())
    }

    /// Opens a connection to `addr` (TLS when `tls` is given): a new slot (or
    /// an idle closed one), a connect submitted. Returns the slot.
    pub fn connect(
        &mut self,
        addr: SocketAddr,
        tls: Option<rustls::ClientConnection>,
    ) -> io::Result<usize> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        sock.set_nodelay(true)?;
        let _ = sock.set_send_buffer_size(4 << 20);
        let _ = sock.set_recv_buffer_size(1 << 20);
        let slot = match self
            .conns
            .iter()
            .position(|c| c.sock.is_none() && !c.busy())
        {
            Some(i) => i,
            None => {
                self.conns.push(Conn {
                    sock: None,
                    gen: 0,
                    addr,
                    addr_raw: Box::new(socket2::SockAddr::from(addr)),
                    connected: false,
                    closing: false,
                    connect_busy: false,
                    send_busy: false,
                    recv_busy: false,
                    queue: VecDeque::new(),
                    queued: 0,
                    written: 0,
                    sending: Sending::new(),
                    rbuf: Vec::new(),
                    rlen: 0,
                    tls: None,
                    error: None,
                });
                self.conns.len() - 1
            }
        };
        let c = &mut self.conns[slot];
        c.gen = c.gen.wrapping_add(1);
        c.addr = addr;
        *c.addr_raw = socket2::SockAddr::from(addr);
        c.connected = false;
        c.closing = false;
        c.queue.clear();
        c.queued = 0;
        c.written = 0;
        c.sending.finish(&mut self.spare);
        c.rbuf.resize(RECV_CHUNK, 0);
        c.rlen = 0;
        c.error = None;
        c.tls = tls.map(|conn| {
            Box::new(Tls {
                conn,
                out: Vec::new(),
                out_off: 0,
                inb: vec![0; RECV_CHUNK],
                up: false,
                frames_in_out: 0,
            })
        });
        let fd = sock.as_raw_fd();
        c.sock = Some(sock);
        c.connect_busy = true;
        let sqe = opcode::Connect::new(types::Fd(fd), c.addr_raw.as_ptr().cast(), c.addr_raw.len())
            .build()
            .user_data(user_data(slot, c.gen, Op::Connect));
        self.push(&sqe)?;
        Ok(slot)
    }

    /// Queues `frame` on connection `slot`; returns its number (see
    /// [`Conn::written`]).
    pub fn enqueue(&mut self, slot: usize, frame: Frame) -> u64 {
        let c = &mut self.conns[slot];
        c.queue.push_back(frame);
        c.queued += 1;
        c.queued
    }

    /// An empty frame to fill (a sent one reused when there is one).
    pub fn frame(&mut self) -> Frame {
        self.spare.pop().unwrap_or_default()
    }

    /// Keeps a read of the doorbell's eventfd `fd` posted, so that a wait in
    /// [`Uring::reap`] ends when a shard rings.
    pub fn arm_wake(&mut self, fd: std::os::fd::RawFd) -> io::Result<()> {
        if self.wake_armed {
            return Ok(());
        }
        let sqe = opcode::Read::new(types::Fd(fd), self.wake_buf.as_mut_ptr(), 8)
            .build()
            .user_data(Op::Wake as u64);
        self.wake_armed = true;
        self.push(&sqe)
    }

    /// Closes a connection: no new operations; outstanding ones are ended by
    /// a shutdown and the slot is reused once they have completed.
    pub fn close(&mut self, slot: usize) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        c.closing = true;
        c.connected = false;
        c.queue.clear();
        if let Some(s) = &c.sock {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if !c.busy() {
            c.sock = None;
            c.sending.finish(&mut self.spare);
            c.tls = None;
        }
    }

    /// Starts the next send and keeps a receive posted, for every connected
    /// slot; then submits without waiting.
    pub fn kick(&mut self) -> io::Result<()> {
        for slot in 0..self.conns.len() {
            self.start_send(slot)?;
            self.start_recv(slot)?;
        }
        // No system call when there is nothing to submit.
        if !self.ring.submission().is_empty() {
            self.ring.submit()?;
        }
        Ok(())
    }

    fn start_send(&mut self, slot: usize) -> io::Result<()> {
        let c = &mut self.conns[slot];
        if !c.connected || c.closing || c.send_busy {
            return Ok(());
        }
        if c.tls.is_some() {
            return self.start_send_tls(slot);
        }
        if !c.sending.active() {
            // Every queued frame that fits, in order, in one sendmsg.
            while let Some(frame) = c.queue.front() {
                let out = &mut c.sending;
                if out.active() && out.iov.len() + frame.parts.len() > MAX_IOV {
                    break;
                }
                for p in &frame.parts {
                    out.iov.push(match *p {
                        Part::Head(off, len) => libc::iovec {
                            iov_base: frame.head[off..].as_ptr() as *mut libc::c_void,
                            iov_len: len,
                        },
                        Part::Borrowed(ptr, len) => libc::iovec {
                            iov_base: ptr as *mut libc::c_void,
                            iov_len: len,
                        },
                    });
                }
                // The frame's head does not move with it (a heap buffer).
                if let Some(f) = c.queue.pop_front() {
                    out.frames.push(f);
                }
            }
            if !c.sending.active() {
                return Ok(());
            }
        }
        let out = &mut c.sending;
        out.hdr.msg_iov = out.iov.as_mut_ptr();
        out.hdr.msg_iovlen = out.iov.len();
        let fd = c.sock.as_ref().map_or(-1, AsRawFd::as_raw_fd);
        let sqe = opcode::SendMsg::new(types::Fd(fd), &*out.hdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(user_data(slot, c.gen, Op::Send));
        c.send_busy = true;
        self.sends += 1;
        self.push(&sqe)
    }

    /// TLS: frames (once the handshake is done) into rustls, what rustls
    /// made of them (and of its own handshake) into one send.
    fn start_send_tls(&mut self, slot: usize) -> io::Result<()> {
        let c = &mut self.conns[slot];
        let Some(t) = c.tls.as_mut() else {
            return Ok(());
        };
        if t.out_off >= t.out.len() {
            t.out.clear();
            t.out_off = 0;
            if !t.conn.is_handshaking() {
                while let Some(frame) = c.queue.pop_front() {
                    t.frames_in_out += 1;
                    for p in &frame.parts {
                        let bytes: &[u8] = match *p {
                            Part::Head(off, len) => &frame.head[off..off + len],
                            // SAFETY: a borrowed range is a batch held in its
                            // lane until acknowledged (see `Part`).
                            Part::Borrowed(ptr, len) => unsafe {
                                std::slice::from_raw_parts(ptr, len)
                            },
                        };
                        t.conn.writer().write_all(bytes)?;
                    }
                }
            }
            while t.conn.wants_write() {
                t.conn.write_tls(&mut t.out)?;
            }
        }
        if t.out_off >= t.out.len() {
            return Ok(());
        }
        let fd = c.sock.as_ref().map_or(-1, AsRawFd::as_raw_fd);
        let rest = &t.out[t.out_off..];
        let sqe = opcode::Send::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(slot, c.gen, Op::Send));
        c.send_busy = true;
        self.sends += 1;
        self.push(&sqe)
    }

    fn start_recv(&mut self, slot: usize) -> io::Result<()> {
        let c = &mut self.conns[slot];
        if !c.connected || c.closing || c.recv_busy {
            return Ok(());
        }
        if let Some(t) = c.tls.as_mut() {
            let fd = c.sock.as_ref().map_or(-1, AsRawFd::as_raw_fd);
            let sqe = opcode::Recv::new(types::Fd(fd), t.inb.as_mut_ptr(), t.inb.len() as u32)
                .build()
                .user_data(user_data(slot, c.gen, Op::Recv));
            c.recv_busy = true;
            return self.push(&sqe);
        }
        if c.rbuf.len() - c.rlen < RECV_CHUNK / 4 {
            let n = c.rbuf.len() + RECV_CHUNK;
            c.rbuf.resize(n, 0);
        }
        let fd = c.sock.as_ref().map_or(-1, AsRawFd::as_raw_fd);
        let free = &mut c.rbuf[c.rlen..];
        let sqe = opcode::Recv::new(types::Fd(fd), free.as_mut_ptr(), free.len() as u32)
            .build()
            .user_data(user_data(slot, c.gen, Op::Recv));
        c.recv_busy = true;
        self.push(&sqe)
    }

    /// Reaps completions into `done` (after bookkeeping: partial sends are
    /// continued, closed slots freed), waiting up to `wait_ns` for the first
    /// when there is none.
    pub fn reap(&mut self, wait_ns: u64) -> io::Result<()> {
        self.done.clear();
        if wait_ns > 0 && self.ring.completion().is_empty() {
            let ts = types::Timespec::new().nsec(wait_ns.min(999_999_999) as u32);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(ud, res) in &cqes {
            self.complete(ud, res);
        }
        self.cqes = cqes;
        Ok(())
    }

    fn complete(&mut self, ud: u64, res: i32) {
        if ud == Op::Wake as u64 {
            self.wake_armed = false;
            return;
        }
        let (slot, gen, op) = decode(ud);
        let (Some(op), Some(c)) = (op, self.conns.get_mut(slot)) else {
            return;
        };
        if c.gen != gen {
            return;
        }
        let mut report = Some(res);
        match op {
            Op::Connect => {
                c.connect_busy = false;
                c.connected = res == 0 && !c.closing;
                if c.connected && c.tls.is_some() {
                    // Reported when the handshake is done.
                    report = None;
                }
            }
            Op::Send => {
                c.send_busy = false;
                if let Some(t) = c.tls.as_mut() {
                    if res > 0 {
                        t.out_off += res as usize;
                        if t.out_off >= t.out.len() {
                            c.written += std::mem::take(&mut t.frames_in_out);
                        }
                    }
                } else if res > 0 && !c.closing && advance(c, res as usize) {
                    // Every frame of the send written: the next may go.
                    c.written += c.sending.frames.len() as u64;
                    c.sending.finish(&mut self.spare);
                }
            }
            // Handled above (no connection).
            Op::Wake => report = None,
            Op::Recv => {
                c.recv_busy = false;
                if c.tls.is_some() {
                    if res > 0 && !c.closing {
                        report = tls_received(c, res as usize, slot, &mut self.done);
                    }
                } else if res > 0 {
                    c.rlen += res as usize;
                }
            }
        }
        if c.closing && !c.busy() {
            c.sock = None;
            c.sending.finish(&mut self.spare);
            c.tls = None;
        }
        if let Some(res) = report {
            self.done.push((slot, op, res));
        }
    }
}

/// Feeds `n` received bytes of ciphertext to rustls and moves the plaintext
/// into `rbuf`. Reports a finished handshake as the connect; returns what to
/// report for the receive: the plaintext bytes, 0 at the peer's close, an
/// error (reason in `error`), or nothing when no plaintext came.
fn tls_received(
    c: &mut Conn,
    n: usize,
    slot: usize,
    done: &mut Vec<(usize, Op, i32)>,
) -> Option<i32> {
    let Some(t) = c.tls.as_mut() else {
        return Some(n as i32);
    };
    let mut data = &t.inb[..n];
    let mut plain = 0usize;
    let mut eof = false;
    while !data.is_empty() {
        if let Err(e) = t.conn.read_tls(&mut data) {
            c.error = Some(format!("TLS: {e}"));
            return Some(-libc::EPROTO);
        }
        if let Err(e) = t.conn.process_new_packets() {
            // Tell the broker why (an alert) before the connection goes.
            let mut alert = Vec::new();
            let _ = t.conn.write_tls(&mut alert);
            if let Some(s) = &c.sock {
                let _ = std::io::Write::write(&mut &*s, &alert);
            }
            c.error = Some(format!("TLS: {e}"));
            return Some(-libc::EPROTO);
        }
        loop {
            if c.rbuf.len() - c.rlen < RECV_CHUNK / 4 {
                let len = c.rbuf.len() + RECV_CHUNK;
                c.rbuf.resize(len, 0);
            }
            match t.conn.reader().read(&mut c.rbuf[c.rlen..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(k) => {
                    c.rlen += k;
                    plain += k;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    c.error = Some(format!("TLS: {e}"));
                    return Some(-libc::EPROTO);
                }
            }
        }
    }
    if !t.up && !t.conn.is_handshaking() {
        t.up = true;
        done.push((slot, Op::Connect, 0));
    }
    if plain > 0 {
        Some(plain as i32)
    } else if eof {
        Some(0)
    } else {
        None
    }
}

/// Moves a partly sent frame's vectors past `n` bytes; true when nothing is
/// left.
fn advance(c: &mut Conn, mut n: usize) -> bool {
    let iov = &mut c.sending.iov;
    let mut i = 0;
    while i < iov.len() && n >= iov[i].iov_len {
        n -= iov[i].iov_len;
        i += 1;
    }
    iov.drain(..i);
    if let Some(first) = iov.first_mut() {
        // SAFETY: n < iov_len, so the pointer stays inside the same buffer.
        first.iov_base = unsafe { first.iov_base.cast::<u8>().add(n) }.cast();
        first.iov_len -= n;
        false
    } else {
        true
    }
}
