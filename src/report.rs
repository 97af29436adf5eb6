//! The text reports of a run — its topology, a live line per interval, the
//! summary at stop, the Kafka figures and the XDP filter's counters — as
//! `klais run`, `klais demo` and `klais xdp stats` print them. Rendering
//! only: every figure comes from the snapshots the cores publish.

use std::time::Duration;

use crate::config::{Backend, Config};
use crate::kafka::KafkaSnapshot;
use crate::runtime::{RunSummary, Running};
use crate::shard::ShardSnapshot;
use crate::sink::SinkSnapshot;
use crate::wire::Reject;

/// The topology of a running klais: every core, queue and ring.
pub fn topology_text(r: &Running, cfg: &Config) -> String {
    let n = r.placement().shard_cpus.len();
    let mut t = String::from("topology:\n");
    match r.xdp() {
        Some((iface, mode, _)) => t.push_str(&format!(
            "  xdp filter   on {iface} ({mode} mode), ports {:?}\n",
            cfg.xdp.effective_ports(&cfg.ingest.listen)
        )),
        None => t.push_str("  xdp filter   off\n"),
    }
    for (i, cpu) in r.placement().shard_cpus.iter().enumerate() {
        let queue = match r.backend() {
            Backend::Udp => format!("udp socket {i} on {} (SO_REUSEPORT)", r.local_addr()),
            Backend::AfXdp => format!(
                "af_xdp socket on {} queue {i} ({} frames x {} B)",
                cfg.xdp.iface.as_deref().unwrap_or("?"),
                cfg.ingest.af_xdp.frames,
                cfg.ingest.af_xdp.frame_size
            ),
        };
        t.push_str(&format!(
            "  shard {i}      CPU {cpu}: {queue}; owns devices with fnv1a64(id) % {n} == {i}\n"
        ));
        t.push_str(&format!(
            "               rings: -> output {} KiB, overflow {} KiB{}\n",
            cfg.pipeline.ring_bytes / 1024,
            cfg.pipeline.overflow_bytes / 1024,
            if n > 1 {
                format!(
                    ", -> each other shard {} KiB",
                    cfg.pipeline.mesh_bytes / 1024
                )
            } else {
                String::new()
            }
        ));
    }
    t.push_str(&format!(
        "  output       CPU {}: sink {}\n",
        r.placement().output_cpu,
        cfg.output.sink.name()
    ));
    t
}

/// One line of live figures: rates over the last interval and totals.
pub fn live_line(
    elapsed: Duration,
    dt: Duration,
    prev: &(ShardSnapshot, SinkSnapshot),
    now: &(ShardSnapshot, SinkSnapshot),
) -> String {
    let secs = dt.as_secs_f64().max(1e-9);
    let rate = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / secs;
    let (ps, po) = prev;
    let (ns, no) = now;
    let mut rejects = String::new();
    for r in Reject::ALL {
        let n = ns.rejects.get(r);
        if n > 0 {
            if !rejects.is_empty() {
                rejects.push_str(", ");
            }
            rejects.push_str(&format!("{} {}", r.name(), n));
        }
    }
    format!(
        "[{:>7.1}s] rx {:>9.0}/s  accepted {:>9.0}/s  out {:>9.0}/s  totals: rx {} accepted {} out {}  rejected {}{}{}  resets {} gaps {}{}",
        elapsed.as_secs_f64(),
        rate(ps.received, ns.received),
        rate(ps.accepted, ns.accepted),
        rate(po.records, no.records),
        ns.received,
        ns.accepted,
        no.records,
        ns.rejects.total(),
        if rejects.is_empty() { "" } else { " (" },
        if rejects.is_empty() { String::new() } else { format!("{rejects})") },
        ns.seq.resets,
        ns.seq.gaps,
        if ns.dam.depth > 0 {
            format!("  dam waiting {} (oldest {} ms)", ns.dam.depth, ns.dam.oldest_age_ns / 1_000_000)
        } else {
            String::new()
        },
    )
}

