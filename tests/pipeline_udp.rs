//! End to end over real UDP on loopback: datagrams of every kind go into a
//! running klais (glommio shard pinned to a CPU, rtrb ring, file sink) and what
//! comes out is exactly the accepted ones, in order, with every other datagram
//! counted under its reason.

mod common;

use std::net::UdpSocket;

use common::{file_sink_config as test_config, start_or_skip};

use klais::wire::{encode, Reject, HEADER_LEN, MAX_DATAGRAM};

fn dgram(id: &str, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0; HEADER_LEN + payload.len()];
    encode(id, seq, payload, &mut b).unwrap();
    b
}

#[test]
fn every_datagram_is_written_or_counted_under_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.jsonl");
    let Some(running) = start_or_skip(&test_config(&out)) else {
        return;
    };
    let to = running.local_addr();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();

    let mut bad_magic = dgram("a", 1, b"{}");
    bad_magic[0] = 0x12;
    let mut empty_id = dgram("a", 1, b"{}");
    empty_id[2] = 0;
    let mut not_utf8 = dgram("ab", 1, b"{}");
    not_utf8[2] = 0xFF;
    let huge = dgram("big", 1, &vec![b' '; MAX_DATAGRAM - HEADER_LEN]);
    let sends: Vec<Vec<u8>> = vec![
        dgram("sensor-1", 1, br#"{"t":1}"#),
        vec![],
        vec![0xAA; 21],
        bad_magic,
        empty_id,
        not_utf8,
        huge,
        dgram("sensor-1", 2, br#"{"t":"#),
        dgram("sensor-2", 10, br#"{"t":2}"#),
        dgram("sensor-1", 3, br#"{"t":3}"#),
        dgram("sensor-1", 3, br#"{"t":3}"#),
        dgram("sensor-2", 0, br#"{"t":4}"#),
    ];
    for s in &sends {
        tx.send_to(s, to).unwrap();
    }
    let summary = running.stop().unwrap();

    let sh = &summary.shards;
    assert_eq!(sh.received, sends.len() as u64);
    assert_eq!(sh.accepted, 4);
    assert_eq!(summary.sink.records, 4);
    let want = [
        (Reject::TooShort, 2),
        (Reject::BadMagic, 1),
        (Reject::DeviceIdEmpty, 1),
        (Reject::DeviceIdNotUtf8, 1),
        (Reject::PayloadTooLarge, 1),
        (Reject::PayloadNotJson, 1),
        (Reject::DuplicateSequence, 1),
        (Reject::QueueFull, 0),
    ];
    for (r, n) in want {
        assert_eq!(sh.rejects.get(r), n, "{}", r.name());
    }
    assert_eq!(sh.seq.resets, 1, "sensor-2 restarted at 0");
    assert_eq!(
        sh.seq.gaps, 1,
        "sensor-1 skipped 2 (its seq 2 was not JSON)"
    );

    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(String, u64, String, serde_json::Value)> = lines
        .iter()
        .map(|v| {
            (
                v["device_id"].as_str().unwrap().to_string(),
                v["sequence"].as_u64().unwrap(),
                v["seq_event"].as_str().unwrap().to_string(),
                v["payload"].clone(),
            )
        })
        .collect();
    let j = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
    assert_eq!(
        got,
        vec![
            ("sensor-1".into(), 1, "new".into(), j(r#"{"t":1}"#)),
            ("sensor-2".into(), 10, "new".into(), j(r#"{"t":2}"#)),
            ("sensor-1".into(), 3, "gap".into(), j(r#"{"t":3}"#)),
            ("sensor-2".into(), 0, "reset".into(), j(r#"{"t":4}"#)),
        ]
    );
    for v in &lines {
        assert!(v["recv_ts_ns"].as_u64().unwrap() > 1_600_000_000_000_000_000);
        assert_eq!(v["shard"], 0);
    }
}

#[test]
fn a_burst_from_many_devices_arrives_complete_and_in_per_device_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.jsonl");
    let Some(running) = start_or_skip(&test_config(&out)) else {
        return;
    };
    let to = running.local_addr();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let devices = 50u32;
    let per_device = 40u32;
    for seq in 0..per_device {
        for d in 0..devices {
            let payload = format!("{{\"d\":{d},\"s\":{seq}}}");
            tx.send_to(&dgram(&format!("dev-{d}"), seq, payload.as_bytes()), to)
                .unwrap();
        }
    }
    let summary = running.stop().unwrap();
    let total = u64::from(devices * per_device);
    assert_eq!(
        summary.shards.queue_drops, 0,
        "the socket buffer held the burst"
    );
    assert_eq!(summary.shards.received, total);
    assert_eq!(summary.shards.accepted, total);
    assert_eq!(summary.sink.records, total);
    let mut next = vec![0u64; devices as usize];
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let d = v["payload"]["d"].as_u64().unwrap() as usize;
        assert_eq!(
            v["sequence"].as_u64().unwrap(),
            next[d],
            "device {d} out of order"
        );
        next[d] += 1;
    }
    assert!(next.iter().all(|&n| n == u64::from(per_device)));
}

#[test]
fn two_shards_deliver_every_device_once_in_order_whichever_socket_receives_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.jsonl");
    let mut cfg = test_config(&out);
    cfg.ingest.shards = 2;
    let Some(running) = start_or_skip(&cfg) else {
        return;
    };
    let to = running.local_addr();
    // Several source ports: SO_REUSEPORT spreads them over both sockets, so
    // devices arrive on shards that do not own them.
    let senders: Vec<UdpSocket> = (0..8)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let devices = 40u32;
    let per_device = 25u32;
    for seq in 0..per_device {
        for d in 0..devices {
            let payload = format!("{{\"d\":{d},\"s\":{seq}}}");
            // Each device always uses the same source port: per-device order
            // is kept by the sender as it would be by a real device.
            senders[(d % 8) as usize]
                .send_to(&dgram(&format!("dev-{d}"), seq, payload.as_bytes()), to)
                .unwrap();
        }
    }
    let summary = running.stop().unwrap();
    let total = u64::from(devices * per_device);
    let sh = &summary.shards;
    assert_eq!(sh.received, total);
    assert_eq!(sh.accepted, total, "{sh:?}");
    assert_eq!(sh.rejects.total(), 0);
    assert!(
        sh.forwarded_out > 0,
        "some devices arrived on the other shard: {sh:?}"
    );
    assert_eq!(sh.forwarded_out, sh.forwarded_in);
    assert_eq!(summary.sink.records, total);
    let mut next = vec![0u64; devices as usize];
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let d = v["payload"]["d"].as_u64().unwrap() as usize;
        assert_eq!(
            v["sequence"].as_u64().unwrap(),
            next[d],
            "device {d} out of order or twice"
        );
        let id = v["device_id"].as_str().unwrap();
        let owner = klais::wire::device_hash(&klais::wire::raw_device_id(id).unwrap()) % 2;
        assert_eq!(
            v["shard"].as_u64().unwrap(),
            owner,
            "{id} delivered by its owner"
        );
        next[d] += 1;
    }
    assert!(next.iter().all(|&n| n == u64::from(per_device)));
}

#[test]
fn stopping_under_load_loses_nothing_that_was_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.jsonl");
    let mut cfg = test_config(&out);
    cfg.ingest.shards = 2;
    cfg.protocol.validate_json = true;
    let Some(running) = start_or_skip(&cfg) else {
        return;
    };
    let spec = klais::gen::GenSpec {
        target: running.local_addr(),
        devices: 500,
        rate_pps: 0,
        count: None,
        duration: Some(std::time::Duration::from_secs(3)),
        payload_bytes: 120,
        malformed_ppm: 20_000,
        seed: 7,
        v2_keys: None,
    };
    let gen_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let gen_stop = gen_stop.clone();
        std::thread::spawn(move || klais::gen::run(&spec, &gen_stop).unwrap())
    };
    // Stop klais while the generator is still sending.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let summary = running.stop().unwrap();
    gen_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let sh = &summary.shards;
    assert!(sh.received > 0 && sent.sent_valid > 0);
    assert_eq!(
        sh.received,
        sh.accepted + sh.rejects.total(),
        "every datagram received is accepted or rejected by reason: {sh:?}"
    );
    assert_eq!(
        summary.sink.records, sh.accepted,
        "every accepted message was delivered"
    );
    let lines = std::fs::read_to_string(&out).unwrap().lines().count() as u64;
    assert_eq!(lines, sh.accepted);
    assert!(
        sh.rejects.get(Reject::BadMagic)
            + sh.rejects.get(Reject::TooShort)
            + sh.rejects.get(Reject::PayloadNotJson)
            > 0
    );
}

#[test]
fn datagrams_the_kernel_drops_at_a_full_socket_buffer_are_counted() {
    use std::os::fd::AsRawFd;
    let rx = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    rx.set_recv_buffer_size(4096).unwrap();
    rx.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    let to = rx.local_addr().unwrap().as_socket().unwrap();
    assert_eq!(klais::ingest::udp::socket_drops(rx.as_raw_fd()), Some(0));
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    for seq in 0..200 {
        tx.send_to(&dgram("flood", seq, &[b' '; 1000]), to).unwrap();
    }
    let drops = klais::ingest::udp::socket_drops(rx.as_raw_fd()).unwrap();
    assert!(drops > 0, "a 4 KiB buffer cannot hold 200 KB");
}

#[test]
fn the_dam_holds_a_flooding_device_back_without_losing_or_reordering() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.jsonl");
    let mut cfg = test_config(&out);
    // 20 msg/s per device, burst 10: a device sending 200 at once waits.
    cfg.dam.device_rate_pps = Some(20);
    cfg.dam.device_burst = Some(10);
    let Some(running) = start_or_skip(&cfg) else {
        return;
    };
    let to = running.local_addr();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    for seq in 0..200u32 {
        tx.send_to(&dgram("flood-1", seq, br#"{"v":1}"#), to)
            .unwrap();
        if seq % 20 == 0 {
            // Others keep getting through while the flood waits.
            tx.send_to(&dgram(&format!("calm-{seq}"), 0, br#"{"v":2}"#), to)
                .unwrap();
        }
    }
    // Let the Dam release some at the device's rate.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mid = running.snapshot().0;
    assert!(
        mid.dam.queued > 100,
        "the flood waited in the Dam: {:?}",
        mid.dam
    );
    let summary = running.stop().unwrap();
    let sh = &summary.shards;
    assert_eq!(sh.received, 210);
    assert_eq!(sh.rejects.total(), 0, "nothing dropped: {:?}", sh.rejects);
    assert_eq!(sh.accepted, 210, "what waited was handed on at stop");
    assert_eq!(summary.sink.records, 210);
    let text = std::fs::read_to_string(&out).unwrap();
    let mut flood = Vec::new();
    let mut calm_seen = 0;
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        match v["device_id"].as_str().unwrap() {
            "flood-1" => flood.push(v["sequence"].as_u64().unwrap()),
            _ => {
                calm_seen += 1;
                // Calm devices are not stuck behind the flood.
                assert!(i < 30 + calm_seen * 2, "calm device at line {i}");
            }
        }
    }
    assert_eq!(calm_seen, 10);
    assert_eq!(flood, (0..200).collect::<Vec<u64>>(), "in order, complete");
}

#[test]
fn the_control_core_forecasts_a_reconnection_wave_and_the_dam_admits_the_flush() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.jsonl");
    let mut cfg = test_config(&out);
    cfg.sequence.max_devices = 8192;
    // Steady telemetry needs 1 msg/s per device; a backlog flush far more.
    cfg.dam.device_rate_pps = Some(2);
    cfg.dam.device_burst = Some(2);
    let Some(running) = start_or_skip(&cfg) else {
        return;
    };
    let to = running.local_addr();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let devices = 2000u32;
    let id = |d: u32| format!("gw-dev-{d:05}");
    // Normal traffic: every device once, sequences 100.. (they ran before).
    for d in 0..devices {
        tx.send_to(&dgram(&id(d), 100, br#"{"v":0}"#), to).unwrap();
    }
    // Quiet long enough for the predictor's baseline to forget the start
    // (every device was new then).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // The wave: over about a second every device restarts at sequence 0 and
    // flushes a backlog of 20 messages.
    let start = std::time::Instant::now();
    for d in 0..devices {
        for seq in 0..20u32 {
            tx.send_to(&dgram(&id(d), seq, br#"{"v":1}"#), to).unwrap();
        }
        let due = std::time::Duration::from_micros(500 * u64::from(d + 1));
        if let Some(w) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(w);
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let summary = running.stop().unwrap();
    let c = summary.control.expect("the control core ran");
    assert!(c.storms >= 1, "the wave was forecast: {c:?}");
    let sh = &summary.shards;
    assert_eq!(sh.rejects.total(), 0, "nothing dropped: {:?}", sh.rejects);
    assert_eq!(summary.sink.records, u64::from(devices) * 21);
    assert!(sh.seq.resets >= u64::from(devices) / 2, "{:?}", sh.seq);
    // Without the forecast, 18 of each device's 20 flushed messages would
    // wait behind its 2 msg/s limit; with it most devices flush unhindered.
    assert!(
        sh.dam.queued < u64::from(devices) * 18 / 2,
        "storm settings admitted the flush: {:?}",
        sh.dam
    );
}
