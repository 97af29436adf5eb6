//! The control core's HTTP server: Prometheus `/metrics`, `/health`,
//! `/ready`, `/status` and the admin API (docs/operating.md).
//!
//! It runs on its own thread pinned to the output core's CPU (where the
//! control thread runs too: the placement has no control CPU yet) and reads only
//! what the cores publish once per tick ([`crate::telemetry::Published`]): a
//! scrape never touches a shard. Writes go to [`Operator`], which the control
//! loop reads per tick (ceiling, overrides it must not undo) and the shards per
//! tick (deny list), and straight to the kernel maps when the XDP filter runs.
//!
//! Every write (PUT, POST, DELETE) needs `Authorization: Bearer <token>` with
//! the token from `admin.token_file`: missing → 401, wrong → 403, no token
//! file configured → 403 (read-only). Reads need no token: the server binds
//! to loopback by default. Responses are JSON (`/metrics`: Prometheus text).
//!
//! ```text
//! GET    /metrics /health /ready /status
//! GET    /admin/limits
//! PUT    /admin/ceiling            {"pps": N}          DELETE /admin/ceiling
//! PUT    /admin/overrides/<device> {"pps": N, "burst": M}   DELETE …
//! PUT    /admin/deny/<device>                          DELETE /admin/deny/<device>
//! POST   /admin/model/reload       {"file": "…"} (optional; default model.classifier)
//! ```

pub mod metrics;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::kafka::KafkaSnapshot;
use crate::shard::{DenyFeed, DenyList, ShardSnapshot};
use crate::sink::SinkSnapshot;
use crate::telemetry::Published;

/// Why the token file (`admin.token_file`) cannot be used; each says the fix.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Group or others may read it.
    #[error("{path} is readable by other users (mode {mode:o}); `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// Not one token on one line.
    #[error("{path} must hold one token on one line (e.g. `openssl rand -hex 32 > {path}`)")]
    Format {
        /// The file.
        path: PathBuf,
    },
}

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `admin.listen` cannot be bound.
    #[error("admin.listen: cannot bind {listen}: {source} (choose a free port, or set admin.enabled = false)")]
    Bind {
        /// The address.
        listen: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The bound socket cannot be set up.
    #[error("admin.listen: {0}")]
    Socket(std::io::Error),
    /// The server's thread cannot be made.
    #[error("admin server thread: {0}")]
    Thread(std::io::Error),
}