/// The summary printed when klais stops.
pub fn summary_text(s: &RunSummary) -> String {
    let mut t = String::new();
    let sh = &s.shards;
    t.push_str(&format!(
        "klais stopped after {:.1}s ({})\n",
        s.elapsed.as_secs_f64(),
        s.placement
    ));
    t.push_str(&format!(
        "  received            {:>12}  ({} bytes)\n",
        sh.received, sh.received_bytes
    ));
    t.push_str(&format!(
        "  dropped at the queue{:>12}  (socket buffer or AF_XDP ring full before a shard saw them)\n",
        sh.queue_drops
    ));
    t.push_str(&format!("  accepted            {:>12}\n", sh.accepted));
    t.push_str(&format!(
        "  forwarded to owner  {:>12}  (between shards; counted once, at the owner)\n",
        sh.forwarded_out
    ));
    t.push_str(&format!("  written by sink     {:>12}\n", s.sink.records));
    t.push_str(&format!(
        "  rejected            {:>12}\n",
        sh.rejects.total()
    ));
    for r in Reject::ALL {
        t.push_str(&format!("    {:<18}{:>12}\n", r.name(), sh.rejects.get(r)));
    }
    let q = &sh.seq;
    t.push_str(&format!(
        "  sequence: new devices {}, gaps {} ({} missing), late {}, resets {}, evictions {}\n",
        q.new_devices, q.gaps, q.missing, q.late, q.resets, q.evictions
    ));
    let d = &sh.dam;
    if d.queued > 0 || d.released > 0 || d.evictions > 0 {
        t.push_str(&format!(
            "  dam: waited {} (released {}, waiting {}), device evictions {}\n",
            d.queued, d.released, d.depth, d.evictions
        ));
    }
    if sh.window_runs > 0 || sh.model_marked > 0 {
        t.push_str(&format!(
            "  models: window model (GGML Q4_0) {} inferences, {:.2} us each on average, storm probability last {:.3} peak {:.3} (highest shard); datagrams marked by the in-kernel classifier {}\n",
            sh.window_runs,
            sh.window_ns as f64 / 1000.0 / sh.window_runs.max(1) as f64,
            f64::from(sh.storm_ppm) / 1e6,
            f64::from(sh.storm_ppm_peak) / 1e6,
            sh.model_marked
        ));
    }
    if let Some(c) = &s.control {
        t.push_str(&format!(
            "  control: {} ticks, storms forecast {}{}, global admission rate {:.0}/s, kernel limit writes {} (global budget {}/s), flooding devices pinned {}\n",
            c.ticks,
            c.storms,
            c.first_storm_ms.map_or(String::new(), |ms| format!(
                " (first at {:.2} s)",
                ms as f64 / 1000.0
            )),
            c.global_rate,
            c.kernel_writes,
            c.kernel_budget_pps,
            c.floods_pinned
        ));
        if c.storms > 0 {
            t.push_str(&format!(
                "  last storm: peak waiting in the Dams {}, recovered {}\n",
                c.storm_peak_waiting,
                c.storm_recovery_ms
                    .map_or("not yet".to_string(), |ms| format!(
                        "in {:.2} s (back under 1 % of the normal queue)",
                        ms as f64 / 1000.0
                    ))
            ));
        }
    }
    if let Some(k) = &s.kafka {
        t.push_str(&kafka_text(k));
    }
    if let Some(x) = &s.xdp {
        t.push_str(&xdp_counters_text(x));
        let redirected = x.get(crate::xdp::Verdict::Redirect);
        let accounted = sh.received + sh.queue_drops;
        if redirected > accounted {
            t.push_str(&format!(
                "  LOST between the XDP redirect and the shards: {} (redirected {}, received {}, counted as dropped at the queue {})\n",
                redirected - accounted,
                redirected,
                sh.received,
                sh.queue_drops
            ));
        }
    }
    t
}

