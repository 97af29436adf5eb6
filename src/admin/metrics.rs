//! `/metrics` in the Prometheus text format (0.0.4), rendered per scrape
//! from the snapshots the cores publish per tick.
//!
//! The families are built per scrape as the `prometheus` crate's (TiKV's)
//! plain model and written by its `TextEncoder`: names, label escaping,
//! summaries and number formats are the crate's, not klais's. No metric
//! object lives between scrapes: every value already exists as a plain
//! counter in a published snapshot (STYLE.md: no metrics in tight loops), so
//! registered atomics would only copy them once more. Label sets are bounded:
//! `shard` (≤ the shard count), `reason` (the fixed reject reasons),
//! `verdict`/`class`/`event` (fixed lists), `quantile`. No label carries a
//! device id. The names are listed in docs/operating.md, "Metrics", checked
//! by `promtool check metrics` and a real Prometheus scrape in the tests, and
//! used by `klais top` and `grafana/klais.json` (whose every query is checked
//! against them).

use prometheus::proto::{
    Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary,
};

use super::{OperatorState, Sources, WRITE_RESULTS};
use crate::kafka::KafkaSnapshot;
use crate::shard::ShardSnapshot;
use crate::sink::SinkSnapshot;
use crate::wire::Reject;

/// The families of one scrape, in order.
struct W {
    families: Vec<MetricFamily>,
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

impl W {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let mut f = MetricFamily::default();
        f.set_name(name.to_string());
        f.set_help(help.to_string());
        f.set_field_type(match kind {
            "counter" => MetricType::COUNTER,
            "gauge" => MetricType::GAUGE,
            "summary" => MetricType::SUMMARY,
            other => unreachable!("metric kind {other}"),
        });
        self.families.push(f);
    }
    /// A sample of the family just begun (`name` must be its name).
    fn v(&mut self, name: &str, pairs: &[(&str, &str)], value: f64) {
        let f = self.families.last_mut().expect("a family first");
        debug_assert_eq!(f.name(), name, "a sample of another family");
        let mut m = Metric::default();
        m.set_label(labels(pairs));
        match f.get_field_type() {
            MetricType::COUNTER => {
                let mut c = Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
            _ => {
                let mut g = Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
        }
        f.mut_metric().push(m);
    }
    /// One family with one sample per shard.
    fn per_shard(&mut self, name: &str, kind: &str, help: &str, vals: &[f64]) {
        self.family(name, kind, help);
        for (i, v) in vals.iter().enumerate() {
            self.v(name, &[("shard", &i.to_string())], *v);
        }
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.v(name, &[], value);
    }
    /// The text exposition; a family with no sample (no shard yet) is left
    /// out, as the format has no empty family.
    fn text(mut self) -> String {
        self.families.retain(|f| !f.get_metric().is_empty());
        prometheus::TextEncoder::new()
            .encode_to_string(&self.families)
            .unwrap_or_else(|e| format!("# klais: metrics encoding failed: {e}\n"))
    }
}

/// One per-shard family: name, type, help, the value from a shard's snapshot.
type ShardFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardSnapshot) -> f64,
);

/// The per-shard families with no label but `shard`.
const SHARD_FAMILIES: [ShardFamily; 16] = [
    (
        "klais_shard_received_total",
        "counter",
        "Datagrams a shard received from its own queue.",
        |s| s.received as f64,
    ),
    (
        "klais_shard_received_bytes_total",
        "counter",
        "Bytes a shard received from its own queue.",
        |s| s.received_bytes as f64,
    ),
    (
        "klais_shard_accepted_total",
        "counter",
        "Messages a shard admitted toward the output.",
        |s| s.accepted as f64,
    ),
    (
        "klais_shard_forwarded_out_total",
        "counter",
        "Messages handed to the shard owning their device.",
        |s| s.forwarded_out as f64,
    ),
    (
        "klais_shard_forwarded_in_total",
        "counter",
        "Messages other shards handed to this one.",
        |s| s.forwarded_in as f64,
    ),
    (
        "klais_shard_overflow_messages",
        "gauge",
        "Messages waiting in the shard's overflow queue.",
        |s| s.queued as f64,
    ),
    (
        "klais_shard_overflow_bytes",
        "gauge",
        "Bytes waiting in the shard's overflow queue.",
        |s| s.queued_bytes as f64,
    ),
    (
        "klais_shard_queue_drops_total",
        "counter",
        "Datagrams the kernel dropped at the shard's queue (socket buffer or AF_XDP ring full).",
        |s| s.queue_drops as f64,
    ),
    (
        "klais_shard_model_marked_total",
        "counter",
        "Datagrams the in-kernel classifier marked.",
        |s| s.model_marked as f64,
    ),
    (
        "klais_shard_storm_probability",
        "gauge",
        "The shard's window model storm probability, last tick.",
        |s| f64::from(s.storm_ppm) / 1e6,
    ),
    (
        "klais_dam_depth",
        "gauge",
        "Messages waiting in the shard's Dam.",
        |s| s.dam.depth as f64,
    ),
    (
        "klais_dam_queued_devices",
        "gauge",
        "Devices with messages waiting in the Dam.",
        |s| s.dam.queued_devices as f64,
    ),
    (
        "klais_dam_oldest_age_seconds",
        "gauge",
        "Age of the oldest message waiting in the Dam.",
        |s| s.dam.oldest_age_ns as f64 / 1e9,
    ),
    (
        "klais_dam_queued_total",
        "counter",
        "Messages that waited in the Dam.",
        |s| s.dam.queued as f64,
    ),
    (
        "klais_dam_released_total",
        "counter",
        "Messages the Dam released.",
        |s| s.dam.released as f64,
    ),
    (
        "klais_dam_evictions_total",
        "counter",
        "Devices evicted from the Dam's table.",
        |s| s.dam.evictions as f64,
    ),
];

