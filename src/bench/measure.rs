//! The measurement side of `klais bench`: a Kafka consumer reading the
//! topic while the load runs. Every record's value is the JSON the generator
//! wrote (`ts_ns`, `seq`), its key the device id: from them it computes
//! per-device sequence completeness (loss), duplicates, reordering, and the
//! end-to-end latency (generator send → this consumer holds the record, one
//! clock: both run on the bench host) in an HdrHistogram, overall and per
//! second of send time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

/// Latency percentiles, µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50_us: u64,
    /// 90th.
    pub p90_us: u64,
    /// 99th.
    pub p99_us: u64,
    /// 99.9th.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Second {
    /// Second of the run (from the load's start).
    pub t: u64,
    /// Records the consumer read in this second.
    pub consumed: u64,
    /// Latency of the records sent in this second.
    pub latency: Percentiles,
}

/// What the consumer saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Measured {
    /// Records read.
    pub records: u64,
    /// Distinct (device, sequence) pairs read.
    pub unique: u64,
    /// Records whose (device, sequence) was read before.
    pub duplicates: u64,
    /// Records with a lower sequence than one already read for their device.
    pub reordered: u64,
    /// Records not from this run's generator (unknown key or unreadable JSON).
    pub foreign: u64,
    /// Expected messages (the generator's valid sends) never read.
    pub lost: u64,
    /// Devices with at least one message lost.
    pub devices_with_loss: u64,
    /// Latency over the whole run.
    pub latency: Percentiles,
    /// The latency CDF: (µs, share at or below), for plots.
    pub cdf: Vec<(u64, f64)>,
    /// Per second of the run.
    pub seconds: Vec<Second>,
    /// Seconds from the end of the load until the last record was read.
    pub drain_s: f64,
}

/// A running consumer.
pub struct Reader {
    handle: Option<std::thread::JoinHandle<Result<State, String>>>,
    /// Set to the number of valid messages sent, once the load ended.
    expected: Arc<AtomicU64>,
    /// Records read so far (for the progress bar).
    pub progress: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// When the load ended (the drain and its 3 s quiet rule count from it).
    ended: Arc<std::sync::Mutex<Option<Instant>>>,
}

