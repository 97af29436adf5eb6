//! `klais bench run | compare`: a load generator and a measurement loop in one
//! command (KLAIS §5.2–5.4).
//!
//! A run is one or more **trials**. A trial: (re)start the broker if the bench
//! owns it, create a fresh topic, start the target (klais on af_xdp or udp, or
//! a baseline from `benches/baselines/`) as a child process, start the Kafka
//! consumer ([`measure`]), send the load ([`load`]) from the generator's
//! network namespace, wait until every message was read back or the topic
//! went quiet, stop the target, and account: throughput, loss per device
//! sequence, duplicates, reordering, latency percentiles, CPU time of the
//! target and the broker, link and socket drops, per-core utilisation.
//! `--find-max` searches the highest zero-loss rate (doubling, then
//! bisecting). Results: `result.json` and PNG plots in a folder stamped with
//! kernel, CPU, NIC, commit and configuration.
//!
//! Topologies: `local` makes a network namespace and a veth pair (klais's end
//! in the root namespace, where the broker listens on loopback; the
//! generator's end in the namespace) and removes them afterwards; `remote`
//! sends over a real NIC toward a klais on another host (perf/README.md).

pub mod frame;
pub mod load;
pub mod measure;
pub mod plot;

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use load::{LoadReport, LoadSpec, PayloadSize, Rate, Sender, Shape};
use measure::{Measured, Reader};

/// What receives the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// klais, AF_XDP backend, XDP filter attached.
    KlaisAfXdp,
    /// klais, UDP backend, no XDP program.
    KlaisUdp,
    /// The tokio + rdkafka baseline.
    Tokio,
    /// The Python asyncio + aiokafka baseline.
    Python,
    /// A klais on another host (remote topology): not started by the bench.
    Remote,
}

impl Target {
    /// Parses a target name.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "klais-af_xdp" | "af_xdp" => Self::KlaisAfXdp,
            "klais-udp" | "udp" => Self::KlaisUdp,
            "tokio" | "tokio-rdkafka" => Self::Tokio,
            "python" | "python-aiokafka" => Self::Python,
            "remote" => Self::Remote,
            _ => {
                return Err(format!(
                    "unknown target {s:?}: one of klais-af_xdp, klais-udp, tokio, python (remote with --topology remote)"
                ))
            }
        })
    }

    /// Name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::KlaisAfXdp => "klais (af_xdp)",
            Self::KlaisUdp => "klais (udp)",
            Self::Tokio => "tokio + rdkafka",
            Self::Python => "python asyncio + aiokafka",
            Self::Remote => "remote klais",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::KlaisAfXdp => "klais-af_xdp",
            Self::KlaisUdp => "klais-udp",
            Self::Tokio => "tokio",
            Self::Python => "python",
            Self::Remote => "remote",
        }
    }
}

/// Where the load goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Topology {
    /// A veth pair and a network namespace made (and removed) by the bench.
    Local,
    /// A real NIC toward a klais on another host.
    Remote {
        /// The sending interface.
        iface: String,
        /// klais's listen address there.
        target: SocketAddrV4,
        /// Next-hop MAC for AF_XDP TX (looked up in the neighbour table if None).
        dst_mac: Option<[u8; 6]>,
    },
}

/// How the rate is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RateMode {
    /// One trial at this rate (or ramp).
    Run {
        /// The rate.
        rate: Rate,
    },
    /// Search the highest zero-loss fixed rate: start at `start`, double until
    /// a trial loses or `max` is passed, then bisect `steps` times.
    FindMax {
        /// First rate tried.
        start: u64,
        /// Highest rate tried.
        max: u64,
        /// Bisection steps after the first loss.
        steps: u32,
    },
}

/// Everything a bench needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Local (veth) or remote (NIC).
    pub topology: Topology,
    /// Kafka brokers; None starts the cached local broker (tansu) per trial.
    pub brokers: Option<String>,
    /// The generator: UDP sendmmsg or AF_XDP TX.
    pub af_xdp_tx: bool,
    /// AF_XDP TX in zero-copy mode.
    pub zero_copy: bool,
    /// Generator threads (and veth queues).
    pub threads: u32,
    /// Device population.
    pub devices: u32,
    /// Rate mode.
    pub rate: RateMode,
    /// Arrival shape.
    pub shape: Shape,
    /// Payload sizes.
    pub payload: PayloadSize,
    /// Malformed share, ppm.
    pub malformed_ppm: u32,
    /// Seconds of load per trial.
    pub duration: Duration,
    /// Seed.
    pub seed: u64,
    /// klais shard cores.
    pub shards: u32,
    /// Topic partitions.
    pub partitions: u32,
    /// Results root folder.
    pub out: PathBuf,
    /// Progress bars (hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Python interpreter with aiokafka (for the Python baseline).
    pub python: PathBuf,
    /// Folder of the baselines' sources.
    pub baselines: PathBuf,
    /// The klais binary (and, beside it, klais-baseline-tokio).
    pub klais_bin: PathBuf,
    /// Remote topology: the topic the appliance writes (read from its end).
    pub topic: Option<String>,
    /// A klais configuration file the trials start from (ring sizes, limits,
    /// Kafka settings); the bench sets backend, shards, listen, output and xdp
    /// over it.
    pub klais_config: Option<PathBuf>,
    /// A shell command started when each trial's load starts (perf/ scripts:
    /// `perf stat -p $KLAIS_BENCH_TARGET_PID -- sleep $KLAIS_BENCH_SECONDS`),
    /// with KLAIS_BENCH_TARGET_PID, KLAIS_BENCH_SECONDS, KLAIS_BENCH_DIR and
    /// KLAIS_BENCH_TRIAL in its environment; waited for after the load.
    pub on_load: Option<String>,
}

/// The cache of slow installs outside the clone (`$KLAIS_CACHE`, default
/// /var/cache/klais): the broker, the Python baseline's venv, inferno.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("KLAIS_CACHE").map_or_else(|| PathBuf::from("/var/cache/klais"), PathBuf::from)
}

/// The test broker's binary (`$KLAIS_TANSU`, or where `scripts/broker.sh
/// install` puts it in the cache); it may not exist yet.
pub fn broker_binary() -> PathBuf {
    std::env::var_os("KLAIS_TANSU")
        .map_or_else(|| cache_dir().join("tansu-0.6.0/bin/tansu"), PathBuf::from)
}

impl Options {
    /// Defaults for a local run of the current binary.
    pub fn local_defaults() -> Self {
        let klais_bin = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("klais"));
        let cache = cache_dir();
        Self {
            topology: Topology::Local,
            brokers: None,
            af_xdp_tx: true,
            zero_copy: false,
            threads: 1,
            devices: 10_000,
            rate: RateMode::Run {
                rate: Rate::Fixed { pps: 50_000 },
            },
            shape: Shape::Periodic,
            payload: PayloadSize::Fixed { bytes: 200 },
            malformed_ppm: 0,
            duration: Duration::from_secs(5),
            seed: 1,
            shards: 1,
            partitions: 3,
            out: PathBuf::from("bench-results"),
            progress: true,
            python: cache.join("venv-aiokafka-0.14.0/bin/python3"),
            baselines: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/baselines")),
            klais_bin,
            on_load: None,
            klais_config: None,
            topic: None,
        }
    }
}