/// The whole exposition: one function per snapshot type, in the order the
/// data flows (cores, shards, control, operator, output, kernel).
pub fn render(src: &Sources) -> String {
    let mut w = W {
        families: Vec::with_capacity(128),
    };

    w.family("klais_build_info", "gauge", "klais version.");
    w.v(
        "klais_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    w.one(
        "klais_uptime_seconds",
        "gauge",
        "Seconds since klais started.",
        src.started.elapsed().as_secs_f64(),
    );
    w.family("klais_core_up", "gauge", "1 while a core's loop runs.");
    for (i, d) in src.live.shards_done.iter().enumerate() {
        let up = !d.load(std::sync::atomic::Ordering::Relaxed);
        w.v(
            "klais_core_up",
            &[("role", "shard"), ("shard", &i.to_string())],
            f64::from(u8::from(up)),
        );
    }
    let out_up = !src
        .live
        .output_done
        .load(std::sync::atomic::Ordering::Relaxed);
    w.v(
        "klais_core_up",
        &[("role", "output"), ("shard", "")],
        f64::from(u8::from(out_up)),
    );
    if let Some(c) = &src.live.control_done {
        let up = !c.load(std::sync::atomic::Ordering::Relaxed);
        w.v(
            "klais_core_up",
            &[("role", "control"), ("shard", "")],
            f64::from(u8::from(up)),
        );
    }
    w.one(
        "klais_ready",
        "gauge",
        "1 when /ready answers 200.",
        f64::from(u8::from(super::not_ready(src).is_empty())),
    );
    shard_families(&mut w, src);
    if let Some(c) = &src.control {
        control_families(&mut w, &c.read());
    }
    operator_families(&mut w, &src.operator.state());
    sink_families(&mut w, &src.sink.read());
    if let Some(k) = &src.kafka {
        let k = k.read();
        kafka_families(&mut w, &k);
        dapb_families(&mut w, &k);
    }
    if let Some(maps) = &src.kernel {
        kernel_families(&mut w, maps);
    }
    w.text()
}

/// Per-shard families ([`ShardSnapshot`]), and the Dam's rate from the
/// control core's setpoints.
fn shard_families(w: &mut W, src: &Sources) {
    let snaps: Vec<_> = src.shards.iter().map(|s| s.read()).collect();
    // Shards: the plain per-shard families, then those with more labels.
    for (name, kind, help, f) in SHARD_FAMILIES {
        let vals: Vec<f64> = snaps.iter().map(f).collect();
        w.per_shard(name, kind, help, &vals);
    }
    w.family(
        "klais_shard_rejects_total",
        "counter",
        "Datagrams a shard refused, by reason.",
    );
    for (i, s) in snaps.iter().enumerate() {
        let shard = i.to_string();
        for r in Reject::ALL {
            w.v(
                "klais_shard_rejects_total",
                &[("shard", &shard), ("reason", r.name())],
                s.rejects.get(r) as f64,
            );
        }
    }
    w.family(
        "klais_shard_sequence_events_total",
        "counter",
        "Sequence tracking events per shard.",
    );
    for (i, s) in snaps.iter().enumerate() {
        let shard = i.to_string();
        let q = &s.seq;
        for (ev, v) in [
            ("new_device", q.new_devices),
            ("gap", q.gaps),
            ("missing", q.missing),
            ("late", q.late),
            ("duplicate", q.duplicates),
            ("reset", q.resets),
            ("eviction", q.evictions),
        ] {
            w.v(
                "klais_shard_sequence_events_total",
                &[("shard", &shard), ("event", ev)],
                v as f64,
            );
        }
    }

    // The Dam's rate, from the control core's setpoints.
    let rates: Vec<f64> = src
        .setpoints
        .iter()
        .map(|p| {
            p.as_ref()
                .and_then(|p| p.read())
                .map_or(f64::NAN, |c| c.shard_rate)
        })
        .collect();
    if rates.iter().any(|r| r.is_finite()) {
        w.per_shard(
            "klais_dam_shard_rate_pps",
            "gauge",
            "The shard's admission rate the control core set.",
            &rates,
        );
    }
}