/// Reads a bearer token file: not readable by group or others, one non-empty
/// line. The error names the file and the fix.
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    use std::os::unix::fs::PermissionsExt;
    let read = |source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(TokenError::Format {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

/// Outcomes of admin writes, counted in `/metrics`.
pub const WRITE_RESULTS: [&str; 5] = ["ok", "unauthorized", "forbidden", "invalid", "conflict"];

/// What the operator set through the API, shared with the control loop and
/// the shards (each reads it once per tick).
#[derive(Debug, Default)]
pub struct Operator {
    state: Mutex<OperatorState>,
    /// The deny list as the shards read it (published on every write).
    deny: Arc<DenyFeed>,
}

/// The operator's settings and the API's own counters.
#[derive(Debug, Default, Clone)]
pub struct OperatorState {
    /// Ceiling on the global admission rate, messages per second.
    pub ceiling_pps: Option<u64>,
    /// Per-device kernel rate overrides: hash → (device id, pps, burst).
    pub overrides: BTreeMap<u64, (String, u64, u64)>,
    /// Denied devices: hash → device id.
    pub denied: BTreeMap<u64, String>,
    /// Writes by outcome ([`WRITE_RESULTS`]).
    pub writes: [u64; 5],
    /// Classifier reloads done.
    pub model_reloads: u64,
}

impl Operator {
    /// A copy of the settings now.
    pub fn state(&self) -> OperatorState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn with<R>(&self, f: impl FnOnce(&mut OperatorState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }
    /// The ceiling now (the control loop, per tick).
    pub fn ceiling(&self) -> Option<u64> {
        self.with(|s| s.ceiling_pps)
    }
    /// True when the operator set an override for this device (the control
    /// loop leaves those alone).
    pub fn has_override(&self, hash: u64) -> bool {
        self.with(|s| s.overrides.contains_key(&hash))
    }
    /// The deny list as the shards follow it ([`Shard::follow_deny_list`]):
    /// the data plane sees this narrow view, never the admin module.
    ///
    /// [`Shard::follow_deny_list`]: crate::shard::Shard::follow_deny_list
    pub fn deny_feed(&self) -> Arc<DenyFeed> {
        self.deny.clone()
    }
    /// Puts a device on the deny list (what `PUT /admin/deny/<id>` does
    /// besides the kernel map).
    pub fn deny(&self, hash: u64, id: &str, deny: bool) {
        self.with(|s| {
            if deny {
                s.denied.insert(hash, id.to_string());
            } else {
                s.denied.remove(&hash);
            }
            let mut list = DenyList::default();
            list.extend(s.denied.keys().map(|h| (*h, ())));
            self.deny.publish(list);
        });
    }

    fn count(&self, result: usize) {
        self.with(|s| s.writes[result] += 1);
    }
}

/// Whether each core is still running.
#[derive(Debug, Clone)]
pub struct Liveness {
    /// Set when a shard's loop has ended.
    pub shards_done: Vec<Arc<AtomicBool>>,
    /// Set when the output thread has ended.
    pub output_done: Arc<AtomicBool>,
    /// Set when the control thread has ended (None: no control loop).
    pub control_done: Option<Arc<AtomicBool>>,
    /// Set once klais is stopping (cores ending is then expected).
    pub stopping: Arc<AtomicBool>,
}

/// Everything the server reads.
pub struct Sources {
    /// Per-shard counters.
    pub shards: Vec<Arc<Published<ShardSnapshot>>>,
    /// Per-shard Dam setpoints from the control core (shard rate).
    pub setpoints: Vec<Option<crate::shard::DamSetpoints>>,
    /// Output counters (non-Kafka sinks).
    pub sink: Arc<Published<SinkSnapshot>>,
    /// The Kafka batcher's figures.
    pub kafka: Option<Arc<Published<KafkaSnapshot>>>,
    /// The control core's figures.
    pub control: Option<Arc<Published<crate::control::ControlSnapshot>>>,
    /// The XDP filter's maps (None: no filter).
    pub kernel: Option<Arc<crate::xdp::KernelMaps>>,
    /// The XDP filter's interface (`xdp.iface`), for readiness.
    pub xdp_iface: Option<String>,
    /// Journal configured (the batcher spills when the broker is away).
    pub journal: bool,
    /// Core liveness.
    pub live: Liveness,
    /// Start of the run.
    pub started: Instant,
    /// `model.classifier` and `model.drop_classes` (reload defaults).
    pub classifier: Option<PathBuf>,
    /// See `classifier`.
    pub drop_classes: Vec<String>,
    /// The operator's settings.
    pub operator: Arc<Operator>,
    /// `admin.token_file`'s token.
    pub token: Option<String>,
    /// Capabilities kept after start-up (shown in /status).
    pub capabilities: Arc<Mutex<Vec<String>>>,
}

/// The running server; stops and joins when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "admin::Server({})", self.addr)
    }
}

impl Server {
    /// Binds `listen` and serves from a thread pinned to `cpu`. Fails when the
    /// address cannot be bound (the error names `admin.listen`).
    pub fn start(listen: SocketAddr, cpu: usize, src: Sources) -> Result<Server, AdminError> {
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|source| AdminError::Bind { listen, source })?;
        let addr = listener.local_addr().map_err(AdminError::Socket)?;
        listener.set_nonblocking(true).map_err(AdminError::Socket)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("klais-admin".into())
            .spawn(move || {
                core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                // One connection at a time, each bounded in time and size
                // (CONNECTION_DEADLINE, MAX_HEAD, MAX_BODY): a slow or
                // hostile client costs at most a few seconds of this thread,
                // never memory, never a core's time.
                while !st.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => serve_conn(conn, &src),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => {
                            // Rate-limited per call site (telemetry::RateLimit).
                            tracing::warn!("admin server: accept: {e}");
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            })
            .map_err(AdminError::Thread)?;
        Ok(Server {
            stop,
            thread: Some(thread),
            addr,
        })
    }

    /// The address it listens on (port 0 resolved).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A response: status, content type, body.
type Reply = (u16, &'static str, String);

fn json(status: u16, v: serde_json::Value) -> Reply {
    (status, "application/json", format!("{v}\n"))
}

fn error(status: u16, msg: impl std::fmt::Display) -> Reply {
    json(status, serde_json::json!({ "error": msg.to_string() }))
}

/// Longest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Longest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Time one connection may take, reading and answering.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(3);

/// A parsed request.
struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

/// Reads one request within the deadline and the size limits; Err is the
/// reply to send (or None: the client went away or was too slow).
fn read_request_from(conn: &mut std::net::TcpStream) -> Result<Request, Option<Reply>> {
    let deadline = Instant::now() + CONNECTION_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut read_some =
        |conn: &mut std::net::TcpStream, buf: &mut Vec<u8>| -> Result<usize, Option<Reply>> {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(None);
            }
            conn.set_read_timeout(Some(left)).map_err(|_| None)?;
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => Err(None),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    Ok(n)
                }
            }
        };
    let (head_len, method, path, authorization, content_length) = loop {
        read_some(conn, &mut buf)?;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let mut auth = None;
                let mut len = 0usize;
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("authorization") {
                        auth = Some(String::from_utf8_lossy(h.value).into_owned());
                    } else if h.name.eq_ignore_ascii_case("content-length") {
                        len = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .ok_or_else(|| Some(error(400, "bad Content-Length")))?;
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(Some(error(
                            411,
                            "send a Content-Length, not a chunked body",
                        )));
                    }
                }
                if len > MAX_BODY {
                    return Err(Some(error(
                        413,
                        format!("bodies are at most {MAX_BODY} bytes"),
                    )));
                }
                break (
                    n,
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                    auth,
                    len,
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(Some(error(
                    431,
                    format!("request heads are at most {MAX_HEAD} bytes"),
                )))
            }
            Err(e) => return Err(Some(error(400, format!("not an HTTP/1.x request: {e}")))),
        }
    };
    while buf.len() < head_len + content_length {
        read_some(conn, &mut buf)?;
    }
    let body = buf[head_len..head_len + content_length].to_vec();
    Ok(Request {
        method,
        path: path.split('?').next().unwrap_or("").to_string(),
        authorization,
        body,
    })
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn serve_conn(mut conn: std::net::TcpStream, src: &Sources) {
    let _ = conn.set_nonblocking(false);
    let reply = match read_request_from(&mut conn) {
        Ok(req) => handle(&req, src),
        Err(Some(reply)) => reply,
        Err(None) => return,
    };
    let (status, ctype, body) = reply;
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        reason_phrase(status),
        body.len(),
        if status == 401 { "WWW-Authenticate: Bearer\r\n" } else { "" }
    );
    let _ = conn.set_write_timeout(Some(CONNECTION_DEADLINE));
    let _ = conn
        .write_all(head.as_bytes())
        .and_then(|()| conn.write_all(body.as_bytes()));
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