/// Per-device sequence bitmaps.
struct State {
    seen: Vec<Vec<u64>>,
    max_seq: Vec<i64>,
    records: u64,
    unique: u64,
    duplicates: u64,
    reordered: u64,
    foreign: u64,
    hist: Histogram<u64>,
    by_send: Vec<Histogram<u64>>,
    consumed: Vec<u64>,
    drain_s: f64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// The unsigned decimal after `"key":` in `json`.
pub fn json_u64(json: &[u8], key: &[u8]) -> Option<u64> {
    let pos = json.windows(key.len() + 3).position(|w| {
        w[0] == b'"'
            && &w[1..=key.len()] == key
            && w[key.len() + 1] == b'"'
            && w[key.len() + 2] == b':'
    })?;
    let mut v: u64 = 0;
    let mut any = false;
    for &c in &json[pos + key.len() + 3..] {
        if c.is_ascii_digit() {
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            any = true;
        } else {
            break;
        }
    }
    any.then_some(v)
}

/// The device number of a generator id `dev-NNNNNNNN`.
pub fn device_index(key: &[u8]) -> Option<u32> {
    let digits = key.strip_prefix(b"dev-")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl State {
    fn new(devices: u32) -> Self {
        Self {
            seen: vec![Vec::new(); devices as usize],
            max_seq: vec![-1; devices as usize],
            records: 0,
            unique: 0,
            duplicates: 0,
            reordered: 0,
            foreign: 0,
            hist: histogram(),
            by_send: Vec::new(),
            consumed: Vec::new(),
            drain_s: 0.0,
        }
    }

    /// Accounts one record read at `now_ns` (wall clock), `sec` seconds into the run.
    fn record(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        now_ns: u64,
        start_ns: u64,
        sec: usize,
    ) {
        self.records += 1;
        if self.consumed.len() <= sec {
            self.consumed.resize(sec + 1, 0);
        }
        self.consumed[sec] += 1;
        let (Some(key), Some(value)) = (key, value) else {
            self.foreign += 1;
            return;
        };
        let (Some(dev), Some(seq), Some(ts)) = (
            device_index(key),
            json_u64(value, b"seq"),
            json_u64(value, b"ts_ns"),
        ) else {
            self.foreign += 1;
            return;
        };
        // Sequences beyond 2^26 (a 8 MB bitmap) are not this run's generator.
        let Some(bits) = self.seen.get_mut(dev as usize).filter(|_| seq < 1 << 26) else {
            self.foreign += 1;
            return;
        };
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if bits.len() <= w {
            bits.resize(w + 1, 0);
        }
        if bits[w] & (1 << b) != 0 {
            self.duplicates += 1;
            return;
        }
        bits[w] |= 1 << b;
        self.unique += 1;
        if (seq as i64) < self.max_seq[dev as usize] {
            self.reordered += 1;
        } else {
            self.max_seq[dev as usize] = seq as i64;
        }
        let lat_us = now_ns.saturating_sub(ts) / 1000;
        let _ = self.hist.record(lat_us.max(1));
        let s = (ts.saturating_sub(start_ns) / 1_000_000_000) as usize;
        if s < 3600 {
            while self.by_send.len() <= s {
                self.by_send.push(histogram());
            }
            let _ = self.by_send[s].record(lat_us.max(1));
        }
    }

    fn finish(self, per_device: &[u32]) -> Measured {
        let mut lost = 0u64;
        let mut devices_with_loss = 0u64;
        for (d, &sent) in per_device.iter().enumerate() {
            let bits = self.seen.get(d).map_or(&[][..], |v| &v[..]);
            let have: u64 = (0..sent)
                .filter(|s| {
                    bits.get((s / 64) as usize)
                        .is_some_and(|w| w & (1 << (s % 64)) != 0)
                })
                .count() as u64;
            let missing = u64::from(sent) - have;
            lost += missing;
            devices_with_loss += u64::from(missing > 0);
        }
        let n = self.by_send.len().max(self.consumed.len());
        let seconds = (0..n)
            .map(|s| Second {
                t: s as u64,
                consumed: self.consumed.get(s).copied().unwrap_or(0),
                latency: self.by_send.get(s).map(Percentiles::of).unwrap_or_default(),
            })
            .collect();
        // The CDF at 100 evenly spaced shares plus the tail (99.5 … 100 %).
        let cdf = if self.hist.is_empty() {
            Vec::new()
        } else {
            (0..100)
                .map(|i| f64::from(i) / 100.0)
                .chain([0.995, 0.999, 0.9995, 0.9999, 1.0])
                .map(|q| (self.hist.value_at_quantile(q), q))
                .collect()
        };
        Measured {
            records: self.records,
            unique: self.unique,
            duplicates: self.duplicates,
            reordered: self.reordered,
            foreign: self.foreign,
            lost,
            devices_with_loss,
            latency: Percentiles::of(&self.hist),
            cdf,
            seconds,
            drain_s: self.drain_s,
        }
    }
}

impl Reader {
    /// Starts reading `topic` (every partition, from the beginning, or from
    /// its end with `from_end`: a topic the bench did not make) on
    /// `brokers`. `started_ns` is where the load stores its start (wall
    /// clock, the clock the generator stamps) when it begins sending: the
    /// per-second series count from it. Fails if the topic's metadata cannot be read.
    pub fn start(
        brokers: &str,
        topic: &str,
        devices: u32,
        started_ns: Arc<AtomicU64>,
        from_end: bool,
    ) -> Result<Self, String> {
        let mut c = crate::kafka::consume::base(brokers);
        c.set("fetch.wait.max.ms", "5").set("fetch.min.bytes", "1");
        let consumer: BaseConsumer = c.create().map_err(|e| format!("consumer: {e}"))?;
        // Metadata through the reading consumer itself: it is connected and
        // ready when the load starts (a separate client for the lookup left
        // this one to connect during the first second, ~0.5 s late).
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| format!("topic {topic} on {brokers}: {e}"))?;
        let parts = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len() as i32);
        if parts == 0 {
            return Err(format!("topic {topic} on {brokers} has no partitions"));
        }
        let mut tpl = TopicPartitionList::new();
        for p in 0..parts {
            // From the end as it is now (not as it is at the first fetch,
            // which races the load).
            let at = if from_end {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .map_err(|e| format!("topic {topic} partition {p}: {e}"))?;
                Offset::Offset(high)
            } else {
                Offset::Beginning
            };
            tpl.add_partition_offset(topic, p, at)
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let expected = Arc::new(AtomicU64::new(u64::MAX));
        let progress = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let ended: Arc<std::sync::Mutex<Option<Instant>>> = Arc::new(std::sync::Mutex::new(None));
        let handle = {
            let (expected, progress, stop, ended) = (
                expected.clone(),
                progress.clone(),
                stop.clone(),
                ended.clone(),
            );
            std::thread::Builder::new()
                .name("bench-consumer".into())
                .spawn(move || {
                    let mut st = State::new(devices);
                    let mut last_record = Instant::now();
                    loop {
                        let exp = expected.load(Ordering::Relaxed);
                        let ended_at = (exp != u64::MAX)
                            .then(|| *ended.lock().unwrap_or_else(|e| e.into_inner()))
                            .flatten();
                        if let Some(end) = ended_at {
                            let last_record = last_record.max(end);
                            // Done when every expected message is in, or the
                            // topic stayed quiet for 3 s (the rest is lost),
                            // or 60 s after the load ended.
                            if st.unique >= exp
                                || last_record.elapsed() > Duration::from_secs(3)
                                || end.elapsed() > Duration::from_secs(60)
                            {
                                st.drain_s =
                                    last_record.saturating_duration_since(end).as_secs_f64();
                                break;
                            }
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match consumer.poll(Duration::from_millis(50)) {
                            Some(Ok(m)) => {
                                let now_ns = crate::clock::now_ns();
                                let start_ns = match started_ns.load(Ordering::Relaxed) {
                                    0 => now_ns,
                                    s => s,
                                };
                                let sec =
                                    (now_ns.saturating_sub(start_ns) / 1_000_000_000) as usize;
                                st.record(m.key(), m.payload(), now_ns, start_ns, sec);
                                last_record = Instant::now();
                                progress.store(st.records, Ordering::Relaxed);
                            }
                            Some(Err(e)) => {
                                tracing::debug!("bench consumer: {e}");
                            }
                            None => {}
                        }
                    }
                    Ok(st)
                })
                .map_err(|e| e.to_string())?
        };
        Ok(Self {
            handle: Some(handle),
            expected,
            progress,
            stop,
            ended,
        })
    }

    /// Tells the consumer the load ended at `ended` with `sent_valid`
    /// messages, waits until it read them all (or gave up) and returns what
    /// it saw.
    pub fn finish(
        mut self,
        per_device: &[u32],
        sent_valid: u64,
        ended: Instant,
    ) -> Result<Measured, String> {
        *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(ended);
        self.expected.store(sent_valid, Ordering::Relaxed);
        let st = self
            .handle
            .take()
            .ok_or("bench consumer already finished")?
            .join()
            .map_err(|_| "bench consumer panicked".to_string())??;
        Ok(st.finish(per_device))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_device_numbers_are_read_from_generator_records() {
        let v = br#"{"ts_ns":1700000000123456789,"seq":42,"pad":"xx"}"#;
        assert_eq!(json_u64(v, b"ts_ns"), Some(1_700_000_000_123_456_789));
        assert_eq!(json_u64(v, b"seq"), Some(42));
        assert_eq!(json_u64(v, b"pad"), None);
        assert_eq!(json_u64(v, b"missing"), None);
        assert_eq!(device_index(b"dev-00001234"), Some(1234));
        assert_eq!(device_index(b"sensor-1"), None);
    }

    #[test]
    fn loss_duplicates_and_reordering_are_told_apart() {
        let mut st = State::new(2);
        let rec = |st: &mut State, dev: &str, seq: u64| {
            let v = format!("{{\"ts_ns\":1000000,\"seq\":{seq}}}");
            st.record(Some(dev.as_bytes()), Some(v.as_bytes()), 3_000_000, 0, 0);
        };
        for s in [0, 1, 3, 2, 3] {
            rec(&mut st, "dev-00000000", s);
        }
        rec(&mut st, "dev-00000001", 0);
        rec(&mut st, "other", 0);
        let m = st.finish(&[5, 2]);
        assert_eq!(m.records, 7);
        assert_eq!(m.unique, 5);
        assert_eq!(m.duplicates, 1, "seq 3 twice");
        assert_eq!(m.reordered, 1, "2 after 3");
        assert_eq!(m.foreign, 1);
        assert_eq!(m.lost, 2, "dev 0 seq 4, dev 1 seq 1");
        assert_eq!(m.devices_with_loss, 2);
        assert_eq!(m.latency.p50_us, 2000);
    }
}