/// The control core's families ([`crate::control::ControlSnapshot`]).
fn control_families(w: &mut W, c: &crate::control::ControlSnapshot) {
    w.one(
        "klais_control_ticks_total",
        "counter",
        "Control core ticks.",
        c.ticks as f64,
    );
    w.one(
        "klais_control_global_rate_pps",
        "gauge",
        "Global admission rate the PID set last.",
        c.global_rate,
    );
    w.one(
        "klais_control_storm",
        "gauge",
        "1 while a reconnection storm is forecast.",
        f64::from(u8::from(c.storm_now)),
    );
    w.one(
        "klais_control_storms_total",
        "counter",
        "Storm onsets forecast.",
        c.storms as f64,
    );
    w.one(
        "klais_control_predicted_devices",
        "gauge",
        "The last forecast's reconnecting devices.",
        c.predicted.0,
    );
    w.one(
        "klais_control_predicted_messages",
        "gauge",
        "The last forecast's backlog, messages.",
        c.predicted.1,
    );
    w.one(
        "klais_control_storm_peak_waiting",
        "gauge",
        "Most messages waiting in the Dams since the last storm began.",
        c.storm_peak_waiting as f64,
    );
    w.one(
        "klais_control_kernel_budget_pps",
        "gauge",
        "The kernel's global budget written last.",
        c.kernel_budget_pps as f64,
    );
    w.one(
        "klais_control_kernel_writes_total",
        "counter",
        "Writes of the kernel's limits.",
        c.kernel_writes as f64,
    );
    w.one(
        "klais_control_floods_pinned_total",
        "counter",
        "Flooding devices held to the normal kernel limit during storms.",
        c.floods_pinned as f64,
    );
}