/// The Kafka output's figures: delivery accounting, breaker, DAPB, latency.
pub fn kafka_text(k: &KafkaSnapshot) -> String {
    let mut t = String::from("  kafka:\n");
    t.push_str(&format!(
        "    delivered {}, buffered {}, in flight {}, journaled {}; dropped: journal full {}, rejected by broker {}, journal damage {}, not delivered at stop {}\n",
        k.delivered, k.buffered, k.in_flight, k.journaled, k.dropped_journal_full, k.dropped_rejected, k.journal_lost, k.dropped_at_stop
    ));
    if k.retries + k.producer_resets + k.bad_responses > 0 {
        t.push_str(&format!(
            "    native client: batches retried {}, producer ids renewed {}, undecodable responses {}\n",
            k.retries, k.producer_resets, k.bad_responses
        ));
    }
    let (l, r) = k.reconcile();
    t.push_str(&format!(
        "    accounting: accepted {} + recovered {} = {} {} delivered + buffered + in flight + journaled + dropped = {}\n",
        k.accepted,
        k.recovered,
        l,
        if l == r { "==" } else { "!= (MISMATCH)" },
        r
    ));
    t.push_str(&format!(
        "    breaker {:?} (opened {}x), broker {}; journal: {} segments, {} bytes, replayed {}, replay failures {}\n",
        k.breaker,
        k.breaker_opens,
        if k.broker_up { "up" } else { "not up" },
        k.journal.segments,
        k.journal.bytes,
        k.replayed,
        k.replay_failures
    ));
    if let Some(p) = k.params {
        t.push_str(&format!(
            "    DAPB: B(t) {} B, T(t) {} us; RTT {:.2} ms, jitter {:.2} ms, errors {:.2}%; {} batches for {} messages (small sends avoided {}, buffer efficiency {:.1}%; urgent/full/timeout/drain {:?})\n",
            p.b_adaptive,
            p.t_us,
            k.conditions.rtt_us / 1000.0,
            k.conditions.jitter_us / 1000.0,
            k.conditions.error_pct,
            k.dapb.batches,
            k.dapb.messages,
            k.dapb.reduced_sends(),
            100.0 * k.dapb.efficiency(),
            k.dapb.by_reason
        ));
    }
    let lat = |l: &[u64; 6]| {
        format!(
            "P50 {} P99 {} P99.9 {} max {} us (n={})",
            l[0], l[1], l[2], l[3], l[4]
        )
    };
    let (from, rtt) = if k.native {
        (
            "first receive in the batch -> acknowledged",
            "produce request -> response",
        )
    } else {
        ("ring -> delivery report", "librdkafka + broker")
    };
    t.push_str(&format!(
        "    added latency ({from}): normal {}; urgent {}\n    of which delivery round trip ({rtt}) {}\n    output core CPU {:.0} ns per message\n",
        lat(&k.latency_normal_us),
        lat(&k.latency_urgent_us),
        lat(&k.rtt_us),
        k.cpu_ns_per_msg()
    ));
    t
}

/// The XDP filter's counters, one line per verdict.
pub fn xdp_counters_text(x: &crate::xdp::XdpCounters) -> String {
    let mut t = String::from("  xdp filter (packets, summed over CPUs):\n");
    for v in crate::xdp::Verdict::ALL {
        t.push_str(&format!("    {:<18}{:>12}\n", v.name(), x.get(v)));
    }
    t.push_str(&format!(
        "    events: sent {}, over cap {}, lost (ring full) {}; buckets: CAS retries {}, evictions {}, untracked {}\n",
        x.events_sent, x.events_capped, x.events_lost, x.bucket_retries, x.bucket_evictions, x.bucket_untracked
    ));
    let classified: u64 = x.model_class.iter().sum();
    if classified > 0 {
        t.push_str(&format!(
            "    classifier: normal {}, flood {}, sweep {}, replay {}; marked for Kafka {}\n",
            x.model_class[0], x.model_class[1], x.model_class[2], x.model_class[3], x.model_marked
        ));
    }
    t
}
