//! The UDP backend's receive cost, three ways, on loopback: glommio's
//! `UdpSocket::recv_from` (what the udp backend uses), the io-uring crate
//! driving 64 outstanding `recv` operations directly, and plain non-blocking
//! `recvmmsg` of 64. Per datagram, with the socket buffer filled beforehand
//! (untimed), so only receiving is measured, not the sender. Median of 15
//! rounds of 8,000 datagrams of 200 bytes.
//!
//! Run as root (SO_RCVBUFFORCE, so a buffer holds a whole round):
//! `cargo bench --bench udp_recv`. Under `cargo test` it runs one small round.

use std::hint::black_box;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

/// The one way a test or a benchmark in test mode skips (KLAIS_NO_SKIP=1
/// makes it a failure).
#[path = "../tests/common/skip.rs"]
mod skip;

const SIZE: usize = 200;

fn receiver() -> socket2::Socket {
    let b = klais::ingest::udp::bind("127.0.0.1:0".parse().unwrap(), 64 << 20).unwrap();
    b.socket.set_nonblocking(true).unwrap();
    b.socket
}

fn fill(sock: &socket2::Socket, n: u64) {
    let to = sock.local_addr().unwrap().as_socket().unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let msg = [0xAAu8; SIZE];
    for _ in 0..n {
        tx.send_to(&msg, to).unwrap();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn io_uring_drain(
    sock: &socket2::Socket,
    ring: &mut io_uring::IoUring,
    bufs: &mut [[u8; 2048]],
    n: u64,
) {
    let fd = io_uring::types::Fd(sock.as_raw_fd());
    let (mut got, mut inflight, mut next) = (0u64, 0u64, 0usize);
    while got < n {
        while inflight < bufs.len() as u64 && got + inflight < n {
            let i = next % bufs.len();
            let e = io_uring::opcode::Recv::new(fd, bufs[i].as_mut_ptr(), bufs[i].len() as u32)
                .build()
                .user_data(i as u64);
            next += 1;
            // SAFETY: buffer `i` is not reused before its completion: at most
            // bufs.len() operations are in flight and they take buffers in turn.
            unsafe { ring.submission().push(&e).unwrap() };
            inflight += 1;
        }
        ring.submit_and_wait(1).unwrap();
        for cqe in ring.completion() {
            inflight -= 1;
            if cqe.result() > 0 {
                got += 1;
            }
            black_box(cqe.result());
        }
    }
}

fn recvmmsg_drain(sock: &socket2::Socket, bufs: &mut [[u8; 2048]], n: u64) {
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: an all-zero mmsghdr is valid; each points at one live iovec.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let mut got = 0u64;
    while got < n {
        // SAFETY: headers and iovecs point into `bufs`, alive and unaliased
        // for the call; the count matches the header array.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                hdrs.len() as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r > 0 {
            got += r as u64;
        }
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip::skip("needs root for a receive buffer that holds a whole round");
        return;
    }
    let bench = std::env::args().any(|a| a == "--bench");
    let (rounds, per_round) = if bench { (15, 8_000u64) } else { (1, 200u64) };
    klais::runtime::ensure_memlock().unwrap();

    // glommio's socket, as the udp backend uses it.
    let sock = receiver();
    let fd = sock.as_raw_fd();
    let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
    let glommio_ns = ex.run(async {
        // SAFETY: a dup of a valid socket fd; glommio owns and closes the dup.
        let g = unsafe { glommio::net::UdpSocket::from_raw_fd(libc::dup(fd)) };
        let mut buf = vec![0u8; 65_536];
        let mut ns = Vec::new();
        for _ in 0..rounds {
            fill(&sock, per_round);
            let t0 = Instant::now();
            for _ in 0..per_round {
                black_box(g.recv_from(&mut buf).await.unwrap());
            }
            ns.push(t0.elapsed().as_nanos() as f64 / per_round as f64);
        }
        median(ns)
    });

    let sock2 = receiver();
    let mut ring = io_uring::IoUring::new(256).unwrap();
    let mut bufs = vec![[0u8; 2048]; 64];
    let mut ns = Vec::new();
    for _ in 0..rounds {
        fill(&sock2, per_round);
        let t0 = Instant::now();
        io_uring_drain(&sock2, &mut ring, &mut bufs, per_round);
        ns.push(t0.elapsed().as_nanos() as f64 / per_round as f64);
    }
    let uring_ns = median(ns);

    let sock3 = receiver();
    let mut ns = Vec::new();
    for _ in 0..rounds {
        fill(&sock3, per_round);
        let t0 = Instant::now();
        recvmmsg_drain(&sock3, &mut bufs, per_round);
        ns.push(t0.elapsed().as_nanos() as f64 / per_round as f64);
    }
    let mmsg_ns = median(ns);

    println!("UDP receive on loopback, {SIZE}-byte datagrams already queued; median of {rounds} rounds of {per_round}");
    println!("{:<44} {:>12}", "method", "ns/datagram");
    println!(
        "{:<44} {:>12.0}",
        "glommio UdpSocket::recv_from (udp backend)", glommio_ns
    );
    println!(
        "{:<44} {:>12.0}",
        "io-uring crate, 64 recv in flight", uring_ns
    );
    println!("{:<44} {:>12.0}", "recvmmsg, 64 per call", mmsg_ns);
    let _ = Duration::ZERO;
}
