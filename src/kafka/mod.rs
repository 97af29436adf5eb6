//! The Kafka batching core: drains one SPSC ring per shard, batches adaptively
//! (DAPB, [`dapb`]), produces through one librdkafka producer (rdkafka
//! `BaseProducer`, polled from this core), and never loses an accepted message:
//! when the broker is unreachable or librdkafka's queue passes its high-water
//! mark, messages go to the spill journal ([`journal`]) and are replayed, in
//! order, when the broker is healthy again.
//!
//! **Record** (DESIGN.md §3): key = device id (NUL padding trimmed), value = the
//! payload bytes as received, record timestamp = receive time (ms), headers as
//! UTF-8 decimal text so any consumer reads them: `sequence`, `recv_ts_ns`,
//! `gateway`, `shard`. No model runs yet, so no verdict header is written. The
//! shard's sequence verdict (new / gap / reset) is not sent: a consumer derives
//! it from `sequence`, and each header is one allocation in librdkafka (with
//! five headers the batcher measured ~20% slower, docs/figures.md). Partitioner `murmur2_random`: the same
//! partition for a key as the Java client.
//!
//! **Batching**: a DAPB buffer per class (latency, throughput, adaptive) holds
//! copies of popped records in a reused arena; it is released into the producer
//! when it reaches B(t), when its oldest message waited T(t), or at once when its
//! urgency passes U_th. librdkafka's own linger is 0.1 ms: long enough that a
//! released buffer leaves as one produce request, short against T(t).
//!
//! **Circuit breaker**: *closed* — records go to DAPB buffers and librdkafka;
//! *open* — records go to the journal. It opens when librdkafka reports all
//! brokers down or holds more than `queue_high_water` messages. While open, and
//! once librdkafka holds no direct message any more (they are older and go
//! first) and its statistics show a broker up, the journal replays with a bounded
//! window; a failed replayed delivery rewinds the replay (acknowledged records
//! are skipped). It closes when the journal is empty.
//!
//! **Delivery accounting** (delivery reports decide, never `flush()`):
//! `accepted + recovered = delivered + buffered + in_flight + journaled +
//! dropped_journal_full + dropped_rejected + journal_lost`, checked by tests.
//!
//! **Stop**: buffers are released, delivery awaited up to `shutdown_flush_ms`,
//! then librdkafka's queue is purged and every purged message goes to the
//! journal ahead of what is there, the journal is fsynced. A SIGKILL can lose
//! what librdkafka held (at most `queue_high_water` messages and in-flight
//! requests) plus the journal's unsubmitted buffer (≤ 1 MiB).

pub mod consume;
pub use crate::dapb;
pub mod journal;
pub mod native;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext, PurgeConfig};
use rdkafka::ClientContext;

use crate::config::Kafka as KafkaConfig;
use crate::handoff::{RecordMeta, RecordRx};
use crate::telemetry::Published;
use dapb::{Class, Conditions, Metrics, Params, Release};
use journal::{Journal, JournalConfig, JournalError, JournalStats};

/// Opaque bit: the message came from the journal (low bits: its token).
const FROM_JOURNAL: usize = 1 << 63;
/// Opaque bit: urgent (direct messages).
const URGENT: usize = 1 << 62;
const ORD_MASK: usize = URGENT - 1;

/// Why the Kafka output could not start.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// librdkafka refused the producer configuration.
    #[error("Kafka producer: {0} (check [output.kafka] and [output.kafka.librdkafka])")]
    Producer(#[source] KafkaError),
    /// The journal could not be opened or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The native client could not start or run.
    #[error(transparent)]
    Native(#[from] native::NativeError),
    /// `[output.kafka.security]` names a file that cannot be used, or the
    /// broker refused klais's credentials or certificate at start.
    #[error(transparent)]
    Security(#[from] native::secure::SecurityError),
}

/// State of the circuit breaker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Breaker {
    /// Records go to librdkafka.
    #[default]
    Closed,
    /// Records go to the journal.
    Open,
}

/// What the batcher publishes every tick (and returns at the end).
#[derive(Debug, Clone, Copy, Default)]
pub struct KafkaSnapshot {
    /// Records taken from the shard rings.
    pub accepted: u64,
    /// Their payload bytes.
    pub accepted_bytes: u64,
    /// Records found in the journal at start (an earlier run's).
    pub recovered: u64,
    /// Delivery reports saying delivered.
    pub delivered: u64,
    /// In DAPB buffers, not yet given to librdkafka.
    pub buffered: u64,
    /// Given to librdkafka directly, no delivery report yet.
    pub in_flight: u64,
    /// Waiting in the journal (including replayed ones not yet acknowledged).
    pub journaled: u64,
    /// Dropped: the journal's disk budget was exhausted.
    pub dropped_journal_full: u64,
    /// Dropped: the broker refused the record permanently (too large, not
    /// authorised, invalid).
    pub dropped_rejected: u64,
    /// Dropped: journal records lost to damage.
    pub journal_lost: u64,
    /// Journal records sent again (replay), cumulative.
    pub replayed: u64,
    /// Replayed deliveries that failed (each rewinds the replay).
    pub replay_failures: u64,
    /// Times the breaker opened.
    pub breaker_opens: u64,
    /// Breaker state.
    pub breaker: Breaker,
    /// librdkafka's statistics show a broker up.
    pub broker_up: bool,
    /// DAPB parameters now.
    pub params: Option<Params>,
    /// C(t) now.
    pub conditions: Conditions,
    /// DAPB metrics (§5).
    pub dapb: Metrics,
    /// Added latency (ring → delivery report), µs: P50, P99, P99.9, max, count,
    /// sum;
    /// normal class.
    pub latency_normal_us: [u64; 6],
    /// The same for urgent messages.
    pub latency_urgent_us: [u64; 6],
    /// Delivery round trip (handed to librdkafka → delivery report), µs, all
    /// direct messages: the broker's and librdkafka's share of the above.
    pub rtt_us: [u64; 6],
    /// Batcher thread CPU time, ns.
    pub cpu_ns: u64,
    /// Journal counters.
    pub journal: JournalStats,
    /// Dropped: not delivered when a stop's flush time ran out (the native
    /// client, which has no journal yet).
    pub dropped_at_stop: u64,
    /// Batches sent again after a retriable error (native client).
    pub retries: u64,
    /// Producer ids asked for again (unknown or fenced; native client).
    pub producer_resets: u64,
    /// Broker responses that could not be decoded (native client).
    pub bad_responses: u64,
    /// Connections closed because the broker did not answer in time (native
    /// client).
    pub request_timeouts: u64,
    /// Connections refused by TLS (certificate, handshake) or SASL
    /// (mechanism, credentials) (native client).
    pub auth_failures: u64,
    /// Produce requests sent (native client): batches per request is what
    /// the output core's cost per message follows.
    pub produce_requests: u64,
    /// The send system calls that carried them and every other request
    /// (native client).
    pub sends: u64,
    /// The native client made these figures (latency is then measured from
    /// a batch's first receive to its acknowledgement).
    pub native: bool,
}

impl KafkaSnapshot {
    /// Both sides of the accounting identity (they must be equal).
    pub fn reconcile(&self) -> (u64, u64) {
        (
            self.accepted + self.recovered,
            self.delivered
                + self.buffered
                + self.in_flight
                + self.journaled
                + self.dropped_journal_full
                + self.dropped_rejected
                + self.journal_lost
                + self.dropped_at_stop,
        )
    }

    /// Records lost after acceptance, every reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_journal_full + self.dropped_rejected + self.journal_lost + self.dropped_at_stop
    }

    /// Batcher CPU per accepted message, ns.
    pub fn cpu_ns_per_msg(&self) -> f64 {
        self.cpu_ns as f64 / (self.accepted + self.recovered).max(1) as f64
    }
}

