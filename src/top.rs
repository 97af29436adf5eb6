//! `klais top`: a live terminal view of a running klais, from its `/metrics`
//! (the same numbers Prometheus scrapes: nothing here reaches into a core).
//!
//! Every second: one scrape, rates from the difference with the previous one.
//! Per shard: receive and accept rates, rejects, kernel queue drops, overflow
//! and Dam queues, the admission rate the control core set, storm
//! probability. Below: XDP verdicts and user-space reject reasons by rate,
//! Kafka delivery (rate, backlog, journal, latency quantiles, broker and
//! breaker), the control core (global rate, ceiling, forecast). `q` or Esc
//! quits. `--once` prints one plain-text frame instead (scripts, no TTY).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One scrape: `name{labels}` → value, plus when it was taken.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Samples by their full name with labels, as written.
    pub samples: BTreeMap<String, f64>,
    /// When it was taken.
    pub at: Option<Instant>,
}

impl Scrape {
    /// Parses the Prometheus text format (comments skipped).
    pub fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some((k, v)) = line.rsplit_once(' ') {
                if let Ok(v) = v.trim().parse::<f64>() {
                    samples.insert(k.to_string(), v);
                }
            }
        }
        Scrape {
            samples,
            at: Some(Instant::now()),
        }
    }

    /// One sample's value.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.samples.get(key).copied()
    }

    /// Samples of family `name` whose labels contain `label="…"`: the label's
    /// value → the sample's value.
    pub fn by_label(&self, name: &str, label: &str, filter: &str) -> Vec<(String, f64)> {
        let prefix = format!("{name}{{");
        let needle = format!("{label}=\"");
        self.samples
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && k.contains(filter))
            .filter_map(|(k, v)| {
                let i = k.find(&needle)? + needle.len();
                let end = k[i..].find('"')? + i;
                Some((k[i..end].to_string(), *v))
            })
            .collect()
    }
}

/// GET `path` from `addr`; the body, or why not.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| {
        format!("cannot connect to {addr}: {e} (is klais running with [admin] enabled?)")
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "{addr}{path}: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok(body.to_string())
}

/// What one frame shows, computed from two scrapes.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Header lines.
    pub header: Vec<String>,
    /// Per-shard rows: shard, rx/s, accepted/s, rejected/s, queue drops/s,
    /// overflow, Dam depth, oldest age (ms), shard rate, storm p.
    pub shards: Vec<[String; 10]>,
    /// Verdict and reject-reason rates, highest first: (where, name, rate).
    pub verdicts: Vec<(String, String, f64)>,
    /// Kafka and control lines.
    pub output: Vec<String>,
}

fn rate(now: &Scrape, prev: &Scrape, key: &str) -> f64 {
    let dt = match (now.at, prev.at) {
        (Some(a), Some(b)) => a.duration_since(b).as_secs_f64(),
        _ => 0.0,
    };
    match (now.get(key), prev.get(key)) {
        (Some(a), Some(b)) if dt > 0.0 => ((a - b) / dt).max(0.0),
        _ => 0.0,
    }
}

fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// The view from the last two scrapes.
pub fn view(now: &Scrape, prev: &Scrape) -> View {
    let g = |k: &str| now.get(k);
    let yes = |k: &str| g(k).map_or("?", |v| if v > 0.0 { "yes" } else { "no" });
    let mut v = View::default();
    let version = now
        .samples
        .keys()
        .find_map(|k| k.strip_prefix("klais_build_info{version=\""))
        .map_or("?", |r| r.trim_end_matches("\"}"));
    v.header.push(format!(
        "klais {version}  up {:.0}s  ready {}  broker up {}  breaker open {}  storm forecast {}",
        g("klais_uptime_seconds").unwrap_or(0.0),
        yes("klais_ready"),
        yes("klais_kafka_broker_up"),
        yes("klais_kafka_breaker_open"),
        yes("klais_control_storm"),
    ));
    let ceiling = g("klais_operator_ceiling_pps").filter(|c| c.is_finite());
    v.header.push(format!(
        "control: global rate {}  ceiling {}  predicted {:.0} devices / {:.0} messages  overrides {:.0}  denied {:.0}",
        g("klais_control_global_rate_pps").map_or("-".into(), fmt_rate),
        ceiling.map_or("none".into(), fmt_rate),
        g("klais_control_predicted_devices").unwrap_or(0.0),
        g("klais_control_predicted_messages").unwrap_or(0.0),
        g("klais_operator_overrides").unwrap_or(0.0),
        g("klais_operator_denied_devices").unwrap_or(0.0),
    ));
    let shards: Vec<String> = now
        .by_label("klais_shard_received_total", "shard", "")
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    for s in shards {
        let k = |name: &str| format!("{name}{{shard=\"{s}\"}}");
        let rejected: f64 = now
            .samples
            .keys()
            .filter(|key| {
                key.starts_with("klais_shard_rejects_total{")
                    && key.contains(&format!("shard=\"{s}\""))
            })
            .map(|key| rate(now, prev, key))
            .sum();
        v.shards.push([
            s.clone(),
            fmt_rate(rate(now, prev, &k("klais_shard_received_total"))),
            fmt_rate(rate(now, prev, &k("klais_shard_accepted_total"))),
            fmt_rate(rejected),
            fmt_rate(rate(now, prev, &k("klais_shard_queue_drops_total"))),
            format!(
                "{:.0}",
                g(&k("klais_shard_overflow_messages")).unwrap_or(0.0)
            ),
            format!("{:.0}", g(&k("klais_dam_depth")).unwrap_or(0.0)),
            format!(
                "{:.1}",
                g(&k("klais_dam_oldest_age_seconds")).unwrap_or(0.0) * 1e3
            ),
            g(&k("klais_dam_shard_rate_pps")).map_or("-".into(), fmt_rate),
            format!(
                "{:.2}",
                g(&k("klais_shard_storm_probability")).unwrap_or(0.0)
            ),
        ]);
    }
    let mut reasons: BTreeMap<String, f64> = BTreeMap::new();
    for key in now
        .samples
        .keys()
        .filter(|k| k.starts_with("klais_shard_rejects_total{"))
    {
        if let Some(i) = key.find("reason=\"") {
            let r = &key[i + 8..];
            let r = r[..r.find('"').unwrap_or(r.len())].to_string();
            *reasons.entry(r).or_default() += rate(now, prev, key);
        }
    }
    for (r, x) in reasons {
        v.verdicts.push(("shards".into(), r, x));
    }
    for (verdict, _) in now.by_label("klais_xdp_packets_total", "verdict", "") {
        let key = format!("klais_xdp_packets_total{{verdict=\"{verdict}\"}}");
        v.verdicts
            .push(("kernel".into(), verdict, rate(now, prev, &key)));
    }
    v.verdicts.sort_by(|a, b| b.2.total_cmp(&a.2));
    if g("klais_kafka_delivered_total").is_some() {
        let q = |class: &str, quant: &str| {
            g(&format!(
                "klais_kafka_added_latency_seconds{{class=\"{class}\",quantile=\"{quant}\"}}"
            ))
            .unwrap_or(0.0)
                * 1e3
        };
        v.output.push(format!(
            "kafka: delivered {}/s  buffered {:.0}  in flight {:.0}  journaled {:.0} ({:.1} MiB)  lost {:.0}",
            fmt_rate(rate(now, prev, "klais_kafka_delivered_total")),
            g("klais_kafka_buffered").unwrap_or(0.0),
            g("klais_kafka_in_flight").unwrap_or(0.0),
            g("klais_kafka_journaled").unwrap_or(0.0),
            g("klais_kafka_journal_bytes").unwrap_or(0.0) / 1048576.0,
            now.by_label("klais_kafka_dropped_total", "reason", "").iter().map(|x| x.1).sum::<f64>(),
        ));
        v.output.push(format!(
            "latency (ring -> ack, since start): P50 {:.1} ms  P99 {:.1} ms  P99.9 {:.1} ms  max {:.1} ms   DAPB B(t) {:.0} KiB  T(t) {:.1} ms",
            q("normal", "0.5"),
            q("normal", "0.99"),
            q("normal", "0.999"),
            q("normal", "1"),
            g("klais_dapb_batch_adaptive_bytes").unwrap_or(0.0) / 1024.0,
            g("klais_dapb_timeout_seconds").unwrap_or(0.0) * 1e3,
        ));
    } else {
        v.output.push(format!(
            "sink: {}/s records",
            fmt_rate(rate(now, prev, "klais_sink_records_total"))
        ));
    }
    v
}

/// The view as plain text (`--once`).
pub fn text(v: &View) -> String {
    let mut s = String::new();
    for h in &v.header {
        s.push_str(h);
        s.push('\n');
    }
    s.push_str(&format!(
        "{:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}\n",
        "shard", "rx/s", "acc/s", "rej/s", "qdrop/s", "overflow", "dam", "age ms", "rate", "storm"
    ));
    for r in &v.shards {
        s.push_str(&format!(
            "{:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}\n",
            r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]
        ));
    }
    s.push_str("verdicts /s:");
    for (w, n, x) in v.verdicts.iter().filter(|x| x.2 > 0.0).take(8) {
        s.push_str(&format!("  {w}:{n} {}", fmt_rate(*x)));
    }
    s.push('\n');
    for o in &v.output {
        s.push_str(o);
        s.push('\n');
    }
    s
}