fn handle(req: &Request, src: &Sources) -> Reply {
    let (method, path) = (req.method.as_str(), req.path.as_str());
    if matches!(method, "GET" | "HEAD") {
        let mut r = read_request(path, src);
        if method == "HEAD" {
            r.2.clear();
        }
        return r;
    }
    if let Err((result, reply)) = authorize(req.authorization.as_deref(), src) {
        src.operator.count(result);
        tracing::warn!("admin API: refused {method} {path}: {}", reply.2.trim_end());
        return reply;
    }
    let r = match std::str::from_utf8(&req.body) {
        Ok(body) => write_request(method, path, body, src),
        Err(_) => error(400, "the body is not UTF-8"),
    };
    src.operator.count(match r.0 {
        200..=299 => 0,
        409 => 4,
        _ => 3,
    });
    if r.0 < 300 {
        tracing::info!("admin API: {method} {path}: {}", r.2.trim_end());
    }
    r
}

/// Checks the bearer token. Both sides are hashed under a key drawn at
/// start and the hashes compared, so the comparison takes the same time
/// whatever the token's length or its first differing byte. Err: (result
/// index, reply).
fn authorize(header: Option<&str>, src: &Sources) -> Result<(), (usize, Reply)> {
    let Some(token) = &src.token else {
        return Err((
            2,
            error(
                403,
                "admin writes are disabled: no admin.token_file is configured",
            ),
        ));
    };
    let Some(given) = header else {
        return Err((
            1,
            error(401, "this write needs `Authorization: Bearer <token>`"),
        ));
    };
    let given = given.trim();
    let Some(given) = given
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("bearer "))
        .map(|_| given[7..].trim())
    else {
        return Err((1, error(401, "only Bearer authorization is accepted")));
    };
    let key = token_key();
    let (a, b) = (
        crate::wire::mac(&key, given.as_bytes()),
        crate::wire::mac(&key, token.as_bytes()),
    );
    if a.iter().zip(&b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0 {
        Ok(())
    } else {
        Err((2, error(403, "wrong token")))
    }
}

/// A per-process random key for the token comparison.
fn token_key() -> crate::wire::DeviceKey {
    static KEY: std::sync::OnceLock<crate::wire::DeviceKey> = std::sync::OnceLock::new();
    // A fixed key if the kernel's generator failed: that would only weaken
    // the timing argument, not the comparison.
    *KEY.get_or_init(|| crate::shard::auth::random_key().unwrap_or([0x5a; 16]))
}