/// CPU seconds used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Cpu {
    /// The target process (all its threads).
    pub target_s: f64,
    /// The broker, when the bench started it.
    pub broker_s: Option<f64>,
    /// The bench process: generator and consumer.
    pub bench_s: f64,
    /// Busy share of each CPU over the load.
    pub per_core_busy: Vec<f64>,
}

impl Trial {
    /// The asked fixed rate (0 for ramps and "as fast as possible").
    pub fn asked(&self) -> u64 {
        match self.rate {
            Rate::Fixed { pps } => pps,
            Rate::Ramp { .. } => 0,
        }
    }
}

/// One trial's result.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Trial {
    /// What received.
    pub target: Target,
    /// Offered rate.
    pub rate: Rate,
    /// What the generator sent.
    pub load: LoadReport,
    /// What the consumer read.
    pub measured: Measured,
    /// Valid messages read back per second of load.
    pub delivered_pps: f64,
    /// CPU time.
    pub cpu: Cpu,
    /// Target CPU seconds per million delivered messages.
    pub cpu_s_per_million: f64,
    /// Frames the link dropped (veth peer ring full, NIC drops).
    pub link_drops: u64,
    /// UDP receive-buffer overflows in the target's namespace (udp targets).
    pub udp_rcvbuf_errors: u64,
    /// Nothing lost, duplicated or reordered, nothing foreign.
    pub zero_loss: bool,
    /// The generator sent at least 95 % of the asked fixed rate (always true
    /// for ramps and "as fast as possible").
    pub reached: bool,
    /// Cut short by SIGINT/SIGTERM (never counted by a search).
    pub stopped: bool,
    /// What limited the trial, when it lost messages (a reading, see docs).
    pub limit: Option<String>,
    /// The target's log.
    pub log: Option<PathBuf>,
}

/// A target's search (or single run).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TargetResult {
    /// The target.
    pub target: Target,
    /// Every trial in order.
    pub trials: Vec<Trial>,
    /// The highest fixed rate with zero loss (searches only).
    pub zero_loss_pps: Option<u64>,
    /// `zero_loss_pps` is a lower bound: the generator could not send faster
    /// and the target lost nothing at the generator's maximum.
    pub generator_limited: bool,
}

/// What `result.json` holds.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Report {
    /// `run` or `compare`.
    pub command: String,
    /// Machine, commit, configuration.
    pub stamp: Stamp,
    /// Per target.
    pub targets: Vec<TargetResult>,
    /// Compare: the common rate every target ran at for CPU per message.
    pub common_pps: Option<u64>,
    /// Compare: trials at the common rate, one per target.
    pub common: Vec<Trial>,
}

/// Where and how the results were made.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Stamp {
    /// UTC time.
    pub utc: String,
    /// `uname -r`.
    pub kernel: String,
    /// CPU model.
    pub cpu: String,
    /// Online CPUs.
    pub cpus: usize,
    /// Interfaces and drivers.
    pub nic: String,
    /// klais commit.
    pub commit: String,
    /// The options, as text.
    pub config: String,
}

fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e} (scripts/setup.sh installs it)"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The veth pair and namespace of the local topology; removed on drop.
#[derive(Debug)]
pub struct LocalNet {
    /// The generator's namespace.
    pub netns: String,
    /// klais's end (root namespace).
    pub iface: String,
    /// The generator's end (in `netns`).
    pub peer: String,
    /// klais's address.
    pub addr: Ipv4Addr,
    /// The generator's address.
    pub peer_addr: Ipv4Addr,
}

impl LocalNet {
    /// Creates the namespace and the veth pair with `queues` queues each.
    pub fn create(queues: u32) -> Result<Self, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("the local topology needs root (network namespaces, veth, XDP); run as root or use --topology remote".into());
        }
        let id = std::process::id() % 100_000;
        let n = Self {
            netns: format!("klais-bench-{id}"),
            iface: format!("kbA{id}"),
            peer: format!("kbB{id}"),
            addr: Ipv4Addr::new(10, 213, 77, 1),
            peer_addr: Ipv4Addr::new(10, 213, 77, 2),
        };
        let q = queues.max(1).to_string();
        let mut used = sh("ip", &["-4", "-o", "addr", "show", "to", "10.213.77.0/30"])?;
        // A leftover of a bench that was killed (its pid, in the names, no
        // longer runs): remove it.
        if let Some(old) = used
            .split_whitespace()
            .nth(1)
            .and_then(|i| i.split('@').next())
            .and_then(|i| i.strip_prefix("kbA"))
            .and_then(|p| p.parse::<u32>().ok())
        {
            let alive = std::fs::read_to_string(format!("/proc/{old}/cmdline"))
                .is_ok_and(|c| c.contains("bench"));
            if !alive {
                eprintln!("bench: removing the network of a bench that no longer runs (klais-bench-{old}, kbA{old})");
                let _ = sh("ip", &["link", "del", &format!("kbA{old}")]);
                let _ = sh("ip", &["netns", "del", &format!("klais-bench-{old}")]);
                used = sh("ip", &["-4", "-o", "addr", "show", "to", "10.213.77.0/30"])?;
            }
        }
        if !used.trim().is_empty() {
            return Err(format!(
                "10.213.77.0/30 is already in use (another klais bench running?): {}",
                used.trim()
            ));
        }
        sh("ip", &["netns", "add", &n.netns])?;
        let steps: Vec<Vec<&str>> = vec![
            vec![
                "link",
                "add",
                &n.iface,
                "numrxqueues",
                &q,
                "numtxqueues",
                &q,
                "type",
                "veth",
                "peer",
                "name",
                &n.peer,
                "netns",
                &n.netns,
                "numrxqueues",
                &q,
                "numtxqueues",
                &q,
            ],
            vec!["addr", "add", "10.213.77.1/30", "dev", &n.iface],
            vec![
                "-n",
                &n.netns,
                "addr",
                "add",
                "10.213.77.2/30",
                "dev",
                &n.peer,
            ],
            vec!["link", "set", &n.iface, "up"],
            vec!["-n", &n.netns, "link", "set", &n.peer, "up"],
            vec!["-n", &n.netns, "link", "set", "lo", "up"],
        ];
        for s in steps {
            sh("ip", &s)?;
        }
        Ok(n)
    }

    fn peer_stat(&self, name: &str) -> u64 {
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.netns,
                "cat",
                &format!("/sys/class/net/{}/statistics/{name}", self.peer),
            ],
        )
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
    }

    fn peer_mac(&self) -> Result<[u8; 6], String> {
        let s = sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.netns,
                "cat",
                &format!("/sys/class/net/{}/address", self.peer),
            ],
        )?;
        frame::parse_mac(&s).ok_or_else(|| format!("{}: unreadable MAC {s:?}", self.peer))
    }
}