/// Runs the live view until `q`/Esc (or one frame with `once`).
pub fn run(addr: SocketAddr, interval: Duration, once: bool) -> Result<(), String> {
    let mut prev = Scrape::parse(&http_get(addr, "/metrics")?);
    if once {
        std::thread::sleep(interval);
        let now = Scrape::parse(&http_get(addr, "/metrics")?);
        print!("{}", text(&view(&now, &prev)));
        return Ok(());
    }
    use ratatui::crossterm::event::{self, Event, KeyCode};
    let mut term = ratatui::init();
    let mut err = None;
    let mut now = prev.clone();
    let mut last = Instant::now() - interval;
    loop {
        if last.elapsed() >= interval {
            last = Instant::now();
            match http_get(addr, "/metrics") {
                Ok(t) => {
                    prev = std::mem::replace(&mut now, Scrape::parse(&t));
                    err = None;
                }
                Err(e) => err = Some(e),
            }
        }
        let v = view(&now, &prev);
        if let Err(e) = term.draw(|f| draw(f, &v, err.as_deref())) {
            ratatui::restore();
            return Err(e.to_string());
        }
        if event::poll(Duration::from_millis(100)).unwrap_or(false) {
            if let Ok(Event::Key(k)) = event::read() {
                if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                    break;
                }
            }
        }
    }
    ratatui::restore();
    Ok(())
}

fn draw(f: &mut ratatui::Frame, v: &View, err: Option<&str>) {
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Modifier, Style};
    use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
    let rows = (v.shards.len() as u16 + 3).min(20);
    let [head, shards, verdicts, out] = Layout::vertical([
        Constraint::Length(v.header.len() as u16 + 2 + u16::from(err.is_some())),
        Constraint::Length(rows),
        Constraint::Min(6),
        Constraint::Length(v.output.len() as u16 + 2),
    ])
    .areas(f.area());
    let mut lines = v.header.clone();
    if let Some(e) = err {
        lines.push(format!("scrape failed: {e}"));
    }
    f.render_widget(
        Paragraph::new(lines.join("\n")).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" klais top (q quits) "),
        ),
        head,
    );
    let header = Row::new([
        "shard",
        "rx/s",
        "accepted/s",
        "rejected/s",
        "q-drops/s",
        "overflow",
        "dam",
        "age ms",
        "rate",
        "storm",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let table = Table::new(
        v.shards.iter().map(|r| Row::new(r.iter().cloned())),
        [Constraint::Length(10); 10],
    )
    .header(header)
    .block(Block::default().borders(Borders::ALL).title(" shards "));
    f.render_widget(table, shards);
    let vrows = v
        .verdicts
        .iter()
        .filter(|x| x.2 > 0.0)
        .map(|(w, n, x)| Row::new([w.clone(), n.clone(), fmt_rate(*x)]));
    f.render_widget(
        Table::new(
            vrows,
            [
                Constraint::Length(8),
                Constraint::Length(20),
                Constraint::Length(10),
            ],
        )
        .header(
            Row::new(["where", "verdict", "per s"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::default().borders(Borders::ALL).title(" verdicts ")),
        verdicts,
    );
    f.render_widget(
        Paragraph::new(v.output.join("\n"))
            .block(Block::default().borders(Borders::ALL).title(" output ")),
        out,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_two_scrapes_and_shards_from_their_labels() {
        let t0 = Instant::now();
        let mut a = Scrape::parse(
            "# HELP x\nklais_shard_received_total{shard=\"0\"} 100\nklais_shard_received_total{shard=\"1\"} 0\nklais_shard_rejects_total{shard=\"0\",reason=\"bad_mac\"} 0\nklais_build_info{version=\"0.1.0\"} 1\n",
        );
        a.at = Some(t0);
        let mut b = Scrape::parse(
            "klais_shard_received_total{shard=\"0\"} 300\nklais_shard_received_total{shard=\"1\"} 50\nklais_shard_rejects_total{shard=\"0\",reason=\"bad_mac\"} 4\nklais_build_info{version=\"0.1.0\"} 1\n",
        );
        b.at = Some(t0 + Duration::from_secs(2));
        let v = view(&b, &a);
        assert_eq!(v.shards.len(), 2);
        assert_eq!(v.shards[0][1], "100");
        assert_eq!(v.shards[1][1], "25");
        assert_eq!(v.shards[0][3], "2");
        assert_eq!(v.verdicts[0], ("shards".into(), "bad_mac".into(), 2.0));
        assert!(v.header[0].starts_with("klais 0.1.0"));
        assert!(text(&v).contains("bad_mac 2"));
        // The terminal frame draws the same view.
        let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(140, 30)).unwrap();
        term.draw(|f| draw(f, &v, None)).unwrap();
        let screen: String = term
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        assert!(screen.contains("klais top (q quits)"), "{screen}");
        assert!(screen.contains("bad_mac"), "{screen}");
        assert!(screen.contains("accepted/s"), "{screen}");
    }
}