#[derive(Default)]
struct Reports {
    ok: Vec<(usize, u64)>,
    failed: Vec<(usize, RDKafkaErrorCode, Vec<u8>)>,
}

#[derive(Default, Clone, Copy)]
struct BrokerStats {
    up: bool,
    txmsgs: u64,
    txretries: u64,
    txerrs: u64,
    waitresp: u64,
    fresh: bool,
}

/// librdkafka callbacks. All run inside `poll` on the batcher thread except
/// logging; the locks are uncontended.
struct Ctx {
    /// Monotonic time of the current poll (delivery reports are stamped with
    /// it: one clock read per poll, not per message).
    now: AtomicU64,
    reports: Mutex<Reports>,
    all_down: AtomicBool,
    /// The idempotent producer has its producer id (statistics say so).
    pid_assigned: AtomicBool,
    stats: Mutex<BrokerStats>,
    /// TLS handshakes and SASL exchanges that failed, and the last reason.
    auth_failures: AtomicU64,
    last_auth_failure: Mutex<Option<(RDKafkaErrorCode, String)>>,
}

/// A TLS or SASL refusal: librdkafka's authentication and SSL errors, and a
/// transport failure that OpenSSL explains (a TLS 1.3 server's alert, such
/// as "certificate required", arrives after the handshake, as a failed read).
fn is_refusal(code: RDKafkaErrorCode, reason: &str) -> bool {
    match code {
        RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL => true,
        RDKafkaErrorCode::BrokerTransportFailure => {
            reason.contains("SSL routines") || reason.contains("SSL alert")
        }
        _ => false,
    }
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            if !self.all_down.swap(true, Ordering::Relaxed) {
                tracing::warn!("Kafka: all brokers down ({reason}); spilling to the journal");
            }
        } else if let Some(c) = code.filter(|&c| is_refusal(c, reason)) {
            // Logged when the reason changes (librdkafka's timing suffix,
            // "(after N ms in state …)", aside): a refused credential is
            // retried at every reconnect backoff.
            let n = self.auth_failures.fetch_add(1, Ordering::Relaxed);
            let mut last = self
                .last_auth_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let gist = |r: &str| r.split(" (after ").next().unwrap_or(r).to_string();
            if n == 0 || last.as_ref().map(|(_, r)| gist(r)) != Some(gist(reason)) {
                tracing::error!("Kafka: {error}: {reason} (check [output.kafka.security])");
            }
            *last = Some((c, reason.to_string()));
        } else {
            tracing::warn!("Kafka: {error}: {reason}");
        }
    }

    fn stats_raw(&self, json: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
            return;
        };
        let mut s = BrokerStats {
            txmsgs: v["txmsgs"].as_u64().unwrap_or(0),
            fresh: true,
            ..BrokerStats::default()
        };
        if let Some(brokers) = v["brokers"].as_object() {
            for b in brokers.values() {
                s.up |= b["state"].as_str() == Some("UP");
                s.txretries += b["txretries"].as_u64().unwrap_or(0);
                s.txerrs += b["txerrs"].as_u64().unwrap_or(0);
                s.txerrs += b["req_timeouts"].as_u64().unwrap_or(0);
                s.waitresp += b["waitresp_msg_cnt"].as_u64().unwrap_or(0);
            }
        }
        if s.up {
            self.all_down.store(false, Ordering::Relaxed);
        }
        if v["eos"]["idemp_state"].as_str() == Some("Assigned") {
            self.pid_assigned.store(true, Ordering::Relaxed);
        }
        *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;

    fn delivery(&self, r: &DeliveryResult<'_>, opaque: usize) {
        let now = self.now.load(Ordering::Relaxed);
        let mut rep = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Ok(_) => rep.ok.push((opaque, now)),
            Err((e, msg)) => {
                let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
                // Direct messages exist nowhere else: keep the payload.
                let payload = if opaque & FROM_JOURNAL == 0 {
                    msg.payload().unwrap_or(&[]).to_vec()
                } else {
                    Vec::new()
                };
                rep.failed.push((opaque, code, payload));
            }
        }
    }
}