impl Drop for LocalNet {
    fn drop(&mut self) {
        let _ = sh("ip", &["link", "del", &self.iface]);
        let _ = sh("ip", &["netns", "del", &self.netns]);
    }
}

/// The broker of a bench.
enum Broker {
    /// Given by the operator; topics are deleted after each trial.
    External(String),
    /// tansu from the cache, restarted empty for each trial.
    Owned {
        bin: PathBuf,
        port: u16,
        child: Option<Child>,
    },
}

impl Broker {
    fn new(brokers: Option<&str>) -> Result<Self, String> {
        if let Some(b) = brokers {
            return Ok(Self::External(b.to_string()));
        }
        let bin = broker_binary();
        if !bin.exists() {
            return Err(format!(
                "no --brokers given and the local broker is not installed at {}: run `scripts/broker.sh install` (about 16 minutes once) or pass --brokers HOST:PORT",
                bin.display()
            ));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port for the broker: {e}"))?
            .port();
        Ok(Self::Owned {
            bin,
            port,
            child: None,
        })
    }

    fn addr(&self) -> String {
        match self {
            Self::External(b) => b.clone(),
            Self::Owned { port, .. } => format!("127.0.0.1:{port}"),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Self::Owned { child: Some(c), .. } => Some(c.id()),
            _ => None,
        }
    }

    /// Starts (or restarts) an owned broker and creates `topic`.
    fn prepare(&mut self, topic: &str, partitions: u32, log: &Path) -> Result<(), String> {
        if let Self::Owned { bin, port, child } = self {
            if let Some(mut c) = child.take() {
                stop_child(&mut c, Duration::from_secs(5));
            }
            let url = format!("tcp://127.0.0.1:{port}");
            let logf = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
            let c = own_group(Command::new(&*bin))
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                    "--storage-engine",
                    "memory://tansu/",
                ])
                .stdout(Stdio::null())
                .stderr(logf)
                .spawn()
                .map_err(|e| format!("starting the broker {}: {e}", bin.display()))?;
            *child = Some(c);
            let t0 = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                if t0.elapsed() > Duration::from_secs(10) {
                    return Err(format!(
                        "the broker did not listen on 127.0.0.1:{port} within 10 s; its log: {}",
                        log.display()
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        create_topic(&self.addr(), topic, partitions)
    }

    fn cleanup(&mut self, topic: &str) {
        match self {
            Self::External(b) => {
                let _ = delete_topic(b, topic);
            }
            Self::Owned { child, .. } => {
                if let Some(mut c) = child.take() {
                    stop_child(&mut c, Duration::from_secs(5));
                }
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Self::Owned { child: Some(c), .. } = self {
            stop_child(c, Duration::from_secs(5));
        }
    }
}

fn admin_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// Creates `topic` with `partitions` partitions (an existing one is an error:
/// every trial writes a fresh topic).
pub fn create_topic(brokers: &str, topic: &str, partitions: u32) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| format!("admin client for {brokers}: {e}"))?;
    let rt = admin_runtime()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let res = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(
                topic,
                partitions as i32,
                TopicReplication::Fixed(1),
            )],
            &opts,
        ))
        .map_err(|e| format!("creating topic {topic} on {brokers}: {e}"))?;
    for r in res {
        r.map_err(|(t, e)| format!("creating topic {t} on {brokers}: {e}"))?;
    }
    Ok(())
}

fn delete_topic(brokers: &str, topic: &str) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    let rt = admin_runtime()?;
    let _ = rt.block_on(admin.delete_topics(&[topic], &AdminOptions::new()));
    Ok(())
}

