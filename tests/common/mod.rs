//! Test hosts for the root tiers: two network namespaces joined by a veth
//! pair that a test creates and a guard always removes, and helpers to move a
//! thread into one of them; what each tier needs, and the one way to skip.
//!
//! Tiers (DESIGN.md §8) are visible in test names and attributes: a test that
//! needs root is `#[ignore = "root"]` in a module `root`, one that needs the
//! test broker `#[ignore = "broker"]` in a module `broker`, one that needs
//! both `#[ignore = "root, broker"]` in a module `root_broker`. A plain
//! `cargo test` runs the tier that needs nothing; `cargo test -- --ignored
//! root::` (`broker:: --skip root_broker::`, `root_broker::`) runs one of the
//! others; scripts/test.sh runs them all and counts each.

#![allow(dead_code)]

use std::process::Command;

pub mod broker;
pub mod oidc;
pub mod sasl_gate;
pub mod secured;
pub mod skip;

pub use skip::skip;

use klais::wire::{self, HEADER_LEN};

/// Address of the appliance side (namespace A).
pub const ADDR_A: &str = "10.213.0.1";
/// Address of the device side (namespace B).
pub const ADDR_B: &str = "10.213.0.2";

/// Deletes the namespaces (and so the veth pair) when dropped, also when the
/// test fails.
pub struct Netns {
    pub names: Vec<String>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs `ip` and fails the test with its message when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves the calling thread into a network namespace.
pub fn enter(ns: &str) {
    klais::bench::load::enter_netns(ns).unwrap();
}

/// The root tier's precondition: root (BPF programs, XDP, network
/// namespaces). A root test runs only when asked for (`--ignored`), so without
/// root it fails and says how to run it; it never passes untested.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the root tier needs root (BPF_PROG_TEST_RUN, XDP, network namespaces); run it as root: \
         `cargo test -- --ignored root::` (scripts/test.sh runs every tier)"
    );
}

/// [`require_root`], and iproute2 for [`topology`].
pub fn require_netns() {
    require_root();
    assert!(
        Command::new("ip").arg("-V").output().is_ok(),
        "iproute2 (`ip`) is not installed; scripts/setup.sh installs it"
    );
}

/// The two hosts of one test.
pub struct Topology {
    /// Removes everything on drop.
    pub guard: Netns,
    /// Namespace of the appliance side.
    pub a: String,
    /// Namespace of the device side.
    pub b: String,
    /// veth end in A.
    pub ia: String,
    /// veth end in B.
    pub ib: String,
}

/// Namespaces A and B joined by a veth pair with `queues` queues each way,
/// addresses [`ADDR_A`] and [`ADDR_B`], links up. `tag` keeps the names of
/// tests running at the same time apart.
pub fn topology(tag: &str, queues: u32) -> Topology {
    let id = std::process::id() % 100_000;
    let (a, b) = (format!("klais-{tag}a-{id}"), format!("klais-{tag}b-{id}"));
    let (ia, ib) = (format!("k{tag}a{id}"), format!("k{tag}b{id}"));
    let guard = Netns {
        names: vec![a.clone(), b.clone()],
    };
    let q = queues.to_string();
    ip(&["netns", "add", &a]);
    ip(&["netns", "add", &b]);
    ip(&[
        "link",
        "add",
        &ia,
        "netns",
        &a,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        &ib,
        "netns",
        &b,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
    ]);
    ip(&["-n", &a, "addr", "add", &format!("{ADDR_A}/30"), "dev", &ia]);
    ip(&["-n", &b, "addr", "add", &format!("{ADDR_B}/30"), "dev", &ib]);
    for (ns, i) in [(&a, &ia), (&b, &ib)] {
        ip(&["-n", ns, "link", "set", "dev", i, "up"]);
        ip(&["-n", ns, "link", "set", "dev", "lo", "up"]);
    }
    Topology {
        guard,
        a,
        b,
        ia,
        ib,
    }
}

/// A v1 datagram with a small JSON payload.
pub fn v1(id: &str, seq: u32) -> Vec<u8> {
    let body = format!("{{\"seq\":{seq}}}");
    let mut b = vec![0u8; HEADER_LEN + body.len()];
    wire::encode(id, seq, body.as_bytes(), &mut b).unwrap();
    b
}

/// A free UDP port on loopback (bound once, then released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// klais on loopback (UDP and admin on ephemeral ports), JSON validation on,
/// records to the file `out`, counters published every 100 ms.
pub fn file_sink_config(out: &std::path::Path) -> klais::config::Config {
    let mut cfg = klais::config::Config::default();
    cfg.ingest.listen = "127.0.0.1:0".parse().unwrap();
    // Tests run in parallel: each klais serves its metrics on its own port.
    cfg.admin.listen = "127.0.0.1:0".parse().unwrap();
    cfg.protocol.validate_json = true;
    cfg.output.sink = klais::config::SinkKind::File;
    cfg.output.path = Some(out.to_path_buf());
    cfg.telemetry.stats_interval_ms = 100;
    cfg.sequence.max_devices = 1024;
    cfg
}

/// Starts klais, or [`skip`]s with the reason it cannot here (a locked-memory
/// limit too low for io_uring) and returns None.
pub fn start_or_skip(cfg: &klais::config::Config) -> Option<klais::runtime::Running> {
    match klais::runtime::start(cfg) {
        Ok(r) => Some(r),
        Err(e @ klais::runtime::RunError::MemLock { .. }) => {
            skip(&e.to_string());
            None
        }
        Err(e) => panic!("klais did not start: {e}"),
    }
}

/// One HTTP/1.1 request (`Connection: close`; a bearer `token` and a JSON
/// `body` when given); returns the status code and the body (a chunked one
/// put together).
pub fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let (mut rest, mut out) = (body, String::new());
        while let Some((len, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    (status, body)
}

/// Writes `text` to `dir/name`, readable by its owner only (mode 0600), as
/// klais wants its token, key and password files; returns the path.
pub fn secret_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}