/// P50, P99, P99.9, max, count and sum of a latency histogram (the
/// snapshot's `[u64; 6]` form; the sum at the histogram's resolution, three
/// significant digits per value, as the mean times the count).
pub(crate) fn summary(h: &Histogram<u64>) -> [u64; 6] {
    [
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        h.len(),
        (h.mean() * h.len() as f64).round() as u64,
    ]
}

/// Monotonic clock, ns.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time of the calling thread, ns.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Clone, Copy)]
struct Entry {
    meta: RecordMeta,
    off: u32,
    len: u32,
    popped: u64,
    urgent: bool,
}

#[derive(Default)]
struct Buffer {
    arena: Vec<u8>,
    entries: Vec<Entry>,
    urgent: u64,
}

/// What the batcher keeps about a message librdkafka holds (a slab entry;
/// its index travels as the delivery opaque, freed by the delivery report).
#[derive(Clone, Copy, Default)]
struct Slot {
    meta: RecordMeta,
    popped: u64,
    sent: u64,
    /// Send order (messages given back are journaled oldest first).
    ord: u64,
}

fn dec(buf: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

fn key_of(meta: &RecordMeta) -> &[u8] {
    let len = meta.raw_id.iter().position(|&b| b == 0).unwrap_or(16);
    &meta.raw_id[..len]
}

/// librdkafka's TLS and SASL properties for `[output.kafka.security]` (the
/// password read from its file, which must be private). The producer and
/// `klais kafka consume` both use it.
pub fn security_config(
    sec: &crate::config::Security,
    c: &mut ClientConfig,
) -> Result<(), native::secure::SecurityError> {
    c.set("security.protocol", &sec.protocol);
    if sec.tls() {
        // The broker's certificate must chain to the CA and name the host
        // klais connected to (librdkafka's default; set so no pass-through
        // property can turn it off).
        c.set("ssl.endpoint.identification.algorithm", "https")
            .set("enable.ssl.certificate.verification", "true");
        if let Some(ca) = &sec.ca_file {
            c.set("ssl.ca.location", ca.to_string_lossy());
        }
        if let (Some(cert), Some(key)) = (&sec.cert_file, &sec.key_file) {
            native::secure::check_private("key_file", key)?;
            c.set("ssl.certificate.location", cert.to_string_lossy())
                .set("ssl.key.location", key.to_string_lossy());
        }
    }
    if sec.oauth() {
        // OpenID Connect client credentials: librdkafka fetches and renews
        // the token itself (libcurl), on the thread that polls it.
        let secret = native::secure::read_secret(
            "oauth_client_secret_file",
            sec.oauth_client_secret_file.as_deref(),
        )?;
        c.set("sasl.mechanisms", "OAUTHBEARER")
            .set("sasl.oauthbearer.method", "oidc")
            .set("sasl.oauthbearer.client.id", &sec.oauth_client_id)
            .set("sasl.oauthbearer.client.secret", secret)
            .set(
                "sasl.oauthbearer.token.endpoint.url",
                sec.oauth_token_endpoint.as_deref().unwrap_or(""),
            );
        if let Some(scope) = &sec.oauth_scope {
            c.set("sasl.oauthbearer.scope", scope);
        }
    } else if sec.sasl() {
        let password = native::secure::read_password(sec)?;
        c.set("sasl.mechanisms", &sec.sasl_mechanism)
            .set("sasl.username", &sec.sasl_username)
            .set("sasl.password", password);
    }
    Ok(())
}

/// The producer's librdkafka configuration for `cfg`.
pub fn client_config(
    cfg: &KafkaConfig,
    gateway: &str,
) -> Result<ClientConfig, native::secure::SecurityError> {
    let mut c = ClientConfig::new();
    for (k, v) in &cfg.librdkafka {
        c.set(k, v);
    }
    security_config(&cfg.security, &mut c)?;
    if cfg.compression == "zstd" {
        c.set("compression.level", cfg.zstd_level.to_string());
    }
    let batch = cfg.dapb.b_max_bytes.max(1_000_000);
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", format!("klais-{gateway}"))
        .set("acks", &cfg.acks)
        .set("enable.idempotence", cfg.idempotence.to_string())
        .set("compression.type", &cfg.compression)
        .set(
            "max.in.flight.requests.per.connection",
            cfg.max_in_flight.to_string(),
        )
        .set(
            "queue.buffering.max.messages",
            (u64::from(cfg.queue_high_water) * 2).to_string(),
        )
        .set("queue.buffering.max.kbytes", "2097151")
        .set("linger.ms", "0.1")
        .set("batch.num.messages", "1000000")
        .set("batch.size", batch.to_string())
        .set("message.timeout.ms", "0")
        .set("partitioner", "murmur2_random")
        .set("statistics.interval.ms", "250");
    Ok(c)
}

/// The batching core.
pub struct Batcher {
    producer: BaseProducer<Ctx>,
    /// librdkafka topic handle (destroyed in Drop, before the producer).
    rkt: *mut rdkafka::bindings::rd_kafka_topic_t,
    gateway: Vec<u8>,
    dapb_cfg: crate::config::Dapb,
    default_class: Class,
    classes: HashMap<[u8; 16], (bool, bool)>,
    high_water: u64,
    shutdown_flush: Duration,
    journal: Journal,
    buffers: [Buffer; 3],
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    next_ord: u64,
    /// Messages librdkafka gave back, waiting to go ahead of the journal once
    /// librdkafka holds no older one.
    returned: Vec<(u64, RecordMeta, Vec<u8>)>,
    params: Params,
    cond: Conditions,
    last_stats: BrokerStats,
    reports_total: u64,
    reports_at_stats: u64,
    breaker: Breaker,
    direct_in_flight: u64,
    replay_in_flight: u64,
    replay_window: u64,
    replay_failed: bool,
    replay_pause_until: u64,
    reports: Reports,
    hist_normal: Histogram<u64>,
    hist_urgent: Histogram<u64>,
    hist_rtt: Histogram<u64>,
    snap: KafkaSnapshot,
    cpu_at_start: u64,
    last_log_full: u64,
    full_since_log: u64,
    fatal_logged: bool,
}

impl Batcher {
    /// Builds the producer and opens the journal (records left by an earlier
    /// run are replayed first).
    pub fn new(cfg: &KafkaConfig) -> Result<Batcher, OutputError> {
        let gateway = cfg.gateway_id.clone().unwrap_or_else(hostname);
        let ctx = Ctx {
            now: AtomicU64::new(mono_ns()),
            reports: Mutex::new(Reports::default()),
            all_down: AtomicBool::new(false),
            pid_assigned: AtomicBool::new(false),
            stats: Mutex::new(BrokerStats::default()),
            auth_failures: AtomicU64::new(0),
            last_auth_failure: Mutex::new(None),
        };
        let producer: BaseProducer<Ctx> = client_config(cfg, &gateway)?
            .create_with_context(ctx)
            .map_err(OutputError::Producer)?;
        // Connect now (up to 3 s): the first messages then do not wait for it,
        // and the operator learns at start whether the broker and the topic are
        // there. Neither is required: without them klais spills.
        match producer
            .client()
            .fetch_metadata(Some(&cfg.topic), Duration::from_secs(3))
        {
            Ok(md) => match md.topics().iter().find(|t| t.name() == cfg.topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    // An idempotent producer sends nothing before it has its
                    // producer id: wait for it here (up to 3 s), not with the
                    // first messages.
                    let t0 = Instant::now();
                    while cfg.idempotence
                        && !producer.context().pid_assigned.load(Ordering::Relaxed)
                        && t0.elapsed() < Duration::from_secs(3)
                    {
                        producer.poll(Duration::ZERO);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    tracing::info!(
                        brokers = %cfg.brokers,
                        topic = %cfg.topic,
                        partitions = t.partitions().len(),
                        ready_ms = t0.elapsed().as_millis() as u64,
                        "Kafka broker reachable"
                    )
                }
                _ => tracing::warn!(
                    brokers = %cfg.brokers,
                    topic = %cfg.topic,
                    "the broker does not have the topic (create it, or let the broker create topics on demand); messages wait in librdkafka and the journal"
                ),
            },
            Err(e) => {
                // A broker that refuses klais's credentials or certificate is
                // a configuration error, not an outage: stop here and say
                // which key. librdkafka reports it through the error
                // callback, served by poll.
                for _ in 0..10 {
                    producer.poll(Duration::from_millis(20));
                }
                let refused = producer
                    .context()
                    .last_auth_failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if let Some((code, reason)) = refused {
                    let sec = &cfg.security;
                    let who = if sec.oauth() {
                        sec.oauth_client_id.as_str()
                    } else {
                        sec.sasl_username.as_str()
                    };
                    let sasl = (code == RDKafkaErrorCode::Authentication)
                        .then_some((sec.sasl_mechanism.as_str(), who));
                    // OpenSSL's reason does not say why it did not verify:
                    // one handshake with rustls does.
                    let why = if reason.contains("verify failed") {
                        let first = cfg.brokers.split(',').next().unwrap_or("").trim();
                        native::secure::diagnose_tls(sec, first)
                            .map_or(reason.clone(), |d| format!("{reason}; checked again: {d}"))
                    } else {
                        reason
                    };
                    return Err(native::secure::refusal(&why, sasl).into());
                }
                tracing::warn!(
                    brokers = %cfg.brokers,
                    "Kafka broker not reachable at start ({e}); accepted messages will wait in the spill journal"
                )
            }
        }
        // The journal first: if it cannot open, nothing below needs undoing.
        journal::claim(&cfg.journal.dir, "librdkafka")?;
        let journal = Journal::open(JournalConfig::from_config(&cfg.journal))?;
        let topic = std::ffi::CString::new(cfg.topic.as_str())
            .map_err(|e| OutputError::Producer(KafkaError::from(e)))?;
        // SAFETY: a valid client and NUL-terminated name; NULL conf = defaults.
        let rkt = unsafe {
            rdkafka::bindings::rd_kafka_topic_new(
                producer.client().native_ptr(),
                topic.as_ptr(),
                std::ptr::null_mut(),
            )
        };
        if rkt.is_null() {
            return Err(OutputError::Producer(KafkaError::ClientCreation(format!(
                "librdkafka refused topic {:?}",
                cfg.topic
            ))));
        }

        let classes =
            crate::shard::produce::device_classes(&cfg.urgent_devices, &cfg.latency_devices);
        let high_water = u64::from(cfg.queue_high_water);
        let cond = Conditions::default();
        let mut snap = KafkaSnapshot {
            recovered: journal.stats().recovered,
            ..KafkaSnapshot::default()
        };
        let breaker = if journal.outstanding() > 0 {
            tracing::info!(
                records = journal.outstanding(),
                "spill journal holds records from an earlier run: they are delivered first"
            );
            Breaker::Open
        } else {
            Breaker::Closed
        };
        snap.breaker = breaker;
        let hist = || Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
        Ok(Batcher {
            rkt,
            producer,
            gateway: gateway.into_bytes(),
            params: Params::compute(&cfg.dapb, &cond),
            dapb_cfg: cfg.dapb.clone(),
            default_class: Class::from_name(&cfg.default_class),
            classes,
            high_water,
            shutdown_flush: Duration::from_millis(cfg.shutdown_flush_ms),
            journal,
            buffers: Default::default(),
            slots: vec![Slot::default(); (high_water * 2 + 1024) as usize],
            free_slots: (0..(high_water * 2 + 1024) as u32).rev().collect(),
            next_ord: 0,
            returned: Vec::new(),
            cond,
            last_stats: BrokerStats::default(),
            reports_total: 0,
            reports_at_stats: 0,
            breaker,
            direct_in_flight: 0,
            replay_in_flight: 0,
            replay_window: (high_water / 2).max(1000),
            replay_failed: false,
            replay_pause_until: 0,
            reports: Reports::default(),
            hist_normal: hist(),
            hist_urgent: hist(),
            hist_rtt: hist(),
            snap,
            cpu_at_start: thread_cpu_ns(),
            last_log_full: 0,
            full_since_log: 0,
            fatal_logged: false,
        })
    }

    /// Takes one record from a shard ring.
    pub fn accept(&mut self, meta: &RecordMeta, payload: &[u8], now: u64) {
        self.snap.accepted += 1;
        self.snap.accepted_bytes += payload.len() as u64;
        if self.breaker == Breaker::Open {
            self.spill(meta, payload);
            return;
        }
        let (urgent, latency) = if self.classes.is_empty() {
            (false, false)
        } else {
            self.classes
                .get(&meta.raw_id)
                .copied()
                .unwrap_or((false, false))
        };
        // A v2 device may flag a message urgent itself.
        let urgent = urgent || meta.flags & crate::handoff::FLAG_URGENT != 0;
        let class = if latency {
            Class::Latency
        } else {
            self.default_class
        };
        let b = &mut self.buffers[class as usize];
        let off = b.arena.len() as u32;
        b.arena.extend_from_slice(payload);
        b.entries.push(Entry {
            meta: *meta,
            off,
            len: payload.len() as u32,
            popped: now,
            urgent,
        });
        b.urgent += u64::from(urgent);
        self.snap.buffered += 1;
        let bytes = b.arena.len() as u64;
        let n = b.entries.len() as u64;
        if let Some(why) = dapb::release(&self.params, class, bytes, n, b.urgent, 0) {
            self.release(class, why, now);
        }
    }

    fn spill(&mut self, meta: &RecordMeta, payload: &[u8]) {
        match self.journal.append(meta, payload) {
            Ok(()) => {}
            Err(journal::JournalFull) => {
                self.snap.dropped_journal_full += 1;
                self.full_since_log += 1;
                let now = mono_ns();
                if now.saturating_sub(self.last_log_full) > 1_000_000_000 {
                    tracing::error!(
                        dropped = self.full_since_log,
                        total = self.snap.dropped_journal_full,
                        budget = ?self.journal.stats().bytes,
                        "spill journal full (output.kafka.journal.budget_bytes): accepted messages DROPPED"
                    );
                    self.last_log_full = now;
                    self.full_since_log = 0;
                }
            }
        }
    }

    /// Hands one record to librdkafka: `rd_kafka_producev` on a topic handle
    /// made once (rdkafka's `send` builds a C string of the topic name per
    /// message), headers built in place (copied by librdkafka).
    fn send(
        &self,
        meta: &RecordMeta,
        payload: &[u8],
        opaque: usize,
    ) -> Result<(), RDKafkaErrorCode> {
        send_raw(
            self.producer.client().native_ptr(),
            self.rkt,
            &self.gateway,
            meta,
            payload,
            opaque,
        )
    }

    /// Gives a DAPB buffer to librdkafka.
    fn release(&mut self, class: Class, why: Release, now: u64) {
        let mut b = std::mem::take(&mut self.buffers[class as usize]);
        let n = b.entries.len() as u64;
        let bytes = b.arena.len() as u64;
        self.snap
            .dapb
            .on_release(why, n, bytes, self.params.buffer_bytes(class));
        for e in b.entries.drain(..) {
            self.snap.buffered -= 1;
            let payload = &b.arena[e.off as usize..(e.off + e.len) as usize];
            if self.breaker == Breaker::Open {
                self.spill(&e.meta, payload);
                continue;
            }
            // A slot per message librdkafka holds: never reused before its
            // delivery report (there are more slots than librdkafka's queue).
            let Some(slot) = self.free_slots.pop() else {
                self.open_breaker("every delivery slot in use");
                self.spill(&e.meta, payload);
                continue;
            };
            let opaque = slot as usize | if e.urgent { URGENT } else { 0 };
            self.slots[slot as usize] = Slot {
                meta: e.meta,
                popped: e.popped,
                sent: now,
                ord: self.next_ord,
            };
            self.next_ord += 1;
            match self.send(&e.meta, payload, opaque) {
                Ok(()) => {
                    self.direct_in_flight += 1;
                    if self.direct_in_flight > self.high_water {
                        self.open_breaker("librdkafka queue above output.kafka.queue_high_water");
                    }
                }
                Err(e2) => {
                    self.free_slots.push(slot);
                    tracing::debug!("produce refused: {e2}");
                    self.open_breaker("librdkafka refused a message (queue full)");
                    self.spill(&e.meta, payload);
                }
            }
        }
        b.arena.clear();
        b.urgent = 0;
        self.buffers[class as usize] = b;
    }

    fn open_breaker(&mut self, why: &str) {
        if self.breaker == Breaker::Open {
            return;
        }
        self.breaker = Breaker::Open;
        self.snap.breaker_opens += 1;
        tracing::warn!(
            in_flight = self.direct_in_flight,
            "circuit breaker open ({why}): accepted messages go to the spill journal"
        );
        // What waits in DAPB buffers is older than anything accepted from now
        // on: it goes to the journal first, so no device is reordered.
        self.drain_buffers(mono_ns());
    }

    /// Releases buffers whose T(t) expired.
    fn release_due(&mut self, now: u64) {
        for class in [Class::Latency, Class::Throughput, Class::Adaptive] {
            let b = &self.buffers[class as usize];
            let Some(first) = b.entries.first() else {
                continue;
            };
            let age_us = now.saturating_sub(first.popped) / 1000;
            let why = dapb::release(
                &self.params,
                class,
                b.arena.len() as u64,
                b.entries.len() as u64,
                b.urgent,
                age_us,
            );
            if let Some(why) = why {
                self.release(class, why, now);
            }
        }
    }

    /// Earliest time a buffer's timeout expires (ns), if any is waiting.
    fn next_deadline(&self) -> Option<u64> {
        self.buffers
            .iter()
            .filter_map(|b| b.entries.first())
            .map(|e| e.popped + self.params.t_us * 1000)
            .min()
    }

    fn drain_buffers(&mut self, now: u64) {
        for class in [Class::Latency, Class::Throughput, Class::Adaptive] {
            if !self.buffers[class as usize].entries.is_empty() {
                self.release(class, Release::Drain, now);
            }
        }
    }

    /// Serves librdkafka's events (delivery reports, statistics, errors) and
    /// processes the reports.
    fn poll_producer(&mut self, wait: Duration) {
        // rdkafka's timed poll spins on the clock for the sub-millisecond rest
        // of any timeout (librdkafka waits in whole ms): poll without waiting
        // and sleep here instead, at most 200 µs so a new urgent message is
        // seen soon (an idle batcher wakes 5,000 times a second, ~1% of a core).
        let ctx = self.producer.context();
        ctx.now.store(mono_ns(), Ordering::Relaxed);
        self.producer.poll(Duration::ZERO);
        if !wait.is_zero() {
            std::thread::sleep(wait.min(Duration::from_micros(200)));
        }
        for _ in 0..16 {
            if self.producer.in_flight_count() == 0 {
                break;
            }
            let before = self.report_count();
            self.producer
                .context()
                .now
                .store(mono_ns(), Ordering::Relaxed);
            self.producer.poll(Duration::ZERO);
            if self.report_count() == before {
                break;
            }
        }
        self.process_reports();
    }

    fn report_count(&self) -> usize {
        let r = self
            .producer
            .context()
            .reports
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        r.ok.len() + r.failed.len()
    }

    fn process_reports(&mut self) {
        {
            let mut r = self
                .producer
                .context()
                .reports
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *r, &mut self.reports);
        }
        let mut ok = std::mem::take(&mut self.reports.ok);
        self.reports_total += (ok.len() + self.reports.failed.len()) as u64;
        for &(opaque, now) in &ok {
            self.snap.delivered += 1;
            if opaque & FROM_JOURNAL != 0 {
                self.replay_in_flight -= 1;
                self.journal.ack((opaque & !FROM_JOURNAL) as u64);
            } else {
                self.direct_in_flight -= 1;
                let idx = opaque & ORD_MASK;
                let s = self.slots[idx];
                self.free_slots.push(idx as u32);
                let added = now.saturating_sub(s.popped) / 1000;
                if opaque & URGENT != 0 {
                    let _ = self.hist_urgent.record(added.max(1));
                } else {
                    let _ = self.hist_normal.record(added.max(1));
                }
                let rtt = now.saturating_sub(s.sent) / 1000;
                let _ = self.hist_rtt.record(rtt.max(1));
                self.cond.on_rtt(rtt as f64);
            }
        }
        ok.clear();
        self.reports.ok = ok;
        let mut failed = std::mem::take(&mut self.reports.failed);
        for (opaque, code, payload) in failed.drain(..) {
            if code == RDKafkaErrorCode::Fatal && !self.fatal_logged {
                self.fatal_logged = true;
                tracing::error!("librdkafka's producer failed fatally (idempotence fenced?): nothing more is delivered; messages go to the journal; restart klais");
            }
            if opaque & FROM_JOURNAL != 0 {
                self.replay_in_flight -= 1;
                self.snap.replay_failures += 1;
                if is_permanent(code) {
                    // Never deliverable: sending it again would block the
                    // journal for good. Dropped, counted, said.
                    self.journal.ack((opaque & !FROM_JOURNAL) as u64);
                    self.snap.dropped_rejected += 1;
                    tracing::error!(error = %code, "the broker refused a journaled record permanently: DROPPED (counted as rejected)");
                } else {
                    self.replay_failed = true;
                }
                continue;
            }
            self.direct_in_flight -= 1;
            let idx = opaque & ORD_MASK;
            let s = self.slots[idx];
            self.free_slots.push(idx as u32);
            if is_permanent(code) {
                self.snap.dropped_rejected += 1;
                tracing::error!(device = s.meta.device_id(), sequence = s.meta.sequence, error = %code, "the broker refused a record permanently: DROPPED (counted as rejected)");
            } else {
                self.returned.push((s.ord, s.meta, payload));
            }
        }
        self.reports.failed = failed;
        if !self.returned.is_empty() {
            self.open_breaker("librdkafka gave messages back");
            if self.direct_in_flight == 0 {
                self.journal_returned();
            }
        }
    }

    /// Writes the messages librdkafka gave back ahead of the journal, oldest
    /// first, in one segment (once librdkafka holds none older).
    fn journal_returned(&mut self) {
        if self.returned.is_empty() {
            return;
        }
        let mut ret = std::mem::take(&mut self.returned);
        ret.sort_by_key(|r| r.0);
        let recs: Vec<(RecordMeta, Vec<u8>)> = ret.into_iter().map(|(_, m, p)| (m, p)).collect();
        let n = recs.len() as u64;
        if let Err(e) = self.journal.prepend(&recs) {
            tracing::error!(records = n, error = %e, "cannot journal records librdkafka gave back: DROPPED");
            self.snap.dropped_journal_full += n;
        }
    }

    /// The circuit breaker and the replay.
    fn breaker_step(&mut self, now: u64) {
        let all_down = self.producer.context().all_down.load(Ordering::Relaxed);
        if self.breaker == Breaker::Closed {
            if all_down {
                self.open_breaker("all brokers down");
            }
            return;
        }
        let healthy = self.last_stats.up && !all_down;
        if self.replay_failed {
            if self.replay_in_flight == 0 {
                self.journal.rewind();
                self.replay_failed = false;
                self.replay_pause_until = now + 500_000_000;
            }
            return;
        }
        if healthy && self.direct_in_flight == 0 && now >= self.replay_pause_until {
            let (rk, rkt) = (self.producer.client().native_ptr(), self.rkt);
            while self.replay_in_flight < self.replay_window {
                let Some((token, meta, payload)) = self.journal.next_record() else {
                    break;
                };
                if send_raw(
                    rk,
                    rkt,
                    &self.gateway,
                    &meta,
                    payload,
                    token as usize | FROM_JOURNAL,
                )
                .is_err()
                {
                    // Queue full: replay from the first unacknowledged record
                    // once in-flight ones settle.
                    self.replay_failed = true;
                    break;
                }
                self.replay_in_flight += 1;
                self.snap.replayed += 1;
            }
        }
        if self.journal.outstanding() == 0
            && self.replay_in_flight == 0
            && !all_down
            && self.direct_in_flight <= self.high_water / 2
        {
            self.breaker = Breaker::Closed;
            tracing::info!(
                replayed = self.snap.replayed,
                "circuit breaker closed: journal delivered"
            );
        }
    }

    fn stats_step(&mut self) {
        let s = {
            let mut g = self
                .producer
                .context()
                .stats
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let s = *g;
            g.fresh = false;
            s
        };
        if !s.fresh {
            return;
        }
        // ρ(t): messages transmitted more than once (librdkafka re-sends a
        // failed batch inside the producer, so it never reaches a delivery
        // report): transmissions minus completions minus the growth of
        // messages awaiting a response in the window, plus request errors,
        // retries and timeouts.
        let sent = s.txmsgs.saturating_sub(self.last_stats.txmsgs);
        let completed = self.reports_total - self.reports_at_stats;
        self.reports_at_stats = self.reports_total;
        let awaiting = s.waitresp as i64 - self.last_stats.waitresp as i64;
        let failed = (sent as i64 - completed as i64 - awaiting).max(0) as u64
            + (s.txretries + s.txerrs)
                .saturating_sub(self.last_stats.txretries + self.last_stats.txerrs);
        self.cond.on_window(sent, failed.min(sent));
        self.last_stats = s;
        self.params = Params::compute(&self.dapb_cfg, &self.cond);
    }

    /// One round: pop from every ring, release, poll, breaker, journal. Returns
    /// the records taken.
    pub fn step(&mut self, rings: &mut [RecordRx]) -> usize {
        let mut got = 0;
        let now = mono_ns();
        for rx in rings.iter_mut() {
            for _ in 0..1024 {
                let Some((meta, payload)) = rx.pop() else {
                    break;
                };
                self.accept(&meta, payload, now);
                got += 1;
            }
        }
        let now = mono_ns();
        self.release_due(now);
        let wait = if got == 0 {
            let until = self
                .next_deadline()
                .map_or(1_000_000, |d| d.saturating_sub(now));
            Duration::from_nanos(until.min(200_000))
        } else {
            Duration::ZERO
        };
        self.poll_producer(wait);
        self.stats_step();
        self.breaker_step(mono_ns());
        self.journal.poll();
        got
    }

    /// The counters now.
    pub fn snapshot(&mut self) -> KafkaSnapshot {
        let q = summary;
        self.snap.in_flight = self.direct_in_flight + self.returned.len() as u64;
        self.snap.journaled = self.journal.outstanding();
        self.snap.broker_up = self.last_stats.up;
        self.snap.params = Some(self.params);
        self.snap.conditions = self.cond;
        self.snap.latency_normal_us = q(&self.hist_normal);
        self.snap.latency_urgent_us = q(&self.hist_urgent);
        self.snap.rtt_us = q(&self.hist_rtt);
        self.snap.cpu_ns = thread_cpu_ns() - self.cpu_at_start;
        self.snap.journal = self.journal.stats();
        self.snap.journal_lost = self.snap.journal.lost;
        self.snap.breaker = self.breaker;
        self.snap.auth_failures = self
            .producer
            .context()
            .auth_failures
            .load(Ordering::Relaxed);
        self.snap
    }

    /// Cheap progress counters: (accepted, buffered, delivered).
    pub fn progress(&self) -> (u64, u64, u64) {
        (self.snap.accepted, self.snap.buffered, self.snap.delivered)
    }

    /// Clears the latency histograms (benchmarks: after warm-up).
    pub fn reset_latency(&mut self) {
        self.hist_normal.reset();
        self.hist_urgent.reset();
        self.hist_rtt.reset();
    }

    /// The added-latency histograms (normal, urgent) and the delivery round
    /// trip, µs.
    pub fn latency(&self) -> (&Histogram<u64>, &Histogram<u64>, &Histogram<u64>) {
        (&self.hist_normal, &self.hist_urgent, &self.hist_rtt)
    }

    /// Stops: releases buffers, waits for delivery up to `shutdown_flush_ms`,
    /// moves what librdkafka still holds into the journal, fsyncs it.
    pub fn shutdown(&mut self) -> Result<KafkaSnapshot, OutputError> {
        let now = mono_ns();
        self.drain_buffers(now);
        let deadline = Instant::now() + self.shutdown_flush;
        while self.direct_in_flight + self.replay_in_flight > 0 && Instant::now() < deadline {
            self.poll_producer(Duration::from_millis(1));
            self.stats_step();
        }
        if self.direct_in_flight + self.replay_in_flight > 0 {
            tracing::warn!(
                direct = self.direct_in_flight,
                replayed = self.replay_in_flight,
                "not delivered within output.kafka.shutdown_flush_ms: moving them to the spill journal"
            );
            self.producer
                .purge(PurgeConfig::default().queue().inflight());
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.direct_in_flight + self.replay_in_flight > 0 && Instant::now() < deadline {
                self.poll_producer(Duration::from_millis(1));
            }
        }
        self.journal_returned();
        self.journal.close()?;
        let s = self.snapshot();
        Ok(s)
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        // SAFETY: made in new(), destroyed once, before the producer (fields
        // drop after this).
        unsafe { rdkafka::bindings::rd_kafka_topic_destroy(self.rkt) };
    }
}

