//! The KLAIS paper's Rust baseline, re-created for `klais bench compare`:
//! a tokio UDP receiver forwarding every datagram to Kafka through rdkafka's
//! `FutureProducer`, written the way such a gateway commonly is. One task
//! receives, checks the 0xAA55 v1 header and enqueues (key = device id with
//! its NUL padding trimmed, value = payload); a second task awaits the
//! delivery futures in order and counts them. Producer settings as klais's
//! (acks=all, idempotence, lz4, murmur2_random partitioner, linger 5 ms).
//! Runs on tokio's multi-thread runtime with its default worker count.
//!
//!     klais-baseline-tokio --listen 10.0.0.1:7700 --brokers 127.0.0.1:9092 --topic t
//!
//! Prints "listening on ..." when ready; on SIGTERM/SIGINT it stops
//! receiving, waits for every delivery, prints "received N forwarded N
//! invalid N failed N" and exits.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};

const HEADER: usize = 22;
const MAGIC: u16 = 0xAA55;

fn arg(name: &str) -> String {
    let mut it = std::env::args();
    while let Some(a) = it.next() {
        if a == name {
            if let Some(v) = it.next() {
                return v;
            }
        }
    }
    eprintln!("usage: klais-baseline-tokio --listen ADDR:PORT --brokers HOST:PORT --topic NAME (missing {name})");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let (listen, brokers, topic) = (arg("--listen"), arg("--brokers"), arg("--topic"));
    let producer: FutureProducer = match ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .set("queue.buffering.max.messages", "1000000")
        .create()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: producer: {e}");
            std::process::exit(1);
        }
    };
    // Connected (metadata for the topic) before receiving, as a gateway would.
    {
        use rdkafka::producer::Producer;
        let p = producer.clone();
        let t = topic.clone();
        let md = tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(Some(&t), Duration::from_secs(30))
                .map(|_| ())
        })
        .await;
        if let Ok(Err(e)) = md {
            eprintln!("error: broker {brokers}: {e}");
            std::process::exit(1);
        }
    }
    let sock = match std::net::UdpSocket::bind(&listen) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: bind {listen}: {e}");
            std::process::exit(1);
        }
    };
    let sock = socket2::Socket::from(sock);
    let _ = sock.set_recv_buffer_size(32 << 20);
    let _ = sock.set_nonblocking(true);
    let sock = UdpSocket::from_std(sock.into()).expect("tokio socket");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let waiter = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u64, 0u64);
        while let Some(fut) = rx.recv().await {
            match fut {
                Ok(f) => match f.await {
                    Ok(Ok(_)) => ok += 1,
                    _ => failed += 1,
                },
                Err(()) => failed += 1,
            }
        }
        (ok, failed)
    });
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    eprintln!("listening on {listen}");
    let (mut received, mut invalid) = (0u64, 0u64);
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let Ok((n, _)) = r else { continue };
                received += 1;
                let d = &buf[..n];
                if n < HEADER || u16::from_be_bytes([d[0], d[1]]) != MAGIC {
                    invalid += 1;
                    continue;
                }
                let id = &d[2..18];
                let key = &id[..id.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1)];
                let rec = FutureRecord::to(&topic).key(key).payload(&d[HEADER..]);
                // Enqueue without waiting; when librdkafka's queue is full, wait a little and retry.
                let mut rec = rec;
                let fut = loop {
                    match producer.send_result(rec) {
                        Ok(f) => break Ok(f),
                        Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                            rec = r;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err(_) => break Err(()),
                    }
                };
                let _ = tx.send(fut);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(tx);
    let (ok, failed) = waiter.await.unwrap_or((0, 0));
    eprintln!("received {received} forwarded {ok} invalid {invalid} failed {failed}");
}
