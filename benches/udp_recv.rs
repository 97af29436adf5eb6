//! The UDP backend's receive cost on loopback, two ways.
//!
//! **Queued**: glommio's `UdpSocket::recv_from` (the first udp backend), the
//! io-uring crate driving 64 outstanding `recv` operations (the second), one
//! multishot receive over a provided-buffer ring (the backend now,
//! [`klais::ingest::udp::BufRing`]), and plain non-blocking `recvmmsg` of
//! 64. Per datagram, with the socket buffer filled beforehand (untimed), so
//! only receiving is measured, not the sender. Median of 15 rounds of 8,000
//! datagrams of 200 bytes.
//!
//! **Paced**: a sender thread spaces datagrams evenly at 20,000/s (as
//! devices do) and the receiving thread's CPU time per datagram is measured:
//! here each receive in flight is woken by every arrival, and waking is most
//! of the cost. 64 `recv` in flight; the multishot receive waiting for one
//! completion; and the multishot receive as the backend waits (deferred task
//! work, up to 32 completions or 500 µs). Median of 3 rounds of 20,000.
//!
//! Run as root (SO_RCVBUFFORCE, so a buffer holds a whole round):
//! `cargo bench --bench udp_recv`. Under `cargo test` it runs one small round.

use std::hint::black_box;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use klais::ingest::udp::BufRing;

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

/// One multishot receive over `bufs` until `n` datagrams came; `coalesce`:
/// wait as the udp backend does (up to half the buffers or
/// `COALESCE_US`), else for one completion. Cancels the receive at the end.
fn multishot_drain(
    sock: &socket2::Socket,
    ring: &mut io_uring::IoUring,
    bufs: &mut BufRing,
    n: u64,
    coalesce: bool,
) {
    let fd = io_uring::types::Fd(sock.as_raw_fd());
    let recv = io_uring::opcode::RecvMulti::new(fd, BufRing::GROUP)
        .build()
        .user_data(1);
    // SAFETY: the entry borrows no user memory (the kernel picks buffers
    // from the registered ring, alive for the whole call).
    unsafe { ring.submission().push(&recv).unwrap() };
    let ts = io_uring::types::Timespec::new().nsec(1_000_000);
    let (min_wait, want) = if coalesce {
        (
            klais::config::Ingest::default().coalesce_us,
            BufRing::COUNT / 2,
        )
    } else {
        (0, 1)
    };
    let mut got = 0u64;
    let mut done = Vec::with_capacity(BufRing::COUNT);
    let mut live = true;
    while got < n || live {
        if got >= n {
            let cancel = io_uring::opcode::AsyncCancel::new(1).build().user_data(2);
            // SAFETY: no user memory.
            unsafe { ring.submission().push(&cancel).unwrap() };
        }
        let args = io_uring::types::SubmitArgs::new()
            .timespec(&ts)
            .min_wait_usec(min_wait);
        let _ = ring.submitter().submit_with_args(want, &args);
        let (rearm, _) = bufs.take(ring, 1, &mut done);
        for &(b, len) in &done {
            black_box(bufs.get(b, len));
            bufs.recycle(b);
        }
        got += done.len() as u64;
        bufs.publish();
        if rearm {
            live = false;
            if got < n {
                // SAFETY: as above.
                unsafe { ring.submission().push(&recv).unwrap() };
                live = true;
            }
        }
    }
}

/// A ring and its registered buffers, as the udp backend makes them (the
/// buffers first: they must outlive the ring).
fn multishot_ring() -> (BufRing, io_uring::IoUring) {
    let mut bufs = BufRing::new().unwrap();
    let ring = klais::ingest::udp::coalescing_ring(4 * BufRing::COUNT as u32).unwrap();
    // SAFETY: every caller drops the ring before the buffers.
    unsafe { bufs.register(&ring).unwrap() };
    (bufs, ring)
}

/// This thread's CPU time, ns.
fn thread_cpu_ns() -> u64 {
    // SAFETY: a zeroed timespec is valid; clock_gettime fills it.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sends `n` datagrams to `sock` from another thread, evenly spaced at
/// `rate` per second.
fn paced_sender(sock: &socket2::Socket, n: u64, rate: u64) -> std::thread::JoinHandle<()> {
    let to = sock.local_addr().unwrap().as_socket().unwrap();
    std::thread::spawn(move || {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let msg = [0xAAu8; SIZE];
        let t0 = Instant::now();
        for i in 0..n {
            let due = t0 + Duration::from_nanos(i * 1_000_000_000 / rate);
            loop {
                let now = Instant::now();
                if now >= due {
                    break;
                }
                if due - now > Duration::from_micros(200) {
                    std::thread::sleep(due - now - Duration::from_micros(100));
                } else {
                    std::hint::spin_loop();
                }
            }
            tx.send_to(&msg, to).unwrap();
        }
    })
}

/// The receiving thread's CPU per datagram while `receive` takes `n`
/// datagrams paced at 20,000/s.
fn paced(n: u64, rounds: usize, mut receive: impl FnMut(&socket2::Socket, u64)) -> f64 {
    let mut ns = Vec::new();
    for _ in 0..rounds {
        let sock = receiver();
        let tx = paced_sender(&sock, n, 20_000);
        let c0 = thread_cpu_ns();
        receive(&sock, n);
        ns.push((thread_cpu_ns() - c0) as f64 / n as f64);
        tx.join().unwrap();
    }
    median(ns)
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

    let sock4 = receiver();
    let (mut mbufs, mut mring) = multishot_ring();
    let mut ns = Vec::new();
    for _ in 0..rounds {
        fill(&sock4, per_round);
        let t0 = Instant::now();
        multishot_drain(&sock4, &mut mring, &mut mbufs, per_round, false);
        ns.push(t0.elapsed().as_nanos() as f64 / per_round as f64);
    }
    drop(mring);
    drop(mbufs);
    let multishot_ns = median(ns);

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
        "glommio UdpSocket::recv_from (first backend)", glommio_ns
    );
    println!(
        "{:<44} {:>12.0}",
        "io-uring crate, 64 recv in flight (second)", uring_ns
    );
    println!(
        "{:<44} {:>12.0}",
        "multishot recv, buffer ring (udp backend)", multishot_ns
    );
    println!("{:<44} {:>12.0}", "recvmmsg, 64 per call", mmsg_ns);

    let (prounds, pn) = if bench { (3, 20_000u64) } else { (1, 200u64) };
    let recv64 = paced(pn, prounds, |sock, n| {
        let mut ring = io_uring::IoUring::new(256).unwrap();
        io_uring_drain(sock, &mut ring, &mut bufs, n);
    });
    let one = paced(pn, prounds, |sock, n| {
        let (mut b, mut r) = multishot_ring();
        multishot_drain(sock, &mut r, &mut b, n, false);
        drop(r);
    });
    let coalesced = paced(pn, prounds, |sock, n| {
        let (mut b, mut r) = multishot_ring();
        multishot_drain(sock, &mut r, &mut b, n, true);
        drop(r);
    });
    println!("\nUDP receive on loopback, {SIZE}-byte datagrams paced at 20,000/s by another thread; receiver CPU, median of {prounds} rounds of {pn}");
    println!("{:<44} {:>12}", "method", "ns/datagram");
    println!(
        "{:<44} {:>12.0}",
        "io-uring crate, 64 recv in flight", recv64
    );
    println!("{:<44} {:>12.0}", "multishot recv, wait for 1", one);
    println!(
        "{:<44} {:>12.0}",
        "multishot recv, 32 or 500 us (udp backend)", coalesced
    );
}
