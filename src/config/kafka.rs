//! `[output.kafka]`, `[output.kafka.dapb]`, `[output.kafka.journal]`: the Kafka
//! batching core's settings. Every field's `///` comment is its documentation;
//! `config.toml` carries the same text.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// `[output.kafka]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kafka {
    /// Bootstrap brokers, `host:port[,host:port…]`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Topic every accepted message goes to (it must exist, or the broker must
    /// create topics on demand).
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Value of the `gateway` header. Omitted: this host's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_id: Option<String>,
    /// `"all"` (every in-sync replica), `"1"` (leader only) or `"0"` (none).
    #[serde(default = "default_acks")]
    pub acks: String,
    /// Idempotent producer: retries never duplicate or reorder per partition.
    #[serde(default = "default_true")]
    pub idempotence: bool,
    /// `"lz4"`, `"zstd"`, `"snappy"`, `"gzip"` or `"none"` (both clients).
    #[serde(default = "default_compression")]
    pub compression: String,
    /// How long the native client waits for a broker's answer before it
    /// closes the connection and sends again on a new one, ms.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// zstd level, 1–19 (librdkafka: 1–12).
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// `"native"` (default): the shards encode Kafka record batches and the
    /// output core only sends them. `"librdkafka"`: one librdkafka producer on
    /// the output core, which batches (DAPB) and produces message by message
    /// (docs/kafka.md).
    #[serde(default = "default_client")]
    pub client: String,
    /// Produce requests in flight per broker connection (1–5 keeps order with
    /// idempotence).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Messages waiting in librdkafka beyond which new messages go to the spill
    /// journal instead (the circuit breaker opens). librdkafka's own queue is sized
    /// at twice this.
    #[serde(default = "default_high_water")]
    pub queue_high_water: u32,
    /// How long a stop waits for delivery before moving what is still in
    /// librdkafka's queue into the journal, milliseconds.
    #[serde(default = "default_shutdown_flush_ms")]
    pub shutdown_flush_ms: u64,
    /// Devices whose messages are urgent (DAPB u = 1): the buffer holding one is
    /// sent at once. Device ids as text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urgent_devices: Vec<String>,
    /// Devices in the latency-sensitive class (DAPB L = 1: B(t) = B_min).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_devices: Vec<String>,
    /// Class of every other device: `"adaptive"` (B(t) from eq. 2),
    /// `"latency"` (B_min) or `"throughput"` (B_max).
    #[serde(default = "default_class")]
    pub default_class: String,
    /// Adaptive batching (DAPB) parameters.
    #[serde(default)]
    pub dapb: Dapb,
    /// The spill journal.
    #[serde(default)]
    pub journal: Journal,
    /// TLS and SASL to the brokers (native client).
    #[serde(default)]
    pub security: Security,
    /// Any other librdkafka producer property, passed through as is (for example
    /// `"socket.keepalive.enable" = "true"`). Keys klais sets itself are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub librdkafka: BTreeMap<String, String>,
}