/// `rd_kafka_producev` of one record on topic handle `rkt`.
fn send_raw(
    rk: *mut rdkafka::bindings::rd_kafka_t,
    rkt: *mut rdkafka::bindings::rd_kafka_topic_t,
    gateway: &[u8],
    meta: &RecordMeta,
    payload: &[u8],
    opaque: usize,
) -> Result<(), RDKafkaErrorCode> {
    use rdkafka::bindings as rd;
    use rdkafka::bindings::rd_kafka_vtype_t::*;
    let key = key_of(meta);
    let mut b = [0u8; 20];
    // SAFETY: every pointer is valid for the call; librdkafka copies the
    // payload, key and header values (RD_KAFKA_MSG_F_COPY, header_add) and
    // owns the headers on success; on failure they are destroyed here.
    unsafe {
        let h = rd::rd_kafka_headers_new(5);
        let add = |k: &str, v: &[u8]| {
            rd::rd_kafka_header_add(
                h,
                k.as_ptr().cast(),
                k.len() as isize,
                v.as_ptr().cast(),
                v.len() as isize,
            );
        };
        add("sequence", dec(&mut b, u64::from(meta.sequence)));
        add("recv_ts_ns", dec(&mut b, meta.recv_ts_ns));
        add("gateway", gateway);
        add("shard", dec(&mut b, u64::from(meta.shard)));
        if let Some(class) = meta.model_mark() {
            add("model", class.as_bytes());
        }
        if meta.flags & crate::handoff::FLAG_AUTHENTICATED != 0 {
            add("auth", b"v2");
        }
        let err = rd::rd_kafka_producev(
            rk,
            RD_KAFKA_VTYPE_RKT,
            rkt,
            RD_KAFKA_VTYPE_PARTITION,
            -1i32,
            RD_KAFKA_VTYPE_MSGFLAGS,
            rd::RD_KAFKA_MSG_F_COPY,
            RD_KAFKA_VTYPE_VALUE,
            payload.as_ptr() as *mut std::ffi::c_void,
            payload.len(),
            RD_KAFKA_VTYPE_KEY,
            key.as_ptr() as *mut std::ffi::c_void,
            key.len(),
            RD_KAFKA_VTYPE_OPAQUE,
            opaque as *mut std::ffi::c_void,
            RD_KAFKA_VTYPE_TIMESTAMP,
            (meta.recv_ts_ns / 1_000_000) as i64,
            RD_KAFKA_VTYPE_HEADERS,
            h,
            RD_KAFKA_VTYPE_END,
        );
        if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            Ok(())
        } else {
            rd::rd_kafka_headers_destroy(h);
            Err(err.into())
        }
    }
}