/// Readiness: every configured part up. Returns the reasons it is not.
pub fn not_ready(src: &Sources) -> Vec<String> {
    let mut why = Vec::new();
    let live = &src.live;
    for (i, d) in live.shards_done.iter().enumerate() {
        if d.load(Ordering::Relaxed) {
            why.push(format!("shard {i} is not running"));
        }
    }
    if live.output_done.load(Ordering::Relaxed) {
        why.push("the output core is not running".into());
    }
    if live
        .control_done
        .as_ref()
        .is_some_and(|d| d.load(Ordering::Relaxed))
    {
        why.push("the control core is not running".into());
    }
    if let Some(iface) = &src.xdp_iface {
        match crate::xdp::status(iface) {
            Ok(st) if st.prog_id != 0 && st.klais_pinned => {}
            Ok(_) => why.push(format!("the XDP filter is not attached to {iface}")),
            Err(e) => why.push(format!("cannot query the XDP filter on {iface}: {e}")),
        }
        if src.kernel.as_ref().map_or(true, |m| m.counters().is_err()) {
            why.push(format!("the XDP filter's maps on {iface} are not readable"));
        }
    }
    if let Some(k) = &src.kafka {
        let k = k.read();
        let journaling = src.journal && k.breaker == crate::kafka::Breaker::Open;
        if !k.broker_up && !journaling {
            why.push("no broker reachable and not journaling".into());
        }
    }
    if live.stopping.load(Ordering::Relaxed) {
        why.push("stopping".into());
    }
    why
}

fn read_request(path: &str, src: &Sources) -> Reply {
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(src),
        ),
        "/health" => {
            let dead = src
                .live
                .shards_done
                .iter()
                .any(|d| d.load(Ordering::Relaxed))
                || src.live.output_done.load(Ordering::Relaxed);
            if dead && !src.live.stopping.load(Ordering::Relaxed) {
                error(503, "a core has exited")
            } else {
                json(200, serde_json::json!({ "status": "live" }))
            }
        }
        "/ready" => {
            let why = not_ready(src);
            if why.is_empty() {
                json(200, serde_json::json!({ "status": "ready" }))
            } else {
                json(
                    503,
                    serde_json::json!({ "status": "not ready", "reasons": why }),
                )
            }
        }
        "/status" => json(200, status(src)),
        "/admin/limits" => json(200, limits_json(&src.operator.state())),
        _ => error(404, format!("no such resource: {path}")),
    }
}

fn limits_json(s: &OperatorState) -> serde_json::Value {
    serde_json::json!({
        "ceiling_pps": s.ceiling_pps,
        "overrides": s.overrides.values().map(|(id, pps, burst)| serde_json::json!({
            "device": id, "pps": pps, "burst": burst })).collect::<Vec<_>>(),
        "denied": s.denied.values().collect::<Vec<_>>(),
    })
}