/// `[output.kafka.dapb]`: eq. 1–3 and 6 of the DAPB paper, integer units.
/// B(t) = clamp(B_min + α·RTT + β·ρ + γ·J, B_min, B_max) and
/// T(t) = clamp(T_base + δ·RTT + ε·ρ + ξ·J, T_min, T_max), with RTT and jitter J
/// in milliseconds and the error rate ρ in percent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dapb {
    /// B_min, bytes: the latency class's buffer and the adaptive floor.
    #[serde(default = "default_b_min")]
    pub b_min_bytes: u64,
    /// B_max, bytes: the throughput class's buffer and the adaptive ceiling.
    #[serde(default = "default_b_max")]
    pub b_max_bytes: u64,
    /// T_base, microseconds.
    #[serde(default = "default_t_base")]
    pub t_base_us: u64,
    /// T_min, microseconds.
    #[serde(default = "default_t_min")]
    pub t_min_us: u64,
    /// T_max, microseconds.
    #[serde(default = "default_t_max")]
    pub t_max_us: u64,
    /// α: bytes of buffer per millisecond of delivery RTT.
    #[serde(default = "default_alpha")]
    pub alpha_bytes_per_ms: u64,
    /// β: bytes of buffer per percent of failed or retried sends.
    #[serde(default = "default_beta")]
    pub beta_bytes_per_pct: u64,
    /// γ: bytes of buffer per millisecond of RTT jitter.
    #[serde(default = "default_gamma")]
    pub gamma_bytes_per_ms: u64,
    /// δ: microseconds of timeout per millisecond of delivery RTT.
    #[serde(default = "default_delta")]
    pub delta_us_per_ms: u64,
    /// ε: microseconds of timeout per percent of failed or retried sends.
    #[serde(default = "default_epsilon")]
    pub epsilon_us_per_pct: u64,
    /// ξ: microseconds of timeout per millisecond of RTT jitter.
    #[serde(default = "default_xi")]
    pub xi_us_per_ms: u64,
    /// U_th, percent (eq. 6): a buffer whose share of urgent messages exceeds it
    /// is sent at once. 0: any urgent message sends its buffer.
    #[serde(default)]
    pub urgency_threshold_pct: u8,
}

/// `[output.kafka.journal]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// Directory of the segment files (created, mode 0700).
    #[serde(default = "default_journal_dir")]
    pub dir: PathBuf,
    /// Size at which a segment is closed and the next one begun, bytes.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Disk budget for all segments, bytes. Past it new messages are dropped
    /// (counted as journal_full, logged loudly).
    #[serde(default = "default_budget_bytes")]
    pub budget_bytes: u64,
    /// `"always"` (fsync after every write), `"interval"` (every
    /// `fsync_interval_ms`), `"segment"` (when a segment closes) or `"never"`
    /// (the kernel's writeback).
    #[serde(default = "default_fsync")]
    pub fsync: String,
    /// Period for `fsync = "interval"`, milliseconds.
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
}

/// `[output.kafka.security]`: TLS and SASL on the broker connections, for
/// either client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// `"plaintext"`, `"ssl"` (TLS), `"sasl_plaintext"` or `"sasl_ssl"` (SASL
    /// inside TLS). The native client's TLS is rustls; librdkafka's is
    /// Debian's OpenSSL.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// PEM file of the CA certificates a broker's certificate must chain to.
    /// Omitted: the system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for brokers that ask for one (with
    /// `key_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Name a broker's certificate must carry. Omitted: the host of the broker
    /// address klais connects to (a DNS name or an IP address). Native client
    /// only: librdkafka always checks the broker's own host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// `"SCRAM-SHA-512"`, `"SCRAM-SHA-256"` or `"PLAIN"` (PLAIN sends the
    /// password as is: only inside TLS).
    #[serde(default = "default_mechanism")]
    pub sasl_mechanism: String,
    /// SASL user name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sasl_username: String,
    /// File holding the SASL password (its first line). Kept out of the
    /// configuration so the configuration can be read by more than root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_password_file: Option<PathBuf>,
    /// `sasl_mechanism = "OAUTHBEARER"` (librdkafka): the OpenID Connect
    /// token endpoint klais fetches its tokens from (client credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_token_endpoint: Option<String>,
    /// OAUTHBEARER: the OAuth client id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub oauth_client_id: String,
    /// OAUTHBEARER: file holding the client secret (its first line, mode
    /// 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_client_secret_file: Option<PathBuf>,
    /// OAUTHBEARER: the scope asked for. Omitted: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_scope: Option<String>,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            protocol: default_protocol(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
            sasl_mechanism: default_mechanism(),
            sasl_username: String::new(),
            sasl_password_file: None,
            oauth_token_endpoint: None,
            oauth_client_id: String::new(),
            oauth_client_secret_file: None,
            oauth_scope: None,
        }
    }
}

impl Security {
    /// TLS on the connections.
    pub fn tls(&self) -> bool {
        self.protocol == "ssl" || self.protocol == "sasl_ssl"
    }
    /// SASL on the connections.
    pub fn sasl(&self) -> bool {
        self.protocol.starts_with("sasl_")
    }
    /// SASL with OAUTHBEARER tokens from an OIDC endpoint (librdkafka).
    pub fn oauth(&self) -> bool {
        self.sasl() && self.sasl_mechanism == "OAUTHBEARER"
    }