fn is_permanent(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidTimestamp
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::UnsupportedForMessageFormat
    )
}

/// This host's name (the default gateway id).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "klais".into())
}

/// Runs the batcher on the calling (output) thread until every ring is
/// finished, then stops it. `abandon`: give up waiting for rings whose shards
/// never finish.
pub fn run(
    mut b: Batcher,
    mut rings: Vec<RecordRx>,
    published: &Published<KafkaSnapshot>,
    tick: Duration,
    abandon: &AtomicBool,
) -> Result<KafkaSnapshot, OutputError> {
    let mut next_publish = Instant::now() + tick;
    loop {
        let got = b.step(&mut rings);
        if got == 0 && (rings.iter().all(RecordRx::is_finished) || abandon.load(Ordering::Relaxed))
        {
            // One more pass: records published between the pop and the check.
            if b.step(&mut rings) == 0 {
                break;
            }
        }
        let now = Instant::now();
        if now >= next_publish {
            published.publish(b.snapshot());
            next_publish = now + tick;
        }
    }
    let s = b.shutdown()?;
    published.publish(s);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_headers() {
        let mut b = [0u8; 20];
        assert_eq!(dec(&mut b, 0), b"0");
        assert_eq!(dec(&mut b, 1234567890123), b"1234567890123");
        assert_eq!(dec(&mut b, u64::MAX), u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn owned_librdkafka_keys_are_refused_and_others_pass() {
        let mut cfg = KafkaConfig::default();
        cfg.librdkafka.insert("linger.ms".into(), "5".into());
        cfg.librdkafka
            .insert("socket.keepalive.enable".into(), "true".into());
        let mut errs = Vec::new();
        cfg.validate(&mut errs);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].to_string().contains("linger.ms"));
        let c = client_config(&cfg, "gw").unwrap();
        assert_eq!(c.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(c.get("partitioner"), Some("murmur2_random"));
    }
}
