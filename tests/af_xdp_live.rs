//! AF_XDP receive on a veth pair between two network namespaces this test
//! creates and removes: the XDP filter redirects accepted klais datagrams to
//! the socket bound in its XSKMAP (verdict `redirect`), drops bad ones, and
//! the socket delivers every accepted datagram, in order, to user space.
//!
//! Root tier (`#[ignore = "root"]`): `cargo test -- --ignored root::`, as
//! root, with iproute2.

use std::net::UdpSocket;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use klais::ingest::af_xdp::{udp_payload, Pass, XskConfig, XskSocket};
use klais::wire;
use klais::xdp::{AttachMode, Limits, LoadOptions, Verdict, XdpProgram};

mod common;

use common::{enter, topology, v1, ADDR_A, ADDR_B};

/// Root tier: `cargo test -- --ignored root::`, as root.
mod root {
    use super::*;

    #[test]
    #[ignore = "root"]
    fn accepted_datagrams_are_redirected_to_the_af_xdp_socket_in_order() {
        common::require_netns();
        let t = topology("x", 1);
        let (a, b, ia) = (t.a.clone(), t.b.clone(), t.ia.clone());
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let total = 300u32;
        let receiver = {
            let (a, ia) = (a.clone(), ia.clone());
            std::thread::spawn(move || {
                enter(&a);
                let prog = XdpProgram::load(&LoadOptions::default(), &Limits::default()).unwrap();
                let att = prog.attach(&ia, AttachMode::Native).unwrap();
                let mut xsk = XskSocket::open(&ia, 0, &XskConfig::default()).unwrap();
                prog.maps().bind_xsk(0, &mut xsk).unwrap();
                ready_tx.send(()).unwrap();
                let mut got: Vec<(String, u32)> = Vec::new();
                let opts = wire::ParseOptions {
                    max_payload: 1400,
                    validate_json: true,
                };
                let deadline = Instant::now() + Duration::from_secs(10);
                while got.len() < total as usize && Instant::now() < deadline {
                    let n = xsk.recv_batch(|pass, frame| {
                        if pass == Pass::Prefetch {
                            return;
                        }
                        let p = udp_payload(frame).expect("a UDP frame");
                        let d = wire::parse(p, &opts).expect("a valid v1 datagram");
                        got.push((d.device_id.to_string(), d.sequence));
                    });
                    if n == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                // Anything else still arriving would be a bug: give it a moment.
                std::thread::sleep(Duration::from_millis(100));
                xsk.recv_batch(|pass, _| {
                    if pass == Pass::Process {
                        got.push(("unexpected".into(), 0))
                    }
                });
                let c = prog.maps().counters().unwrap();
                prog.maps().unbind_socket(0).unwrap();
                att.detach().unwrap();
                (got, c, xsk.frames)
            })
        };
        ready_rx.recv().unwrap();
        enter(&b);
        let tx = UdpSocket::bind(format!("{ADDR_B}:0")).unwrap();
        for seq in 0..total {
            let dev = format!("xsk-dev-{}", seq % 3);
            tx.send_to(&v1(&dev, seq / 3), format!("{ADDR_A}:7700"))
                .unwrap();
            let mut bad = v1(&dev, 9999);
            bad[0] = 0;
            tx.send_to(&bad, format!("{ADDR_A}:7700")).unwrap();
            if seq % 32 == 31 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let (got, c, frames) = receiver.join().unwrap();
        assert_eq!(
            got.len(),
            total as usize,
            "every accepted datagram reached the AF_XDP socket: {c:?}"
        );
        for d in 0..3 {
            let seqs: Vec<u32> = got
                .iter()
                .filter(|g| g.0 == format!("xsk-dev-{d}"))
                .map(|g| g.1)
                .collect();
            assert_eq!(
                seqs,
                (0..total / 3).collect::<Vec<_>>(),
                "device {d} in order"
            );
        }
        assert_eq!(c.get(Verdict::Redirect), u64::from(total));
        assert_eq!(c.get(Verdict::BadMagic), u64::from(total));
        assert_eq!(
            c.get(Verdict::Pass),
            0,
            "nothing took the kernel path while the socket was bound"
        );
        assert_eq!(frames, u64::from(total));
    }

    #[test]
    #[ignore = "root"]
    fn klais_on_the_af_xdp_backend_delivers_every_device_in_order_across_two_queues() {
        two_shards_on_veth(klais::config::Backend::AfXdp, "y");
    }

    #[test]
    #[ignore = "root"]
    fn klais_on_the_udp_backend_behind_the_filter_delivers_every_device_in_order() {
        two_shards_on_veth(klais::config::Backend::Udp, "z");
    }

    /// klais with two shards in namespace A on a two-queue veth pair, the XDP
    /// filter attached, devices sending from namespace B over several flows.
    fn two_shards_on_veth(backend: klais::config::Backend, tag: &str) {
        common::require_netns();
        let t = topology(tag, 2);
        let (a, b, ia) = (t.a.clone(), t.b.clone(), t.ia.clone());
        let (addr_a, addr_b) = (ADDR_A.to_string(), ADDR_B.to_string());
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("records.jsonl");
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let (sent_tx, sent_rx) = mpsc::channel::<()>();
        let appliance = {
            let (a, ia, out, addr_a) = (a.clone(), ia.clone(), out.clone(), addr_a.clone());
            std::thread::spawn(move || {
                enter(&a);
                let mut cfg = klais::config::Config::default();
                cfg.ingest.backend = backend;
                cfg.ingest.shards = 2;
                cfg.admin.listen = "127.0.0.1:0".parse().unwrap();
                cfg.ingest.listen = format!("{addr_a}:7700").parse().unwrap();
                cfg.xdp.iface = Some(ia.clone());
                cfg.xdp.mode = AttachMode::Native;
                cfg.protocol.validate_json = true;
                cfg.output.sink = klais::config::SinkKind::File;
                cfg.output.path = Some(out);
                cfg.telemetry.stats_interval_ms = 100;
                cfg.validate().unwrap();
                let running = klais::runtime::start(&cfg).unwrap();
                // Ready: the filter attached, both shards and the output running.
                let admin = running.admin_addr().unwrap();
                let ready = klais::top::http_get(admin, "/ready");
                assert!(
                    ready.as_deref().is_ok_and(|b| b.contains("\"ready\"")),
                    "{ready:?}"
                );
                ready_tx.send(()).unwrap();
                sent_rx.recv().unwrap();
                std::thread::sleep(Duration::from_millis(300));
                // The kernel's verdicts are in /metrics.
                let m = klais::top::http_get(admin, "/metrics").unwrap();
                assert!(
                    m.lines()
                        .any(|l| l.starts_with("klais_xdp_packets_total{verdict=")
                            && !l.ends_with(" 0")),
                    "{m}"
                );
                let summary = running.stop().unwrap();
                let after = klais::xdp::status(&ia).unwrap();
                (summary, after)
            })
        };
        ready_rx.recv().unwrap();
        enter(&b);
        let senders: Vec<UdpSocket> = (0..8)
            .map(|_| UdpSocket::bind(format!("{addr_b}:0")).unwrap())
            .collect();
        let (devices, per_device) = (24u32, 20u32);
        for seq in 0..per_device {
            for d in 0..devices {
                senders[(d % 8) as usize]
                    .send_to(&v1(&format!("afx-{d}"), seq), format!("{addr_a}:7700"))
                    .unwrap();
            }
            std::thread::sleep(Duration::from_millis(3));
        }
        sent_tx.send(()).unwrap();
        let (summary, after) = appliance.join().unwrap();
        let total = u64::from(devices * per_device);
        let x = summary.xdp.unwrap();
        let want = if backend == klais::config::Backend::AfXdp {
            Verdict::Redirect
        } else {
            Verdict::Pass
        };
        assert_eq!(x.get(want), total, "{x:?}");
        let sh = &summary.shards;
        assert_eq!(
            (sh.received, sh.accepted, summary.sink.records),
            (total, total, total),
            "{sh:?}"
        );
        let mut next = vec![0u32; devices as usize];
        for line in std::fs::read_to_string(&out).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let dev: usize = v["device_id"].as_str().unwrap()[4..].parse().unwrap();
            assert_eq!(
                v["sequence"].as_u64().unwrap(),
                u64::from(next[dev]),
                "afx-{dev} out of order or twice"
            );
            next[dev] += 1;
        }
        assert!(next.iter().all(|&n| n == per_device));
        assert_eq!(after.prog_id, 0, "XDP detached at stop");
        println!(
            "{backend:?}: forwarded between shards: {} of {total}",
            sh.forwarded_out
        );
    }

    #[test]
    #[ignore = "root"]
    fn frames_the_kernel_cannot_put_in_a_full_rx_ring_are_counted() {
        common::require_netns();
        let t = topology("w", 1);
        let (a, b, ia) = (t.a.clone(), t.b.clone(), t.ia.clone());
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let (sent_tx, sent_rx) = mpsc::channel::<()>();
        let receiver = std::thread::spawn(move || {
            enter(&a);
            let prog = XdpProgram::load(&LoadOptions::default(), &Limits::default()).unwrap();
            let att = prog.attach(&ia, AttachMode::Native).unwrap();
            // A tiny RX ring that nobody reads while the burst arrives.
            let cfg = XskConfig {
                frames: 64,
                frame_size: 2048,
                rx_ring: 32,
                batch: 32,
            };
            let mut xsk = XskSocket::open(&ia, 0, &cfg).unwrap();
            prog.maps().bind_xsk(0, &mut xsk).unwrap();
            ready_tx.send(()).unwrap();
            sent_rx.recv().unwrap();
            std::thread::sleep(Duration::from_millis(100));
            let mut got = 0u64;
            while xsk.recv_batch(|pass, _| {
                if pass == Pass::Process {
                    got += 1
                }
            }) > 0
            {}
            let drops = xsk.kernel_drops();
            let c = prog.maps().counters().unwrap();
            prog.maps().unbind_socket(0).unwrap();
            att.detach().unwrap();
            (got, drops, c.get(Verdict::Redirect))
        });
        ready_rx.recv().unwrap();
        enter(&b);
        let tx = UdpSocket::bind(format!("{ADDR_B}:0")).unwrap();
        for seq in 0..200u32 {
            tx.send_to(&v1("burst", seq), format!("{ADDR_A}:7700"))
                .unwrap();
        }
        sent_tx.send(()).unwrap();
        let (got, drops, redirected) = receiver.join().unwrap();
        println!("redirected {redirected}, received {got}, kernel drops {drops}");
        assert!(got <= 32, "the ring holds 32");
        assert_eq!(
            got + drops,
            redirected,
            "every redirected frame is received or counted as dropped"
        );
    }
}