    fn check(&self, native: bool, errs: &mut Vec<ConfigError>) {
        let k = "output.kafka.security";
        if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&self.protocol.as_str()) {
            errs.push(invalid(
                &format!("{k}.protocol"),
                format!("{:?} is not a security protocol", self.protocol),
                "use \"plaintext\", \"ssl\", \"sasl_plaintext\" or \"sasl_ssl\"",
            ));
            return;
        }
        if self.server_name.is_some() && !native {
            errs.push(invalid(
                &format!("{k}.server_name"),
                "librdkafka checks the name each broker advertises and cannot be given another"
                    .into(),
                "remove server_name (make the brokers' certificates name their advertised hosts), or set output.kafka.client = \"native\"",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            errs.push(invalid(
                &format!("{k}.cert_file, {k}.key_file"),
                "a client certificate needs both its chain and its key".into(),
                "set both or neither",
            ));
        }
        if !self.tls()
            && (self.ca_file.is_some() || self.cert_file.is_some() || self.server_name.is_some())
        {
            errs.push(invalid(
                &format!("{k}.protocol"),
                format!(
                    "TLS files or a server name are set but protocol = {:?} does not use TLS",
                    self.protocol
                ),
                "use protocol = \"ssl\" or \"sasl_ssl\", or remove them",
            ));
        }
        if !["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN", "OAUTHBEARER"]
            .contains(&self.sasl_mechanism.as_str())
        {
            errs.push(invalid(
                &format!("{k}.sasl_mechanism"),
                format!("{:?} is not a mechanism klais supports", self.sasl_mechanism),
                "use \"SCRAM-SHA-512\", \"SCRAM-SHA-256\", \"PLAIN\" or \"OAUTHBEARER\" (librdkafka)",
            ));
        }
        let oauth_keys = self.oauth_token_endpoint.is_some()
            || !self.oauth_client_id.is_empty()
            || self.oauth_client_secret_file.is_some()
            || self.oauth_scope.is_some();
        if self.oauth() {
            self.check_oauth(native, errs);
            return;
        } else if oauth_keys {
            errs.push(invalid(
                &format!("{k}.sasl_mechanism"),
                "oauth_* keys are set but the mechanism is not OAUTHBEARER".into(),
                "set protocol = \"sasl_ssl\" and sasl_mechanism = \"OAUTHBEARER\", or remove them",
            ));
        }
        if self.sasl() {
            if self.sasl_username.is_empty() {
                errs.push(invalid(
                    &format!("{k}.sasl_username"),
                    format!("protocol = {:?} needs a user name", self.protocol),
                    "set sasl_username",
                ));
            }
            if self.sasl_password_file.is_none() {
                errs.push(invalid(
                    &format!("{k}.sasl_password_file"),
                    format!("protocol = {:?} needs a password", self.protocol),
                    "set sasl_password_file to a file (mode 0600) holding the password",
                ));
            }
            if self.sasl_mechanism == "PLAIN" && !self.tls() {
                errs.push(invalid(
                    &format!("{k}.sasl_mechanism"),
                    "PLAIN without TLS sends the password in clear".into(),
                    "use protocol = \"sasl_ssl\", or a SCRAM mechanism",
                ));
            }
        } else if !self.sasl_username.is_empty() || self.sasl_password_file.is_some() {
            errs.push(invalid(
                &format!("{k}.protocol"),
                format!(
                    "SASL credentials are set but protocol = {:?} does not use SASL",
                    self.protocol
                ),
                "use protocol = \"sasl_ssl\" or \"sasl_plaintext\", or remove them",
            ));
        }
    }
}

impl Security {
    /// OAUTHBEARER: librdkafka only, inside TLS, with an endpoint, a client
    /// id and a secret file; no SASL user or password.
    fn check_oauth(&self, native: bool, errs: &mut Vec<ConfigError>) {
        let k = "output.kafka.security";
        if native {
            errs.push(invalid(
                &format!("{k}.sasl_mechanism"),
                "OAUTHBEARER is not spoken by the native client".into(),
                "set output.kafka.client = \"librdkafka\", or use a SCRAM mechanism",
            ));
        }
        if !self.tls() {
            errs.push(invalid(
                &format!("{k}.protocol"),
                "OAUTHBEARER without TLS sends the token in clear".into(),
                "use protocol = \"sasl_ssl\"",
            ));
        }
        match &self.oauth_token_endpoint {
            Some(u) if u.starts_with("https://") || u.starts_with("http://") => {}
            other => errs.push(invalid(
                &format!("{k}.oauth_token_endpoint"),
                format!("{other:?} is not a token endpoint URL"),
                "set oauth_token_endpoint = \"https://idp.example.net/oauth2/token\"",
            )),
        }
        if self.oauth_client_id.is_empty() {
            errs.push(invalid(
                &format!("{k}.oauth_client_id"),
                "OAUTHBEARER needs a client id".into(),
                "set oauth_client_id",
            ));
        }
        if self.oauth_client_secret_file.is_none() {
            errs.push(invalid(
                &format!("{k}.oauth_client_secret_file"),
                "OAUTHBEARER needs the client secret".into(),
                "set oauth_client_secret_file to a file (mode 0600) holding it",
            ));
        }
        if !self.sasl_username.is_empty() || self.sasl_password_file.is_some() {
            errs.push(invalid(
                &format!("{k}.sasl_username"),
                "OAUTHBEARER takes a token, not a user and password".into(),
                "remove sasl_username and sasl_password_file",
            ));
        }
    }
}

/// librdkafka properties klais sets itself (from the keys above or the DAPB).
pub const OWNED_LIBRDKAFKA_KEYS: &[(&str, &str)] = &[
    ("bootstrap.servers", "output.kafka.brokers"),
    ("metadata.broker.list", "output.kafka.brokers"),
    ("acks", "output.kafka.acks"),
    ("request.required.acks", "output.kafka.acks"),
    ("enable.idempotence", "output.kafka.idempotence"),
    ("compression.type", "output.kafka.compression"),
    ("compression.codec", "output.kafka.compression"),
    ("compression.level", "output.kafka.zstd_level"),
    (
        "max.in.flight.requests.per.connection",
        "output.kafka.max_in_flight",
    ),
    ("max.in.flight", "output.kafka.max_in_flight"),
    (
        "queue.buffering.max.messages",
        "output.kafka.queue_high_water",
    ),
    ("linger.ms", "output.kafka.dapb (klais batches)"),
    (
        "queue.buffering.max.ms",
        "output.kafka.dapb (klais batches)",
    ),
    ("batch.num.messages", "output.kafka.dapb (klais batches)"),
    ("batch.size", "output.kafka.dapb (klais batches)"),
    (
        "message.timeout.ms",
        "output.kafka.journal (klais keeps messages)",
    ),
    (
        "delivery.timeout.ms",
        "output.kafka.journal (klais keeps messages)",
    ),
    (
        "partitioner",
        "fixed: murmur2_random (Java client compatible)",
    ),
    ("security.protocol", "output.kafka.security.protocol"),
    ("sasl.mechanism", "output.kafka.security.sasl_mechanism"),
    ("sasl.mechanisms", "output.kafka.security.sasl_mechanism"),
    ("sasl.username", "output.kafka.security.sasl_username"),
    ("sasl.password", "output.kafka.security.sasl_password_file"),
    ("ssl.ca.location", "output.kafka.security.ca_file"),
    (
        "sasl.oauthbearer.method",
        "output.kafka.security.sasl_mechanism",
    ),
    (
        "sasl.oauthbearer.client.id",
        "output.kafka.security.oauth_client_id",
    ),
    (
        "sasl.oauthbearer.client.secret",
        "output.kafka.security.oauth_client_secret_file",
    ),
    (
        "sasl.oauthbearer.token.endpoint.url",
        "output.kafka.security.oauth_token_endpoint",
    ),
    (
        "sasl.oauthbearer.scope",
        "output.kafka.security.oauth_scope",
    ),
    ("ssl.ca.pem", "output.kafka.security.ca_file"),
    (
        "ssl.certificate.location",
        "output.kafka.security.cert_file",
    ),
    ("ssl.certificate.pem", "output.kafka.security.cert_file"),
    ("ssl.key.location", "output.kafka.security.key_file"),
    ("ssl.key.pem", "output.kafka.security.key_file"),
    (
        "ssl.endpoint.identification.algorithm",
        "fixed: https (the broker's certificate must name it)",
    ),
    (
        "enable.ssl.certificate.verification",
        "fixed: true (set output.kafka.security.ca_file instead)",
    ),
    (
        "statistics.interval.ms",
        "fixed: klais reads broker health from it",
    ),
];

fn default_protocol() -> String {
    "plaintext".into()
}
fn default_mechanism() -> String {
    "SCRAM-SHA-512".into()
}
fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_topic() -> String {
    "klais-telemetry".into()
}
fn default_acks() -> String {
    "all".into()
}
fn default_true() -> bool {
    true
}
fn default_request_timeout_ms() -> u64 {
    10_000
}
fn default_zstd_level() -> i32 {
    3
}
fn default_client() -> String {
    "native".into()
}
fn default_compression() -> String {
    "lz4".into()
}
fn default_max_in_flight() -> u32 {
    5
}
fn default_high_water() -> u32 {
    200_000
}
fn default_shutdown_flush_ms() -> u64 {
    5000
}
fn default_class() -> String {
    "adaptive".into()
}
fn default_b_min() -> u64 {
    16 * 1024
}
fn default_b_max() -> u64 {
    1 << 20
}
fn default_t_base() -> u64 {
    1000
}
fn default_t_min() -> u64 {
    200
}
fn default_t_max() -> u64 {
    50_000
}
fn default_alpha() -> u64 {
    32 * 1024
}
fn default_beta() -> u64 {
    16 * 1024
}
fn default_gamma() -> u64 {
    16 * 1024
}
fn default_delta() -> u64 {
    500
}
fn default_epsilon() -> u64 {
    1000
}
fn default_xi() -> u64 {
    250
}
fn default_journal_dir() -> PathBuf {
    "/var/lib/klais/journal".into()
}
fn default_segment_bytes() -> u64 {
    64 << 20
}
fn default_budget_bytes() -> u64 {
    4 << 30
}
fn default_fsync() -> String {
    "interval".into()
}
fn default_fsync_interval_ms() -> u64 {
    100
}

impl Default for Kafka {
    fn default() -> Self {
        Self {
            brokers: default_brokers(),
            topic: default_topic(),
            gateway_id: None,
            acks: default_acks(),
            idempotence: true,
            compression: default_compression(),
            zstd_level: default_zstd_level(),
            request_timeout_ms: default_request_timeout_ms(),
            client: default_client(),
            max_in_flight: default_max_in_flight(),
            queue_high_water: default_high_water(),
            shutdown_flush_ms: default_shutdown_flush_ms(),
            urgent_devices: Vec::new(),
            latency_devices: Vec::new(),
            default_class: default_class(),
            dapb: Dapb::default(),
            journal: Journal::default(),
            security: Security::default(),
            librdkafka: BTreeMap::new(),
        }
    }
}
impl Default for Dapb {
    fn default() -> Self {
        Self {
            b_min_bytes: default_b_min(),
            b_max_bytes: default_b_max(),
            t_base_us: default_t_base(),
            t_min_us: default_t_min(),
            t_max_us: default_t_max(),
            alpha_bytes_per_ms: default_alpha(),
            beta_bytes_per_pct: default_beta(),
            gamma_bytes_per_ms: default_gamma(),
            delta_us_per_ms: default_delta(),
            epsilon_us_per_pct: default_epsilon(),
            xi_us_per_ms: default_xi(),
            urgency_threshold_pct: 0,
        }
    }
}
impl Default for Journal {
    fn default() -> Self {
        Self {
            dir: default_journal_dir(),
            segment_bytes: default_segment_bytes(),
            budget_bytes: default_budget_bytes(),
            fsync: default_fsync(),
            fsync_interval_ms: default_fsync_interval_ms(),
        }
    }
}

impl Kafka {
    /// Every problem in this section, appended to `errs`.
    pub fn validate(&self, errs: &mut Vec<ConfigError>) {
        self.check_producer(errs);
        self.check_batching_and_journal(errs);
        self.security.check(self.client == "native", errs);
        for key in self.librdkafka.keys() {
            if let Some((_, owner)) = OWNED_LIBRDKAFKA_KEYS.iter().find(|(k, _)| k == key) {
                errs.push(invalid(
                    &format!("output.kafka.librdkafka.\"{key}\""),
                    format!("klais sets {key} itself ({owner})"),
                    "remove it from [output.kafka.librdkafka] and use the klais key",
                ));
            }
        }
    }

