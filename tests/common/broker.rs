//! The broker tier's hosts: the test broker (tansu, built by
//! `scripts/broker.sh install` into /var/cache/klais) on a loopback port, and a
//! TCP relay in front of it that a test can cut and restore: from klais's side
//! the broker is gone (connections reset, new ones refused) while the broker
//! keeps what it stored (tansu's in-memory storage would not survive a restart).

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free loopback TCP port (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The broker binary, or why it is not there.
pub fn binary() -> Result<PathBuf, String> {
    let p = klais::bench::broker_binary();
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "the test broker is not built ({}); `scripts/broker.sh install` builds it (scripts/test.sh does)",
            p.display()
        ))
    }
}

/// The broker tier's precondition: the broker binary. A broker test runs only
/// when asked for (`--ignored`), so without it it fails and says how to build
/// it; it never passes untested.
pub fn require() -> PathBuf {
    binary().unwrap_or_else(|why| panic!("the broker tier needs the test broker: {why}"))
}

/// A running tansu; killed on drop.
pub struct Broker {
    /// Port it listens on.
    pub port: u16,
    /// Port it tells clients to use (a relay's, or its own).
    pub advertised: u16,
    bin: PathBuf,
    child: Child,
}

impl Broker {
    /// Starts a broker on a free port, advertising `advertised` (None: itself);
    /// fails the test when the broker is not built ([`require`]).
    pub fn start(advertised: Option<u16>) -> Broker {
        let port = free_port();
        Broker::start_with(port, advertised.unwrap_or(port))
    }

    /// Starts a broker on `port`, advertising itself.
    pub fn start_at(port: u16) -> Broker {
        Broker::start_with(port, port)
    }

    /// Starts a broker that acknowledges every produce request and keeps
    /// nothing (tansu's `null://` storage): benchmarks of the producer side
    /// against a broker that is not itself the limit.
    pub fn start_discarding() -> Broker {
        let port = free_port();
        Broker::launch(port, port, "null://sink")
    }

    fn start_with(port: u16, advertised: u16) -> Broker {
        Broker::launch(port, advertised, "memory://tansu/")
    }

    fn launch(port: u16, advertised: u16, storage: &str) -> Broker {
        let bin = require();
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
                "--storage-engine",
                storage,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let b = Broker {
            port,
            advertised,
            bin,
            child,
        };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "broker did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    /// Stops (SIGSTOP, `true`) or resumes (SIGCONT) the broker process: a
    /// broker that hangs with its connections open.
    pub fn pause(&self, stop: bool) {
        let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: a signal to our own child process, which is still ours
        // (it is killed and reaped only on drop).
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Bootstrap address clients use.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.advertised)
    }

    /// Creates a topic (through the broker's own port).
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(&self.bin)
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
                "--partitions",
                &partitions.to_string(),
                name,
            ])
            .output()
            .expect("tansu topic create");
        assert!(
            out.status.success(),
            "topic create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay `127.0.0.1:port` → `127.0.0.1:target` that can be cut.
pub struct Relay {
    /// Port clients connect to.
    pub port: u16,
    up: Arc<AtomicBool>,
    quit: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    /// A relay on a free port, up.
    pub fn start_on(port: u16, target: u16) -> Relay {
        let r = Relay {
            port,
            up: Arc::new(AtomicBool::new(true)),
            quit: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        let (up, quit, conns) = (r.up.clone(), r.quit.clone(), r.conns.clone());
        std::thread::spawn(move || {
            let mut listener: Option<TcpListener> = None;
            while !quit.load(Ordering::Relaxed) {
                if !up.load(Ordering::Relaxed) {
                    listener = None;
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                if listener.is_none() {
                    match TcpListener::bind(("127.0.0.1", port)) {
                        Ok(l) => {
                            l.set_nonblocking(true).unwrap();
                            listener = Some(l);
                        }
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    }
                }
                match listener.as_ref().unwrap().accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        {
                            let mut c = conns.lock().unwrap();
                            c.push(client.try_clone().unwrap());
                            c.push(server.try_clone().unwrap());
                        }
                        pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                        pipe(server, client);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => {}
                }
            }
        });
        r
    }

    /// Cuts: every connection reset, new ones refused.
    pub fn cut(&self) {
        self.up.store(false, Ordering::Relaxed);
        for _ in 0..3 {
            for c in self.conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::Relaxed);
        self.cut();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