/// The operator's settings and the admin API's own counters, and the log
/// lines the rate limit suppressed.
fn operator_families(w: &mut W, op: &OperatorState) {
    w.family(
        "klais_operator_ceiling_pps",
        "gauge",
        "Operator ceiling on the global admission rate (admin API); no sample: none set.",
    );
    if let Some(c) = op.ceiling_pps {
        w.v("klais_operator_ceiling_pps", &[], c as f64);
    }
    w.one(
        "klais_operator_overrides",
        "gauge",
        "Per-device kernel rate overrides set through the admin API.",
        op.overrides.len() as f64,
    );
    w.one(
        "klais_operator_denied_devices",
        "gauge",
        "Devices on the operator's deny list.",
        op.denied.len() as f64,
    );
    w.one(
        "klais_operator_model_reloads_total",
        "counter",
        "Classifier reloads through the admin API.",
        op.model_reloads as f64,
    );
    w.family(
        "klais_admin_writes_total",
        "counter",
        "Admin API writes by outcome.",
    );
    for (i, r) in WRITE_RESULTS.iter().enumerate() {
        w.v(
            "klais_admin_writes_total",
            &[("result", r)],
            op.writes[i] as f64,
        );
    }

    w.one(
        "klais_log_lines_suppressed_total",
        "counter",
        "Log lines dropped by the per-call-site rate limit.",
        crate::telemetry::LOG_SUPPRESSED.load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
}

/// A non-Kafka sink's families ([`SinkSnapshot`]).
fn sink_families(w: &mut W, sink: &SinkSnapshot) {
    w.one(
        "klais_sink_records_total",
        "counter",
        "Records written by a non-Kafka sink.",
        sink.records as f64,
    );
}

/// The Kafka batcher's delivery accounting, breaker and journal
/// ([`KafkaSnapshot`]).
fn kafka_families(w: &mut W, k: &KafkaSnapshot) {
    w.one(
        "klais_kafka_accepted_total",
        "counter",
        "Records the batcher took from the shard rings.",
        k.accepted as f64,
    );
    w.one(
        "klais_kafka_delivered_total",
        "counter",
        "Records the broker acknowledged.",
        k.delivered as f64,
    );
    w.one(
        "klais_kafka_recovered_total",
        "counter",
        "Records found in the journal at start.",
        k.recovered as f64,
    );
    w.one(
        "klais_kafka_buffered",
        "gauge",
        "Records in DAPB buffers.",
        k.buffered as f64,
    );
    w.one(
        "klais_kafka_in_flight",
        "gauge",
        "Records given to librdkafka, not yet acknowledged.",
        k.in_flight as f64,
    );
    w.one(
        "klais_kafka_journaled",
        "gauge",
        "Records waiting in the journal.",
        k.journaled as f64,
    );
    w.family(
        "klais_kafka_dropped_total",
        "counter",
        "Records lost after acceptance, by reason.",
    );
    w.v(
        "klais_kafka_dropped_total",
        &[("reason", "journal_full")],
        k.dropped_journal_full as f64,
    );
    w.v(
        "klais_kafka_dropped_total",
        &[("reason", "broker_rejected")],
        k.dropped_rejected as f64,
    );
    w.v(
        "klais_kafka_dropped_total",
        &[("reason", "journal_damaged")],
        k.journal_lost as f64,
    );
    w.v(
        "klais_kafka_dropped_total",
        &[("reason", "not_delivered_at_stop")],
        k.dropped_at_stop as f64,
    );
    w.one(
        "klais_kafka_batch_retries_total",
        "counter",
        "Record batches sent again after a retriable error (native client).",
        k.retries as f64,
    );
    w.one(
        "klais_kafka_producer_resets_total",
        "counter",
        "Producer ids asked for again, unknown or fenced (native client).",
        k.producer_resets as f64,
    );
    w.one(
        "klais_kafka_request_timeouts_total",
        "counter",
        "Broker connections closed for an answer that did not come in time (native client).",
        k.request_timeouts as f64,
    );
    w.one(
        "klais_kafka_auth_failures_total",
        "counter",
        "Broker connections refused by TLS or SASL (native client).",
        k.auth_failures as f64,
    );
    w.one(
        "klais_kafka_bad_responses_total",
        "counter",
        "Broker responses that could not be decoded (native client).",
        k.bad_responses as f64,
    );
    w.one(
        "klais_kafka_replayed_total",
        "counter",
        "Journal records sent again.",
        k.replayed as f64,
    );
    w.one(
        "klais_kafka_breaker_open",
        "gauge",
        "1 while records go to the journal.",
        f64::from(u8::from(k.breaker == crate::kafka::Breaker::Open)),
    );
    w.one(
        "klais_kafka_breaker_opens_total",
        "counter",
        "Times the breaker opened.",
        k.breaker_opens as f64,
    );
    w.one(
        "klais_kafka_broker_up",
        "gauge",
        "1 when librdkafka reports a broker up.",
        f64::from(u8::from(k.broker_up)),
    );
    w.one(
        "klais_kafka_journal_bytes",
        "gauge",
        "Bytes of the journal on disk.",
        k.journal.bytes as f64,
    );
    w.one(
        "klais_kafka_journal_segments",
        "gauge",
        "Journal segment files.",
        k.journal.segments as f64,
    );
    w.one(
        "klais_kafka_journal_io_errors_total",
        "counter",
        "Journal I/O errors.",
        k.journal.io_errors as f64,
    );
}

/// The batcher's DAPB parameters, releases, latency and CPU
/// ([`KafkaSnapshot`]).
fn dapb_families(w: &mut W, k: &KafkaSnapshot) {
    if let Some(p) = k.params {
        w.one(
            "klais_dapb_batch_adaptive_bytes",
            "gauge",
            "DAPB B(t), bytes.",
            p.b_adaptive as f64,
        );
        w.one(
            "klais_dapb_batch_min_bytes",
            "gauge",
            "DAPB B_min, bytes.",
            p.b_min as f64,
        );
        w.one(
            "klais_dapb_batch_max_bytes",
            "gauge",
            "DAPB B_max, bytes.",
            p.b_max as f64,
        );
        w.one(
            "klais_dapb_timeout_seconds",
            "gauge",
            "DAPB T(t).",
            p.t_us as f64 / 1e6,
        );
        w.one(
            "klais_dapb_utilisation_threshold_ratio",
            "gauge",
            "DAPB U_th.",
            f64::from(p.u_th_pct) / 100.0,
        );
    }
    w.one(
        "klais_dapb_rtt_seconds",
        "gauge",
        "DAPB C(t): round trip.",
        k.conditions.rtt_us / 1e6,
    );
    w.one(
        "klais_dapb_jitter_seconds",
        "gauge",
        "DAPB C(t): jitter.",
        k.conditions.jitter_us / 1e6,
    );
    w.one(
        "klais_dapb_error_ratio",
        "gauge",
        "DAPB C(t): error share.",
        k.conditions.error_pct / 100.0,
    );
    w.one(
        "klais_dapb_messages_total",
        "counter",
        "Messages released in DAPB batches.",
        k.dapb.messages as f64,
    );
    w.one(
        "klais_dapb_batches_total",
        "counter",
        "DAPB batches released.",
        k.dapb.batches as f64,
    );
    w.one(
        "klais_dapb_batch_utilisation_ratio",
        "gauge",
        "Used / capacity bytes over all batches (DAPB eq. 9).",
        if k.dapb.capacity_bytes > 0 {
            k.dapb.used_bytes as f64 / k.dapb.capacity_bytes as f64
        } else {
            0.0
        },
    );
    w.family(
        "klais_dapb_releases_total",
        "counter",
        "DAPB batch releases by reason.",
    );
    for (i, r) in ["urgent", "full", "timeout", "drain"].iter().enumerate() {
        w.v(
            "klais_dapb_releases_total",
            &[("reason", r)],
            k.dapb.by_reason[i] as f64,
        );
    }
    summary(
        w,
        "klais_kafka_added_latency_seconds",
        "Ring to delivery report, by class.",
        &[
            ("class", "normal", &k.latency_normal_us),
            ("class", "urgent", &k.latency_urgent_us),
        ],
    );
    summary(
        w,
        "klais_kafka_delivery_rtt_seconds",
        "Handed to librdkafka to delivery report.",
        &[("path", "direct", &k.rtt_us)],
    );
    w.one(
        "klais_kafka_cpu_seconds_total",
        "counter",
        "Batcher thread CPU time.",
        k.cpu_ns as f64 / 1e9,
    );
}

/// The XDP filter's families, read from its maps per scrape.
fn kernel_families(w: &mut W, maps: &crate::xdp::KernelMaps) {
    if let Ok(x) = maps.counters() {
        w.family(
            "klais_xdp_packets_total",
            "counter",
            "Packets by XDP verdict.",
        );
        for v in crate::xdp::Verdict::ALL {
            w.v(
                "klais_xdp_packets_total",
                &[("verdict", v.name())],
                x.get(v) as f64,
            );
        }
        w.family(
            "klais_xdp_model_class_total",
            "counter",
            "Packets the in-kernel classifier put in each class.",
        );
        for (i, c) in crate::handoff::MODEL_CLASSES.iter().enumerate() {
            w.v(
                "klais_xdp_model_class_total",
                &[("class", c)],
                x.model_class[i] as f64,
            );
        }
        w.one(
            "klais_xdp_events_sent_total",
            "counter",
            "Device events sent to user space.",
            x.events_sent as f64,
        );
        w.one(
            "klais_xdp_events_capped_total",
            "counter",
            "Device events over the per-second cap.",
            x.events_capped as f64,
        );
        w.one(
            "klais_xdp_events_lost_total",
            "counter",
            "Device events lost (ring buffer full).",
            x.events_lost as f64,
        );
        w.one(
            "klais_xdp_bucket_evictions_total",
            "counter",
            "Kernel device buckets given to a new device.",
            x.bucket_evictions as f64,
        );
        w.one(
            "klais_xdp_bucket_untracked_total",
            "counter",
            "New devices admitted without a kernel bucket.",
            x.bucket_untracked as f64,
        );
    }
}

/// A summary from `[p50, p99, p99.9, max, count]` in µs (the batcher's
/// HdrHistogram, cumulative since start).
fn summary(w: &mut W, name: &str, help: &str, series: &[(&str, &str, &[u64; 6])]) {
    w.family(name, "summary", help);
    let f = w.families.last_mut().expect("just begun");
    for (k, v, q) in series {
        let mut sm = Summary::default();
        sm.set_quantile(
            [(0.5, q[0]), (0.99, q[1]), (0.999, q[2]), (1.0, q[3])]
                .iter()
                .map(|&(quantile, us)| {
                    let mut x = Quantile::default();
                    x.set_quantile(quantile);
                    x.set_value(us as f64 / 1e6);
                    x
                })
                .collect(),
        );
        sm.set_sample_count(q[4]);
        sm.set_sample_sum(q[5] as f64 / 1e6);
        let mut m = Metric::default();
        m.set_label(labels(&[(k, v)]));
        m.set_summary(sm);
        f.mut_metric().push(m);
    }
}