    /// Brokers, topic, acks, compression, in-flight limit, queues, classes.
    fn check_producer(&self, errs: &mut Vec<ConfigError>) {
        if self.brokers.trim().is_empty() {
            errs.push(invalid(
                "output.kafka.brokers",
                "no broker given".into(),
                "set brokers = \"host:9092\"",
            ));
        }
        if self.topic.is_empty() || self.topic.len() > 249 || self.topic.contains('\0') {
            errs.push(invalid(
                "output.kafka.topic",
                format!("{:?} is not a Kafka topic name", self.topic),
                "use 1–249 characters of [a-zA-Z0-9._-]",
            ));
        }
        if !["all", "-1", "1", "0"].contains(&self.acks.as_str()) {
            errs.push(invalid(
                "output.kafka.acks",
                format!("{:?} is not an acks setting", self.acks),
                "use \"all\", \"1\" or \"0\"",
            ));
        }
        if self.idempotence && self.acks != "all" && self.acks != "-1" {
            errs.push(invalid(
                "output.kafka.idempotence, output.kafka.acks",
                format!(
                    "an idempotent producer needs acks = \"all\", not {:?}",
                    self.acks
                ),
                "set acks = \"all\" or idempotence = false",
            ));
        }
        let native = self.client == "native";
        if !["librdkafka", "native"].contains(&self.client.as_str()) {
            errs.push(invalid(
                "output.kafka.client",
                format!("{:?} is not a Kafka client", self.client),
                "use \"native\" or \"librdkafka\"",
            ));
        }
        if !["lz4", "snappy", "gzip", "none", "zstd"].contains(&self.compression.as_str()) {
            errs.push(invalid(
                "output.kafka.compression",
                format!("{:?} is not supported by this build", self.compression),
                "use \"lz4\", \"zstd\", \"snappy\", \"gzip\" or \"none\"",
            ));
        }
        if !(1_000..=300_000).contains(&self.request_timeout_ms) {
            errs.push(invalid(
                "output.kafka.request_timeout_ms",
                format!("{} ms is out of range", self.request_timeout_ms),
                "use 1000 to 300000 (10000 is the default)",
            ));
        }
        if !(1..=19).contains(&self.zstd_level) {
            errs.push(invalid(
                "output.kafka.zstd_level",
                format!("{} is out of range", self.zstd_level),
                "use 1 (fast) to 19 (small); 3 is zstd's default",
            ));
        } else if !native && self.compression == "zstd" && self.zstd_level > 12 {
            errs.push(invalid(
                "output.kafka.zstd_level",
                format!(
                    "{} is above librdkafka's highest level (12)",
                    self.zstd_level
                ),
                "use 1 to 12 with client = \"librdkafka\" (or the native client for up to 19)",
            ));
        }
        if self.max_in_flight == 0 || (self.idempotence && self.max_in_flight > 5) {
            errs.push(invalid(
                "output.kafka.max_in_flight",
                format!(
                    "{} requests in flight (idempotence allows 1–5)",
                    self.max_in_flight
                ),
                "use 1 to 5",
            ));
        }
        if self.queue_high_water < 1000 || self.queue_high_water > 5_000_000 {
            errs.push(invalid(
                "output.kafka.queue_high_water",
                format!("{} is out of range", self.queue_high_water),
                "use 1000 to 5000000 (default 200000)",
            ));
        }
        if !["adaptive", "latency", "throughput"].contains(&self.default_class.as_str()) {
            errs.push(invalid(
                "output.kafka.default_class",
                format!("{:?} is not a class", self.default_class),
                "use \"adaptive\", \"latency\" or \"throughput\"",
            ));
        }
        for (key, list) in [
            ("output.kafka.urgent_devices", &self.urgent_devices),
            ("output.kafka.latency_devices", &self.latency_devices),
        ] {
            for id in list {
                if id.is_empty() || id.len() > 16 || id.contains('\0') {
                    errs.push(invalid(
                        key,
                        format!("{id:?} is not a device id (1–16 bytes of UTF-8, no NUL)"),
                        "fix or remove the entry",
                    ));
                }
            }
        }
    }

