//! Reading a topic back: `klais kafka consume`, the demo's check and the broker
//! test tier. Assigns every partition from the beginning (no consumer group
//! offsets are committed) and reads until the expected count or until the topic
//! stays quiet for `idle`.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Security;

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Key bytes.
    pub key: Vec<u8>,
    /// Value bytes.
    pub payload: Vec<u8>,
    /// Headers in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Record timestamp, ms.
    pub timestamp_ms: Option<i64>,
}

impl Consumed {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Partitions of `topic` (waits up to `timeout` for metadata).
pub fn partitions(brokers: &str, topic: &str, timeout: Duration) -> Result<i32, KafkaError> {
    partitions_with(brokers, &Security::default(), topic, timeout)
}

fn partitions_with(
    brokers: &str,
    sec: &Security,
    topic: &str,
    timeout: Duration,
) -> Result<i32, KafkaError> {
    let c: BaseConsumer = secured(brokers, sec)?.create()?;
    let md = c.fetch_metadata(Some(topic), timeout)?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len() as i32))
}

/// A consumer configuration for reading a topic back: its own group, no
/// committed offsets, no end-of-partition events; callers override settings
/// (the bench sets a 5 ms fetch wait).
pub fn base(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", format!("klais-check-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50");
    c
}

/// [`base`] with `[output.kafka.security]`'s TLS and SASL (the files
/// checked as the producer checks them).
fn secured(brokers: &str, sec: &Security) -> Result<ClientConfig, KafkaError> {
    let mut c = base(brokers);
    super::security_config(sec, &mut c).map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
    Ok(c)
}

/// Calls `each` for every record of `topic` from the beginning, until `stop`
/// records were read (if given) or nothing arrived for `idle`. Returns the count.
pub fn for_each(
    brokers: &str,
    topic: &str,
    stop: Option<u64>,
    idle: Duration,
    each: impl FnMut(Consumed),
) -> Result<u64, KafkaError> {
    for_each_with(brokers, &Security::default(), topic, stop, idle, each)
}

/// [`for_each`] through `sec` (TLS, SASL).
pub fn for_each_with(
    brokers: &str,
    sec: &Security,
    topic: &str,
    stop: Option<u64>,
    idle: Duration,
    mut each: impl FnMut(Consumed),
) -> Result<u64, KafkaError> {
    let n = partitions_with(brokers, sec, topic, Duration::from_secs(10))?;
    let c: BaseConsumer = secured(brokers, sec)?.create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let mut count = 0u64;
    let mut last = Instant::now();
    while stop.map_or(true, |s| count < s) && last.elapsed() < idle {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                count += 1;
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| (x.key.to_string(), x.value.unwrap_or(&[]).to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                each(Consumed {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().unwrap_or(&[]).to_vec(),
                    payload: m.payload().unwrap_or(&[]).to_vec(),
                    headers,
                    timestamp_ms: m.timestamp().to_millis(),
                });
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(count)
}

/// Java-client-compatible partition of a key (murmur2, as librdkafka's
/// `murmur2_random` partitioner for non-empty keys): the native client's own
/// function, so the broker tier's check of librdkafka's partitions checks it.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    crate::wire::kafka::partition_for(key, partitions.max(1) as u32) as i32
}