/// SIGTERM to the child's process group (children are started in their own
/// group: a hook's `perf` and `sleep` go too, and Ctrl-C at the terminal
/// reaches only the bench, which then stops them in order), SIGKILL after
/// `grace`.
fn stop_child(c: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = c.try_wait() {
        return;
    }
    // SAFETY: kill(2) on our own child's process group (its pid).
    unsafe {
        libc::kill(-(c.id() as i32), libc::SIGTERM);
    }
    let t0 = Instant::now();
    while t0.elapsed() < grace {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(-(c.id() as i32), libc::SIGKILL);
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// A command in its own process group, sent SIGTERM by the kernel if the
/// bench dies without stopping it (SIGKILL, a second Ctrl-C).
fn own_group(mut c: Command) -> Command {
    use std::os::unix::process::CommandExt;
    c.process_group(0);
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// utime + stime of `pid` (all threads), seconds.
fn proc_cpu_s(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) in parentheses.
    let rest = s.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

fn self_cpu_s() -> f64 {
    proc_cpu_s(std::process::id())
}

/// (busy, total) jiffies per CPU from /proc/stat.
fn cpu_times() -> Vec<(u64, u64)> {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

fn udp_rcvbuf_errors() -> u64 {
    let s = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = s.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(h), Some(v)) = (lines.next(), lines.next()) else {
        return 0;
    };
    h.split_whitespace()
        .zip(v.split_whitespace())
        .find(|(k, _)| *k == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// A target process; stopped when dropped (also on error paths).
struct Running {
    child: Child,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(30));
    }
}

/// The bench's state across trials.
struct Ctx<'a> {
    opts: &'a Options,
    dir: PathBuf,
    net: Option<LocalNet>,
    broker: Broker,
    trial_no: usize,
    run_id: String,
    listen: SocketAddrV4,
    stop: Arc<AtomicBool>,
}

fn wait_for_line(
    log: &Path,
    child: &mut Child,
    needle: &str,
    timeout: Duration,
) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            return Err(format!(
                "the target exited ({st}) before it was ready; the end of its log {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            return Err(format!(
                "the target was not ready within {timeout:?}; its log: {}",
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Ctx<'_> {
    fn start_target(&mut self, target: Target, topic: &str) -> Result<Option<Running>, String> {
        let log = self
            .dir
            .join(format!("trial-{:02}-{}.log", self.trial_no, target.slug()));
        let logf = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let brokers = self.broker.addr();
        let listen = self.listen.to_string();
        let cmd = match target {
            Target::Remote => return Ok(None),
            Target::KlaisAfXdp | Target::KlaisUdp => {
                let Some(net) = &self.net else {
                    return Err("klais targets need the local topology".into());
                };
                let cfg =
                    self.dir
                        .join(format!("trial-{:02}-{}.toml", self.trial_no, target.slug()));
                let journal = self.dir.join(format!("journal-{:02}", self.trial_no));
                let backend = if target == Target::KlaisAfXdp {
                    "af_xdp"
                } else {
                    "udp"
                };
                let text = trial_config(
                    self.opts.klais_config.as_deref(),
                    backend,
                    self.opts.shards,
                    &listen,
                    &brokers,
                    topic,
                    &journal,
                    (target == Target::KlaisAfXdp).then_some(net.iface.as_str()),
                )?;
                std::fs::write(&cfg, text).map_err(|e| format!("{}: {e}", cfg.display()))?;
                let mut c = Command::new(&self.opts.klais_bin);
                c.arg("run").arg("--config").arg(&cfg);
                c
            }
            Target::Tokio => {
                let bin = self.opts.klais_bin.with_file_name("klais-baseline-tokio");
                if !bin.exists() {
                    return Err(format!(
                        "{} not found: build it with `cargo build --release --bin klais-baseline-tokio`",
                        bin.display()
                    ));
                }
                let mut c = Command::new(bin);
                c.args(["--listen", &listen, "--brokers", &brokers, "--topic", topic]);
                c
            }
            Target::Python => {
                if !self.opts.python.exists() {
                    return Err(format!(
                        "{} not found: `scripts/baselines.sh` makes the Python baseline's venv (aiokafka) in the cache",
                        self.opts.python.display()
                    ));
                }
                let mut c = Command::new(&self.opts.python);
                c.arg(self.opts.baselines.join("asyncio_aiokafka.py"))
                    .args(["--listen", &listen, "--brokers", &brokers, "--topic", topic]);
                c
            }
        };
        let mut child = own_group(cmd)
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", target.name()))?;
        let needle = match target {
            Target::KlaisAfXdp | Target::KlaisUdp => "klais listening on",
            _ => "listening on",
        };
        wait_for_line(&log, &mut child, needle, Duration::from_secs(60))?;
        Ok(Some(Running { child, log }))
    }

    fn load_spec(&self, rate: Rate) -> Result<LoadSpec, String> {
        let (target, netns, sender) = match (&self.opts.topology, &self.net) {
            (Topology::Local, Some(net)) => {
                let sender = if self.opts.af_xdp_tx {
                    let dst_mac = frame::iface_mac(&net.iface).map_err(|e| e.to_string())?;
                    Sender::AfXdp {
                        iface: net.peer.clone(),
                        flow: frame::Flow {
                            dst_mac,
                            src_mac: net.peer_mac()?,
                            src: SocketAddrV4::new(net.peer_addr, 40_000),
                            dst: self.listen,
                        },
                        zero_copy: self.opts.zero_copy,
                    }
                } else {
                    Sender::Udp
                };
                (self.listen, Some(net.netns.clone()), sender)
            }
            (
                Topology::Remote {
                    iface,
                    target,
                    dst_mac,
                },
                _,
            ) => {
                let sender = if self.opts.af_xdp_tx {
                    let src_ip = frame::iface_ipv4(iface).ok_or_else(|| {
                        format!("{iface} has no IPv4 address (ip addr add ... dev {iface})")
                    })?;
                    let dst_mac = match dst_mac {
                        Some(m) => *m,
                        None => neighbour_mac(iface, *target.ip())?,
                    };
                    Sender::AfXdp {
                        iface: iface.clone(),
                        flow: frame::Flow {
                            dst_mac,
                            src_mac: frame::iface_mac(iface).map_err(|e| e.to_string())?,
                            src: SocketAddrV4::new(src_ip, 40_000),
                            dst: *target,
                        },
                        zero_copy: self.opts.zero_copy,
                    }
                } else {
                    Sender::Udp
                };
                (*target, None, sender)
            }
            (Topology::Local, None) => return Err("local topology without its network".into()),
        };
        Ok(LoadSpec {
            sender,
            target,
            devices: self.opts.devices,
            rate,
            shape: self.opts.shape,
            payload: self.opts.payload,
            malformed_ppm: self.opts.malformed_ppm,
            duration: self.opts.duration,
            threads: self.opts.threads,
            seed: self.opts.seed,
            netns,
        })
    }

    /// One trial of `target` at `rate`.
    fn trial(&mut self, target: Target, rate: Rate) -> Result<Trial, String> {
        self.trial_no += 1;
        if target == Target::Remote {
            // The appliance writes its own topic: read it from its end.
            let topic = self
                .opts
                .topic
                .clone()
                .ok_or("--topology remote needs --topic (the topic the remote klais writes)")?;
            return self.trial_inner(target, rate, &topic);
        }
        let topic = format!("klais-bench-{}-{:02}", self.run_id, self.trial_no);
        let blog = self
            .dir
            .join(format!("trial-{:02}-broker.log", self.trial_no));
        self.broker.prepare(&topic, self.opts.partitions, &blog)?;
        let result = self.trial_inner(target, rate, &topic);
        self.broker.cleanup(&topic);
        result
    }

    fn trial_inner(&mut self, target: Target, rate: Rate, topic: &str) -> Result<Trial, String> {
        let spec = self.load_spec(rate)?;
        // Stopped when dropped, on every path.
        let running = self.start_target(target, topic)?;
        let started_ns = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reader = Reader::start(
            &self.broker.addr(),
            topic,
            self.opts.devices,
            started_ns.clone(),
            target == Target::Remote,
        )?;
        let tpid = running.as_ref().map(|r| r.child.id());
        let cpu0 = (
            tpid.map_or(0.0, proc_cpu_s),
            self.broker.pid().map(proc_cpu_s),
            self_cpu_s(),
        );
        let cores0 = cpu_times();
        let drops0 = self.net.as_ref().map_or(0, |n| n.peer_stat("tx_dropped"));
        let rcvbuf0 = udp_rcvbuf_errors();
        let progress = std::sync::atomic::AtomicU64::new(0);
        let mut hook = match &self.opts.on_load {
            Some(cmd) => Some(
                own_group(Command::new("bash"))
                    .arg("-c")
                    .arg(cmd)
                    .env(
                        "KLAIS_BENCH_TARGET_PID",
                        tpid.map_or(String::new(), |p| p.to_string()),
                    )
                    .env(
                        "KLAIS_BENCH_SECONDS",
                        format!("{}", self.opts.duration.as_secs_f64()),
                    )
                    .env("KLAIS_BENCH_DIR", &self.dir)
                    .env("KLAIS_BENCH_TRIAL", format!("{:02}", self.trial_no))
                    .spawn()
                    .map_err(|e| format!("--on-load command: {e}"))?,
            ),
            None => None,
        };
        let bar = self.bar(target, rate);
        let start = Instant::now();
        let load = std::thread::scope(|s| {
            let h = s.spawn(|| load::run(&spec, &self.stop, &progress, &started_ns));
            while !h.is_finished() {
                std::thread::sleep(Duration::from_millis(200));
                if let Some(b) = &bar {
                    let el = start.elapsed().as_secs_f64().max(1e-3);
                    b.set_position(start.elapsed().as_millis() as u64);
                    b.set_message(format!(
                        "sent {:>9.0}/s  read {:>9.0}/s",
                        progress.load(Ordering::Relaxed) as f64 / el,
                        reader.progress.load(Ordering::Relaxed) as f64 / el
                    ));
                }
            }
            h.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("generator panicked")))
        });
        let ended = Instant::now();
        let cores1 = cpu_times();
        let stopped = self.stop.load(Ordering::Relaxed);
        if let Some(h) = hook.as_mut() {
            end_hook(h);
        }
        let load = load.map_err(|e| format!("generator: {e}"))?;
        if let Some(b) = &bar {
            b.set_message("draining: reading the topic back".to_string());
        }
        let measured = reader.finish(&load.per_device, load.sent_valid, ended)?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let cpu = Cpu {
            target_s: (tpid.map_or(0.0, proc_cpu_s) - cpu0.0).max(0.0),
            broker_s: self
                .broker
                .pid()
                .map(proc_cpu_s)
                .zip(cpu0.1)
                .map(|(a, b)| (a - b).max(0.0)),
            bench_s: self_cpu_s() - cpu0.2,
            per_core_busy: cores0
                .iter()
                .zip(&cores1)
                .map(|(a, b)| (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64)
                .collect(),
        };
        let link_drops = self
            .net
            .as_ref()
            .map_or(0, |n| n.peer_stat("tx_dropped"))
            .saturating_sub(drops0);
        let udp_rcvbuf_errors = udp_rcvbuf_errors().saturating_sub(rcvbuf0);
        let log = running.as_ref().map(|r| r.log.clone());
        // Stop the target now: klais prints its summary (read below) on exit.
        drop(running);
        let secs = load.elapsed_ns as f64 / 1e9;
        let delivered_pps = measured.unique as f64 / secs.max(1e-9);
        let zero_loss = measured.lost == 0
            && measured.duplicates == 0
            && measured.reordered == 0
            && measured.foreign == 0
            && load.sent_valid > 0;
        let klais_lost = log.as_ref().map_or(0, |l| klais_socket_losses(l));
        let limit = (!zero_loss)
            .then(|| loss_limit(rate, &load, &cpu, link_drops, udp_rcvbuf_errors, klais_lost));
        let reached = match rate {
            Rate::Fixed { pps } if pps > 0 => load.rate() >= 0.95 * pps as f64,
            _ => true,
        };
        Ok(Trial {
            target,
            rate,
            reached,
            stopped,
            cpu_s_per_million: if measured.unique > 0 {
                cpu.target_s / (measured.unique as f64 / 1e6)
            } else {
                0.0
            },
            load,
            measured,
            delivered_pps,
            cpu,
            link_drops,
            udp_rcvbuf_errors,
            zero_loss,
            limit,
            log,
        })
    }

    fn bar(&self, target: Target, rate: Rate) -> Option<indicatif::ProgressBar> {
        if !self.opts.progress {
            return None;
        }
        let b = indicatif::ProgressBar::new(self.opts.duration.as_millis() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>28} [{bar:30}] {elapsed:>4} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_prefix(format!("{} @ {}", target.name(), rate_text(rate)));
        Some(b)
    }

    /// One trial, or the search for the highest zero-loss rate.
    fn target(&mut self, target: Target, mode: RateMode) -> Result<TargetResult, String> {
        let mut trials = Vec::new();
        let say = |t: &Trial| eprintln!("{}", trial_line(t));
        match mode {
            RateMode::Run { rate } => {
                let t = self.trial(target, rate)?;
                say(&t);
                trials.push(t);
                Ok(TargetResult {
                    target,
                    trials,
                    zero_loss_pps: None,
                    generator_limited: false,
                })
            }
            RateMode::FindMax { start, max, steps } => {
                // Good: no loss at the asked rate. A trial the generator could
                // not drive to the asked rate but that lost nothing only shows
                // a lower bound (its delivered rate): the search stops there.
                let mut good: Option<u64> = None;
                let mut bound = false;
                let mut bad: Option<u64> = None;
                let mut r = start.max(1);
                let note = |t: &Trial, good: &mut Option<u64>, bound: &mut bool| -> Step {
                    if !t.zero_loss {
                        return Step::Lost;
                    }
                    if t.reached {
                        if good.map_or(true, |g| t.asked() >= g) {
                            *good = Some(t.asked());
                            *bound = false;
                        }
                        Step::Good
                    } else {
                        // The search ends at the generator's limit: what it
                        // found is a lower bound either way.
                        let d = t.delivered_pps as u64;
                        if good.map_or(true, |g| d > g) {
                            *good = Some(d);
                        }
                        *bound = true;
                        Step::GeneratorLimited
                    }
                };
                loop {
                    if self.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let t = self.trial(target, Rate::Fixed { pps: r })?;
                    say(&t);
                    if t.stopped {
                        trials.push(t);
                        break;
                    }
                    let step = note(&t, &mut good, &mut bound);
                    trials.push(t);
                    match step {
                        Step::Good if r < max => r = (r * 2).min(max),
                        Step::Good | Step::GeneratorLimited => break,
                        Step::Lost => {
                            bad = Some(r);
                            break;
                        }
                    }
                }
                if let Some(b) = bad {
                    let mut lo = good.unwrap_or(0);
                    let mut hi = b;
                    for _ in 0..steps {
                        if self.stop.load(Ordering::Relaxed) || hi <= lo || hi - lo <= hi / 50 {
                            break;
                        }
                        let mid = (lo + hi) / 2;
                        if mid == 0 {
                            break;
                        }
                        let t = self.trial(target, Rate::Fixed { pps: mid })?;
                        say(&t);
                        if t.stopped {
                            trials.push(t);
                            break;
                        }
                        let step = note(&t, &mut good, &mut bound);
                        trials.push(t);
                        match step {
                            Step::Lost => hi = mid,
                            Step::Good => lo = mid,
                            // The generator cannot go higher either.
                            Step::GeneratorLimited => break,
                        }
                    }
                }
                Ok(TargetResult {
                    target,
                    trials,
                    zero_loss_pps: good,
                    generator_limited: bound,
                })
            }
        }
    }
}

enum Step {
    Good,
    GeneratorLimited,
    Lost,
}

/// klais's configuration for one trial: the operator's base file (if any)
/// with what the bench decides set over it.
#[allow(clippy::too_many_arguments)]
fn trial_config(
    base: Option<&Path>,
    backend: &str,
    shards: u32,
    listen: &str,
    brokers: &str,
    topic: &str,
    journal: &Path,
    xdp_iface: Option<&str>,
) -> Result<String, String> {
    use toml::{Table, Value};
    let mut root: Table = match base {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("--klais-config {}: {e}", p.display()))?;
            text.parse()
                .map_err(|e| format!("--klais-config {}: not TOML: {e}", p.display()))?
        }
        None => Table::new(),
    };
    fn table<'a>(t: &'a mut Table, path: &[&str]) -> &'a mut Table {
        let mut cur = t;
        for k in path {
            let v = cur
                .entry(k.to_string())
                .or_insert_with(|| Value::Table(Table::new()));
            if !v.is_table() {
                *v = Value::Table(Table::new());
            }
            cur = v.as_table_mut().expect("just made a table");
        }
        cur
    }
    let ingest = table(&mut root, &["ingest"]);
    ingest.insert("backend".into(), backend.into());
    ingest.insert("shards".into(), Value::Integer(i64::from(shards)));
    ingest.insert("listen".into(), listen.into());
    table(&mut root, &["output"]).insert("sink".into(), "kafka".into());
    let kafka = table(&mut root, &["output", "kafka"]);
    kafka.insert("brokers".into(), brokers.into());
    kafka.insert("topic".into(), topic.into());
    table(&mut root, &["output", "kafka", "journal"])
        .insert("dir".into(), journal.display().to_string().into());
    match xdp_iface {
        Some(i) => {
            let x = table(&mut root, &["xdp"]);
            x.insert("iface".into(), i.into());
            x.entry("mode").or_insert_with(|| "native".into());
        }
        None => {
            if let Some(Value::Table(x)) = root.get_mut("xdp") {
                x.remove("iface");
            }
        }
    }
    Ok(format!(
        "# written by klais bench for one trial\n{}",
        toml::to_string(&root).map_err(|e| e.to_string())?
    ))
}