/// `/status`: the figures a human or a script asks for first.
pub fn status(src: &Sources) -> serde_json::Value {
    let mut total = ShardSnapshot::default();
    for s in &src.shards {
        total.add(&s.read());
    }
    let control = src.control.as_ref().map(|c| c.read());
    let kafka = src.kafka.as_ref().map(|k| k.read());
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": src.started.elapsed().as_secs_f64(),
        "shards": src.shards.len(),
        "received": total.received,
        "accepted": total.accepted,
        "rejected": total.rejects.total(),
        "xdp": src.xdp_iface,
        "storm_now": control.map(|c| c.storm_now),
        "global_rate_pps": control.map(|c| c.global_rate),
        "broker_up": kafka.map(|k| k.broker_up),
        "delivered": kafka.map(|k| k.delivered),
        "journaled": kafka.map(|k| k.journaled),
        "ready": not_ready(src).is_empty(),
        "capabilities": *src.capabilities.lock().unwrap_or_else(|p| p.into_inner()),
        "operator": limits_json(&src.operator.state()),
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CeilingBody {
    pps: u64,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    pps: u64,
    burst: Option<u64>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReloadBody {
    file: Option<PathBuf>,
}

fn body<T: serde::de::DeserializeOwned>(text: &str, example: &str) -> Result<T, Reply> {
    serde_json::from_str(if text.trim().is_empty() { "{}" } else { text })
        .map_err(|e| error(400, format!("body: {e}; expected e.g. {example}")))
}

fn device(id: &str) -> Result<(u64, String), Reply> {
    let id = percent_decode(id);
    crate::wire::raw_device_id(&id)
        .map(|raw| (crate::wire::device_hash(&raw), id.clone()))
        .map_err(|e| error(400, format!("device id {id:?}: {e}")))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 3 <= b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn write_request(method: &str, path: &str, text: &str, src: &Sources) -> Reply {
    let op = &src.operator;
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let r: Result<Reply, Reply> = (|| match (method, parts.as_slice()) {
        ("PUT", ["admin", "ceiling"]) => {
            if src.control.is_none() {
                return Err(error(409, "no ceiling to set: the control core, which applies it to the shards and the kernel budget, runs with the Dam (set dam.device_rate_pps)"));
            }
            let b: CeilingBody = body(text, r#"{"pps": 50000}"#)?;
            if b.pps == 0 {
                return Err(error(400, "pps must be at least 1"));
            }
            op.with(|s| s.ceiling_pps = Some(b.pps));
            Ok(json(200, serde_json::json!({ "ceiling_pps": b.pps })))
        }
        ("DELETE", ["admin", "ceiling"]) => {
            op.with(|s| s.ceiling_pps = None);
            Ok(json(200, serde_json::json!({ "ceiling_pps": null })))
        }
        ("PUT", ["admin", "overrides", id]) => {
            let (hash, id) = device(id)?;
            let b: OverrideBody = body(text, r#"{"pps": 100, "burst": 200}"#)?;
            let burst = b.burst.unwrap_or(b.pps.saturating_mul(2)).max(1);
            let rate = crate::xdp::Rate::new(b.pps, burst).map_err(|e| error(400, e))?;
            let maps = src.kernel.as_ref().ok_or_else(|| {
                error(409, "per-device overrides live in the XDP filter's buckets, which is off (set xdp.iface)")
            })?;
            maps.set_override(hash, Some(rate))
                .map_err(|e| error(500, format!("writing the kernel override: {e}")))?;
            op.with(|s| s.overrides.insert(hash, (id.clone(), b.pps, burst)));
            Ok(json(
                200,
                serde_json::json!({ "device": id, "pps": b.pps, "burst": burst }),
            ))
        }
        ("DELETE", ["admin", "overrides", id]) => {
            let (hash, id) = device(id)?;
            if let Some(maps) = &src.kernel {
                maps.set_override(hash, None)
                    .map_err(|e| error(500, format!("clearing the kernel override: {e}")))?;
            }
            let had = op.with(|s| s.overrides.remove(&hash).is_some());
            Ok(json(
                200,
                serde_json::json!({ "device": id, "removed": had }),
            ))
        }
        ("PUT" | "DELETE", ["admin", "deny", id]) => {
            let (hash, id) = device(id)?;
            let deny = method == "PUT";
            if let Some(maps) = &src.kernel {
                maps.set_denied(hash, deny)
                    .map_err(|e| error(500, format!("writing the kernel deny list: {e}")))?;
            }
            op.deny(hash, &id, deny);
            Ok(json(
                200,
                serde_json::json!({ "device": id, "denied": deny }),
            ))
        }
        ("POST", ["admin", "model", "reload"]) => {
            let b: ReloadBody = body(text, r#"{"file": "models/classifier.json"}"#)?;
            let maps = src.kernel.as_ref().ok_or_else(|| {
                error(
                    409,
                    "the classifier runs in the XDP filter, which is off (set xdp.iface)",
                )
            })?;
            let file = b.file.or_else(|| src.classifier.clone()).ok_or_else(|| {
                error(
                    400,
                    "no file given and no model.classifier configured; send {\"file\": \"…\"}",
                )
            })?;
            let f = crate::model::load_classifier(&file).map_err(|e| error(400, e))?;
            let f = crate::model::with_drops(f, &src.drop_classes).map_err(|e| error(400, e))?;
            let slot = maps
                .set_model(Some(&f))
                .map_err(|e| error(500, format!("loading the classifier: {e}")))?;
            op.with(|s| s.model_reloads += 1);
            Ok(json(200, serde_json::json!({ "file": file, "slot": slot })))
        }
        _ => Err(error(404, format!("no such admin write: {method} {path}"))),
    })();
    r.unwrap_or_else(|e| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_others_can_read_or_an_empty_one_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_token(&p)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&p).unwrap(), "s3cret");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_token(&p)
            .unwrap_err()
            .to_string()
            .contains("one token"));
    }

    #[test]
    fn percent_encoded_device_ids_decode() {
        assert_eq!(percent_decode("sensor%2D1"), "sensor-1");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("%é1"), "%é1");
    }
}