    /// DAPB bounds and the journal.
    fn check_batching_and_journal(&self, errs: &mut Vec<ConfigError>) {
        let d = &self.dapb;
        if d.b_min_bytes == 0 || d.b_min_bytes > d.b_max_bytes {
            errs.push(invalid(
                "output.kafka.dapb.b_min_bytes, output.kafka.dapb.b_max_bytes",
                format!(
                    "B_min {} must be > 0 and ≤ B_max {}",
                    d.b_min_bytes, d.b_max_bytes
                ),
                "e.g. b_min_bytes = 16384, b_max_bytes = 1048576",
            ));
        }
        if d.b_max_bytes > 64 << 20 {
            errs.push(invalid(
                "output.kafka.dapb.b_max_bytes",
                format!(
                    "{} bytes is larger than a produce request should be",
                    d.b_max_bytes
                ),
                "use at most 67108864",
            ));
        }
        if d.t_min_us > d.t_max_us || d.t_base_us < d.t_min_us || d.t_base_us > d.t_max_us {
            errs.push(invalid(
                "output.kafka.dapb.t_min_us, t_base_us, t_max_us",
                format!(
                    "need T_min {} ≤ T_base {} ≤ T_max {}",
                    d.t_min_us, d.t_base_us, d.t_max_us
                ),
                "order them, e.g. 200 ≤ 1000 ≤ 50000",
            ));
        }
        if d.urgency_threshold_pct >= 100 {
            errs.push(invalid(
                "output.kafka.dapb.urgency_threshold_pct",
                format!("{}% could never be exceeded", d.urgency_threshold_pct),
                "use 0 to 99",
            ));
        }
        let j = &self.journal;
        if j.segment_bytes < 1 << 20 || j.segment_bytes > 1 << 30 {
            errs.push(invalid(
                "output.kafka.journal.segment_bytes",
                format!("{} is out of range", j.segment_bytes),
                "use 1 MiB to 1 GiB (default 64 MiB)",
            ));
        }
        if j.budget_bytes < j.segment_bytes * 2 {
            errs.push(invalid(
                "output.kafka.journal.budget_bytes, output.kafka.journal.segment_bytes",
                format!(
                    "a budget of {} bytes holds fewer than two segments of {}",
                    j.budget_bytes, j.segment_bytes
                ),
                "raise budget_bytes or lower segment_bytes",
            ));
        }
        if !["always", "interval", "segment", "never"].contains(&j.fsync.as_str()) {
            errs.push(invalid(
                "output.kafka.journal.fsync",
                format!("{:?} is not an fsync policy", j.fsync),
                "use \"always\", \"interval\", \"segment\" or \"never\"",
            ));
        }
        if j.fsync == "interval" && j.fsync_interval_ms == 0 {
            errs.push(invalid(
                "output.kafka.journal.fsync_interval_ms",
                "0 ms with fsync = \"interval\"".into(),
                "use fsync = \"always\" or a period of 1 ms or more",
            ));
        }
    }
}