/// Frames klais's own summary says the kernel dropped before the shard.
fn klais_socket_losses(log: &Path) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut n = 0u64;
    for l in text.lines() {
        if let Some(v) = l
            .split("LOST between the XDP redirect and the shards:")
            .nth(1)
        {
            n += v
                .split_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
        }
        if l.trim_start().starts_with("dropped at the queue") {
            n += l
                .split_whitespace()
                .nth(4)
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
        }
    }
    n
}

fn neighbour_mac(iface: &str, ip: Ipv4Addr) -> Result<[u8; 6], String> {
    // Make the kernel resolve it: one datagram to the discard port.
    if let Ok(s) = std::net::UdpSocket::bind("0.0.0.0:0") {
        let _ = s.send_to(b"", (ip, 9));
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = sh(
        "ip",
        &["-4", "neigh", "show", &ip.to_string(), "dev", iface],
    )?;
    out.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .and_then(frame::parse_mac)
        .ok_or_else(|| {
            format!("no neighbour entry for {ip} on {iface}: pass --dst-mac (the next hop's MAC)")
        })
}

/// "50,000/s" or "10,000→90,000/s".
pub fn rate_text(r: Rate) -> String {
    match r {
        Rate::Fixed { pps: 0 } => "max".into(),
        Rate::Fixed { pps } => format!("{}/s", thousands(pps)),
        Rate::Ramp { from, to } => format!("{}→{}/s", thousands(from), thousands(to)),
    }
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One line per trial.
pub fn trial_line(t: &Trial) -> String {
    format!(
        "{:<26} {:>12}  sent {:>10}  read {:>10} ({:>9.0}/s)  lost {:>8}  dup {}  reord {}  p50 {:>7} µs  p99 {:>8} µs  cpu {:.2} s/M{}",
        t.target.name(),
        rate_text(t.rate),
        thousands(t.load.sent_valid),
        thousands(t.measured.unique),
        t.delivered_pps,
        thousands(t.measured.lost),
        t.measured.duplicates,
        t.measured.reordered,
        thousands(t.measured.latency.p50_us),
        thousands(t.measured.latency.p99_us),
        t.cpu_s_per_million,
        t.limit.as_ref().map_or(String::new(), |l| format!("  LIMIT {l}"))
    )
}

fn stamp(opts: &Options, net: Option<&LocalNet>) -> Stamp {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".into(), |s| s.trim().to_string());
    let nic = match (&opts.topology, net) {
        (Topology::Local, Some(n)) => {
            format!("veth pair {} <-> {} (netns {})", n.iface, n.peer, n.netns)
        }
        (Topology::Remote { iface, .. }, _) => {
            let driver = std::fs::read_link(format!("/sys/class/net/{iface}/device/driver"))
                .ok()
                .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "unknown driver".into());
            let speed = std::fs::read_to_string(format!("/sys/class/net/{iface}/speed"))
                .unwrap_or_default();
            format!("{iface} ({driver}, {} Mb/s)", speed.trim())
        }
        _ => "unknown".into(),
    };
    Stamp {
        utc: utc_now(),
        kernel: sh("uname", &["-r"]).unwrap_or_default().trim().to_string(),
        cpu,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        nic,
        commit: env!("KLAIS_COMMIT").to_string(),
        config: format!(
            "generator {} x{} threads, {} devices, {:?}, {:?}, payload {:?}, malformed {} ppm, {} s per trial, seed {}, klais shards {}, {} partitions, broker {}",
            if opts.af_xdp_tx { if opts.zero_copy { "af_xdp-zerocopy" } else { "af_xdp-copy" } } else { "udp-sendmmsg" },
            opts.threads,
            opts.devices,
            opts.rate,
            opts.shape,
            opts.payload,
            opts.malformed_ppm,
            opts.duration.as_secs_f64(),
            opts.seed,
            opts.shards,
            opts.partitions,
            opts.brokers.clone().unwrap_or_else(|| "local tansu, restarted empty per trial".into())
        ),
    }
}

fn utc_now() -> String {
    sh("date", &["-u", "+%Y%m%dT%H%M%SZ"])
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn setup<'a>(opts: &'a Options, command: &str, targets: &[Target]) -> Result<Ctx<'a>, String> {
    if opts.topology == Topology::Local
        && targets.contains(&Target::KlaisAfXdp)
        && opts.threads > opts.shards
    {
        // veth hands a frame sent on queue i to the peer's queue i, and klais
        // has one AF_XDP socket per shard queue: frames on other queues would
        // take the kernel path and never reach a shard.
        return Err(format!(
            "--threads {} with the klais-af_xdp target needs --shards {} or more on the local topology: each generator thread sends on its own veth queue, and klais receives on one AF_XDP socket per shard queue",
            opts.threads, opts.threads
        ));
    }
    if opts.threads == 0 || opts.devices == 0 || opts.shards == 0 || opts.partitions == 0 {
        return Err("--threads, --devices, --shards and --partitions must be at least 1".into());
    }
    let mut dir = opts.out.join(format!("{}-{command}", utc_now()));
    for k in 2.. {
        if !dir.exists() {
            break;
        }
        dir = opts.out.join(format!("{}-{command}-{k}", utc_now()));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (net, listen) = match &opts.topology {
        Topology::Local => {
            let n = LocalNet::create(opts.threads.max(opts.shards))?;
            let l = SocketAddrV4::new(n.addr, 7700);
            (Some(n), l)
        }
        Topology::Remote { target, .. } => (None, *target),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal ends the trial cleanly (topology removed, children
        // stopped); a second one exits at once.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone());
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    Ok(Ctx {
        opts,
        dir,
        net,
        broker: Broker::new(opts.brokers.as_deref())?,
        trial_no: 0,
        run_id: format!(
            "{}-{}",
            std::process::id(),
            crate::clock::now_ns() % 1_000_000
        ),
        listen,
        stop,
    })
}

/// `klais bench run`: one target, one trial or a search. Returns the report and
/// the results folder.
pub fn run(opts: &Options, target: Target) -> Result<(Report, PathBuf), String> {
    if target == Target::Remote && opts.brokers.is_none() {
        return Err("--topology remote reads the appliance's topic: pass --brokers (the broker the remote klais writes to)".into());
    }
    let mut ctx = setup(opts, "run", &[target])?;
    let st = stamp(opts, ctx.net.as_ref());
    eprintln!("bench: results in {}", ctx.dir.display());
    let r = ctx.target(target, opts.rate)?;
    let report = Report {
        command: "run".into(),
        stamp: st,
        targets: vec![r],
        common_pps: None,
        common: Vec::new(),
    };
    write_results(&ctx.dir, &report)?;
    Ok((report, ctx.dir.clone()))
}

/// `klais bench compare`: the same scenario against several targets, then
/// each at a common rate below every target's zero-loss rate for CPU time
/// per million messages.
pub fn compare(opts: &Options, targets: &[Target]) -> Result<(Report, PathBuf), String> {
    let mut ctx = setup(opts, "compare", targets)?;
    let st = stamp(opts, ctx.net.as_ref());
    eprintln!("bench: results in {}", ctx.dir.display());
    let mut results = Vec::new();
    for &t in targets {
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        results.push(ctx.target(t, opts.rate)?);
    }
    // A common rate: half the lowest zero-loss rate (or the run's fixed rate).
    let common_pps = match opts.rate {
        RateMode::FindMax { .. } => results
            .iter()
            .filter_map(|r| r.zero_loss_pps)
            .min()
            .map(|m| (m / 2).max(1)),
        RateMode::Run {
            rate: Rate::Fixed { pps },
        } if pps > 0 => None,
        RateMode::Run { .. } => None,
    };
    let mut common = Vec::new();
    if let Some(pps) = common_pps {
        for &t in targets {
            if ctx.stop.load(Ordering::Relaxed) {
                break;
            }
            let tr = ctx.trial(t, Rate::Fixed { pps })?;
            eprintln!("{}", trial_line(&tr));
            common.push(tr);
        }
    }
    let report = Report {
        command: "compare".into(),
        stamp: st,
        targets: results,
        common_pps,
        common,
    };
    write_results(&ctx.dir, &report)?;
    Ok((report, ctx.dir.clone()))
}

/// The trial of each target a plot shows: with `common`, its common-rate
/// trial (latency is compared at one rate); else, and for throughput, its
/// fastest zero-loss trial, else its last.
fn shown(report: &Report, common: bool) -> Vec<&Trial> {
    report
        .targets
        .iter()
        .filter_map(|r| {
            report
                .common
                .iter()
                .find(|t| common && t.target == r.target)
                .or_else(|| {
                    r.trials
                        .iter()
                        .filter(|t| t.zero_loss)
                        .max_by(|a, b| a.delivered_pps.total_cmp(&b.delivered_pps))
                })
                .or(r.trials.last())
        })
        .collect()
}

/// Re-renders `summary.txt` and the plots of a results folder from its
/// `result.json` (`klais bench plot DIR`).
pub fn replot(dir: &Path) -> Result<Report, String> {
    let p = dir.join("result.json");
    let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    let report: Report =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    write_results(dir, &report)?;
    Ok(report)
}

/// Writes result.json, summary.txt and the PNG plots.
pub fn write_results(dir: &Path, report: &Report) -> Result<(), String> {
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("result.json"), json).map_err(|e| e.to_string())?;
    let mut f = std::fs::File::create(dir.join("summary.txt")).map_err(|e| e.to_string())?;
    let _ = f.write_all(summary(report).as_bytes());
    let mut thr = Vec::new();
    let mut lat = Vec::new();
    let mut cdf = Vec::new();
    for t in shown(report, false) {
        let tag = format!("{} @ {}", t.target.name(), rate_text(t.rate));
        // Whole seconds of the load only (the last one is partial).
        let whole = (t.load.elapsed_ns / 1_000_000_000) as usize;
        thr.push((
            format!("{tag} (sent)"),
            t.load
                .per_second
                .iter()
                .take(whole)
                .enumerate()
                .map(|(s, n)| (s as f64 + 0.5, *n as f64))
                .collect(),
        ));
        thr.push((
            format!("{tag} read back"),
            t.measured
                .seconds
                .iter()
                .take(whole)
                .map(|s| (s.t as f64 + 0.5, s.consumed as f64))
                .collect(),
        ));
    }
    for t in shown(report, true) {
        let tag = format!("{} @ {}", t.target.name(), rate_text(t.rate));
        let secs: Vec<_> = t
            .measured
            .seconds
            .iter()
            .filter(|s| s.latency.max_us > 0)
            .collect();
        lat.push((
            format!("{tag} P50"),
            secs.iter()
                .map(|s| (s.t as f64 + 0.5, s.latency.p50_us as f64 / 1e3))
                .collect(),
        ));
        lat.push((
            format!("{tag} P99"),
            secs.iter()
                .map(|s| (s.t as f64 + 0.5, s.latency.p99_us as f64 / 1e3))
                .collect(),
        ));
        cdf.push((
            tag,
            t.measured
                .cdf
                .iter()
                .map(|(us, q)| (*us as f64 / 1e3, *q))
                .collect(),
        ));
    }
    plot::lines(
        &dir.join("throughput.png"),
        "throughput: sent and read back",
        "seconds",
        "messages / s",
        &thr,
        false,
    )?;
    plot::lines(
        &dir.join("latency.png"),
        "end-to-end latency by send second (P50, P99)",
        "seconds",
        "ms",
        &lat,
        false,
    )?;
    plot::lines(
        &dir.join("latency-cdf.png"),
        "end-to-end latency CDF",
        "ms (log)",
        "share of messages",
        &cdf,
        true,
    )?;
    Ok(())
}

/// The table printed at the end and stored as summary.txt.
pub fn summary(report: &Report) -> String {
    let s = &report.stamp;
    let mut out = format!(
        "klais bench {} — {} — kernel {}, {} ({} CPUs), {}, commit {}\n{}\n\n",
        report.command, s.utc, s.kernel, s.cpu, s.cpus, s.nic, s.commit, s.config
    );
    let zl = |t: Target| {
        report
            .targets
            .iter()
            .find(|r| r.target == t)
            .and_then(|r| r.zero_loss_pps)
    };
    let searched = report.targets.iter().any(|r| r.zero_loss_pps.is_some());
    if searched {
        out.push_str(&format!(
            "{:<26} {:>16} {:>10} {:>10}  {}\n",
            "target", "zero-loss msg/s", "x python", "x tokio", "lowest losing trial: limit"
        ));
        for r in &report.targets {
            let ratio = |b: Option<u64>| match (r.zero_loss_pps, b) {
                (Some(a), Some(b)) if b > 0 && r.generator_limited => {
                    format!(">= {:.1}", a as f64 / b as f64)
                }
                (Some(a), Some(b)) if b > 0 => format!("{:.1}", a as f64 / b as f64),
                _ => "-".into(),
            };
            let limit = if r.generator_limited {
                "the generator: nothing lost at the fastest rate it could send".to_string()
            } else {
                r.trials
                    .iter()
                    .find(|t| !t.zero_loss)
                    .map_or("none up to --max-rate".into(), |t| {
                        format!(
                            "{} at {}",
                            t.limit.clone().unwrap_or_default(),
                            rate_text(t.rate)
                        )
                    })
            };
            out.push_str(&format!(
                "{:<26} {:>16} {:>10} {:>10}  {}\n",
                r.target.name(),
                r.zero_loss_pps.map_or("none".into(), |z| {
                    if r.generator_limited {
                        format!(">= {}", thousands(z))
                    } else {
                        thousands(z)
                    }
                }),
                ratio(zl(Target::Python)),
                ratio(zl(Target::Tokio)),
                limit
            ));
        }
        out.push('\n');
    }
    let trials: Vec<&Trial> = if report.common.is_empty() {
        report
            .targets
            .iter()
            .flat_map(|r| r.trials.iter())
            .collect()
    } else {
        out.push_str(&format!(
            "at a common rate of {}/s (half the lowest zero-loss rate):\n",
            report.common_pps.map_or("-".into(), thousands)
        ));
        report.common.iter().collect()
    };
    out.push_str(&format!(
        "{:<26} {:>12} {:>11} {:>11} {:>7} {:>4} {:>5} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9}\n",
        "target",
        "offered",
        "sent",
        "read",
        "lost",
        "dup",
        "reord",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "cpu s/M",
        "broker s/M",
        "zero-loss"
    ));
    for t in trials {
        let m = &t.measured;
        let per_m = |s: f64| {
            if m.unique > 0 {
                s / (m.unique as f64 / 1e6)
            } else {
                0.0
            }
        };
        out.push_str(&format!(
            "{:<26} {:>12} {:>11} {:>11} {:>7} {:>4} {:>5} {:>9.2} {:>9.2} {:>9.2} {:>10.2} {:>10} {:>9}\n",
            t.target.name(),
            rate_text(t.rate),
            thousands(t.load.sent_valid),
            thousands(m.unique),
            thousands(m.lost),
            m.duplicates,
            m.reordered,
            m.latency.p50_us as f64 / 1e3,
            m.latency.p99_us as f64 / 1e3,
            m.latency.p999_us as f64 / 1e3,
            t.cpu_s_per_million,
            t.cpu.broker_s.map_or("-".into(), |b| format!("{:.2}", per_m(b))),
            if t.zero_loss { "yes" } else { "NO" }
        ));
    }
    out
}

/// Where a losing trial lost: the drop counters first (they say where
/// messages were lost); a generator that fell short is named when nothing
/// else is.
fn loss_limit(
    rate: Rate,
    load: &load::LoadReport,
    cpu: &Cpu,
    link_drops: u64,
    udp_rcvbuf_errors: u64,
    klais_lost: u64,
) -> String {
    let secs = load.elapsed_ns as f64 / 1e9;
    let asked = match rate {
        Rate::Fixed { pps } => pps as f64,
        Rate::Ramp { to, .. } => to as f64,
    };
    let busy = |s: f64| s / secs.max(1e-9);
    // Drop counters first: they say where messages were lost; a
    // generator that fell short is named when nothing else is.
    let short = asked > 0.0 && load.rate() < 0.95 * asked && matches!(rate, Rate::Fixed { .. });
    if link_drops > 0 {
        format!("link: the veth/NIC ring dropped {link_drops} frames")
    } else if udp_rcvbuf_errors > 0 {
        format!("UDP receive buffer: {udp_rcvbuf_errors} datagrams dropped by the kernel (target too slow)")
    } else if klais_lost > 0 {
        format!("AF_XDP ring: {klais_lost} frames dropped by the kernel before the shard")
    } else if cpu.broker_s.is_some_and(|b| busy(b) > 0.85) {
        format!(
            "broker CPU: {:.0}% of a core",
            100.0 * busy(cpu.broker_s.unwrap_or(0.0))
        )
    } else if busy(cpu.target_s) > 0.85 {
        format!("target CPU: {:.0}% of a core", 100.0 * busy(cpu.target_s))
    } else if short {
        format!("generator: sent {:.0}/s of {asked:.0}/s asked", load.rate())
    } else {
        format!(
            "not read back within the drain time (target CPU {:.0}%, broker {})",
            100.0 * busy(cpu.target_s),
            cpu.broker_s
                .map_or("n/a".into(), |b| format!("{:.0}%", 100.0 * busy(b)))
        )
    }
}

/// The `--on-load` command's window is the load's: it gets 10 s after the
/// load to write, then it is stopped.
fn end_hook(h: &mut std::process::Child) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) && matches!(h.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if matches!(h.try_wait(), Ok(None)) {
        eprintln!("bench: the --on-load command still runs 10 s after the load; stopping it");
        stop_child(h, Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_and_rates_print_for_tables() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(rate_text(Rate::Fixed { pps: 50_000 }), "50,000/s");
        assert_eq!(
            rate_text(Rate::Ramp {
                from: 1_000,
                to: 9_000
            }),
            "1,000→9,000/s"
        );
    }

    #[test]
    fn target_names_parse_and_unknown_ones_say_which_exist() {
        assert_eq!(Target::parse("klais-af_xdp"), Ok(Target::KlaisAfXdp));
        assert_eq!(Target::parse("python"), Ok(Target::Python));
        assert!(Target::parse("nginx").unwrap_err().contains("klais-udp"));
    }

    #[test]
    fn klais_summaries_give_their_socket_losses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.log");
        std::fs::write(
            &p,
            "  received 10\n  dropped at the queue           7  (socket buffer or AF_XDP ring full before a shard saw them)\n  \
             LOST between the XDP redirect and the shards: 3 (redirected 20, received 10, counted as dropped at the queue 7)\n",
        )
        .unwrap();
        assert_eq!(klais_socket_losses(&p), 10);
    }
}
