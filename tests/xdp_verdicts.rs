//! The XDP filter's verdicts, run in the kernel through `BPF_PROG_TEST_RUN`:
//! a fixture table {description, frame, expected action, expected counter},
//! truncation at every header boundary, rate limiting (including two CPUs on
//! one device's bucket), overrides, the deny list, dry-run mode and events.
//!
//! Root tier (`#[ignore = "root"]`): `cargo test -- --ignored root::`, as root.

use std::sync::{Arc, Barrier};
use std::time::Instant;

use klais::wire::{self, device_hash, HEADER_LEN};
use klais::xdp::frame::{self, UdpFrame};
use klais::xdp::{
    EventKind, Limits, LoadOptions, Rate, Verdict, XdpCounters, XdpProgram, XDP_DROP, XDP_PASS,
};

mod common;

/// Root tier: `cargo test -- --ignored root::`, as root.
mod root {
    use super::*;

    const PORT: u16 = 7700;

    fn load(opts: LoadOptions, limits: Limits) -> XdpProgram {
        XdpProgram::load(&opts, &limits).expect("the XDP program loads (verifier, privileges)")
    }

    fn v2(id: &str, seq: u32, key: Option<&wire::DeviceKey>) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        let n = wire::encode_v2(id, seq, 0, b"{}", key, &mut b).unwrap();
        b.truncate(n);
        b
    }

    fn v1(id: &str, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN + body.len()];
        wire::encode(id, seq, body, &mut b).unwrap();
        b
    }

    fn to_port(payload: &[u8]) -> Vec<u8> {
        frame::udp(&UdpFrame {
            dst_port: PORT,
            payload,
            ..Default::default()
        })
    }

    fn delta(before: &XdpCounters, after: &XdpCounters) -> Vec<(Verdict, u64)> {
        Verdict::ALL
            .iter()
            .map(|&v| (v, after.get(v) - before.get(v)))
            .filter(|&(_, d)| d != 0)
            .collect()
    }

    /// Runs one frame once; returns the action and which counters moved.
    fn run(p: &XdpProgram, f: &[u8]) -> (u32, Vec<(Verdict, u64)>) {
        let before = p.maps().counters().unwrap();
        let (action, _) = p.test_run(f, 1).unwrap();
        let after = p.maps().counters().unwrap();
        (action, delta(&before, &after))
    }

    #[test]
    #[ignore = "root"]
    fn every_verdict_matches_its_fixture() {
        common::require_root();
        let p = load(LoadOptions::default(), Limits::default());
        p.maps()
            .set_denied(device_hash(&wire::raw_device_id("banned").unwrap()), true)
            .unwrap();

        let good = v1("sensor-1", 1, br#"{"t":1}"#);
        let mut bad_magic = good.clone();
        bad_magic[0] = 0x55;
        let q = |vlans: &'static [(u16, u16)], ipv6: bool, ip_options: usize, payload: Vec<u8>| {
            frame::udp(&UdpFrame {
                vlans,
                ipv6,
                ip_options,
                dst_port: PORT,
                payload: &payload,
            })
        };
        let fixtures: Vec<(&str, Vec<u8>, u32, Verdict)> = vec![
        (
            "ARP passes untouched",
            frame::arp(),
            XDP_PASS,
            Verdict::NotKlais,
        ),
        (
            "TCP to the klais port passes untouched",
            frame::tcp_syn(PORT),
            XDP_PASS,
            Verdict::NotKlais,
        ),
        (
            "UDP to another port passes untouched",
            frame::udp(&UdpFrame {
                dst_port: 53,
                payload: &good,
                ..Default::default()
            }),
            XDP_PASS,
            Verdict::NotKlais,
        ),
        (
            "a non-first IPv4 fragment passes to the kernel",
            frame::udp_fragment(PORT, &good),
            XDP_PASS,
            Verdict::NotKlais,
        ),
        (
            "valid v1 over IPv4 passes (no AF_XDP socket bound)",
            q(&[], false, 0, good.clone()),
            XDP_PASS,
            Verdict::Pass,
        ),
        (
            "valid v1 behind one 802.1Q tag",
            q(&[(0x8100, 7)], false, 0, v1("vlan-1", 1, b"{}")),
            XDP_PASS,
            Verdict::Pass,
        ),
        (
            "valid v1 behind 802.1ad + 802.1Q (QinQ)",
            q(
                &[(0x88A8, 100), (0x8100, 7)],
                false,
                0,
                v1("qinq-1", 1, b"{}"),
            ),
            XDP_PASS,
            Verdict::Pass,
        ),
        (
            "valid v1 over IPv6",
            q(&[], true, 0, v1("v6-1", 1, b"{}")),
            XDP_PASS,
            Verdict::Pass,
        ),
        (
            "valid v1 over IPv6 behind a VLAN tag",
            q(&[(0x8100, 9)], true, 0, v1("v6-2", 1, b"{}")),
            XDP_PASS,
            Verdict::Pass,
        ),
        (
            "valid v1 over IPv4 with 40 bytes of options",
            q(&[], false, 40, v1("opts-1", 1, b"{}")),
            XDP_PASS,
            Verdict::Pass,
        ),
        (
            "an empty UDP payload is too short",
            q(&[], false, 0, vec![]),
            XDP_DROP,
            Verdict::TooShort,
        ),
        (
            "a 21-byte payload is too short",
            q(&[], false, 0, good[..21].to_vec()),
            XDP_DROP,
            Verdict::TooShort,
        ),
        (
            "a 21-byte payload over IPv6 is too short",
            q(&[], true, 0, good[..21].to_vec()),
            XDP_DROP,
            Verdict::TooShort,
        ),
        (
            "wrong magic is dropped",
            q(&[], false, 0, bad_magic.clone()),
            XDP_DROP,
            Verdict::BadMagic,
        ),
        (
            "wrong magic over IPv6 behind QinQ is dropped",
            q(&[(0x88A8, 1), (0x8100, 2)], true, 0, bad_magic.clone()),
            XDP_DROP,
            Verdict::BadMagic,
        ),
        (
            "a denied device is dropped",
            q(&[], false, 0, v1("banned", 1, b"{}")),
            XDP_DROP,
            Verdict::Denied,
        ),
        (
            "an authenticated v2 datagram (magic 0xAA56) passes to the shard, which holds the keys",
            q(&[], false, 0, v2("sensor-2", 1, Some(&[7u8; 16]))),
            XDP_PASS,
            Verdict::Pass,
        ),
        (
            "a v2 datagram from a denied device is dropped like v1",
            q(&[], false, 0, v2("banned", 2, None)),
            XDP_DROP,
            Verdict::Denied,
        ),
    ];
        for (desc, f, want_action, want_verdict) in &fixtures {
            let (action, moved) = run(&p, f);
            assert_eq!(action, *want_action, "{desc}: action");
            assert_eq!(moved, vec![(*want_verdict, 1)], "{desc}: counters");
            assert_eq!(
                want_verdict.action(),
                *want_action,
                "{desc}: Verdict::action agrees"
            );
        }
    }

    #[test]
    #[ignore = "root"]
    fn a_frame_cut_at_any_point_before_the_v1_header_ends_is_passed_as_truncated() {
        common::require_root();
        let p = load(LoadOptions::default(), Limits::default());
        let payload = v1("cut-1", 1, br#"{"a":1}"#);
        for (vlans, ipv6, opts) in [
            (&[][..], false, 0),
            (&[(0x88A8u16, 3u16), (0x8100, 4)][..], false, 12),
            (&[(0x8100, 5)][..], true, 0),
        ] {
            let f = frame::udp(&UdpFrame {
                vlans,
                ipv6,
                ip_options: opts,
                dst_port: PORT,
                payload: &payload,
            });
            let header_end = f.len() - payload.len() + HEADER_LEN;
            // Below 14 bytes the test-run harness itself refuses the frame
            // (EINVAL); from a whole Ethernet header on, the program decides.
            assert!(p.test_run(&f[..13], 1).is_err());
            for cut in 14..header_end {
                let (action, moved) = run(&p, &f[..cut]);
                assert_eq!(action, XDP_PASS, "cut at {cut} of {}", f.len());
                assert_eq!(
                    moved,
                    vec![(Verdict::Truncated, 1)],
                    "cut at {cut} ({vlans:?}, v6 {ipv6}, opts {opts})"
                );
            }
            let (_, moved) = run(&p, &f[..header_end]);
            assert_eq!(moved, vec![(Verdict::Pass, 1)], "whole header present");
        }
    }

    #[test]
    #[ignore = "root"]
    fn a_device_never_gets_more_than_its_burst_at_once() {
        common::require_root();
        let limits = Limits {
            device: Some(Rate::new(1, 10).unwrap()),
            ..Limits::default()
        };
        let p = load(LoadOptions::default(), limits);
        let f = to_port(&v1("bursty", 1, b"{}"));
        let t0 = Instant::now();
        let (_, _) = p.test_run(&f, 5000).unwrap();
        let elapsed_s = t0.elapsed().as_secs();
        let c = p.maps().counters().unwrap();
        let passed = c.get(Verdict::Pass);
        assert!(passed >= 10, "the burst is available: {passed}");
        assert!(
            passed <= 10 + elapsed_s + 1,
            "{passed} passed in {elapsed_s} s at 1 pps, burst 10"
        );
        assert_eq!(passed + c.get(Verdict::RateLimited), 5000);
    }

    #[test]
    #[ignore = "root"]
    fn two_cpus_on_one_device_bucket_never_mint_tokens() {
        common::require_root();
        let cpus = core_affinity::get_core_ids().unwrap_or_default();
        if cpus.len() < 2 {
            common::skip("needs two CPUs");
            return;
        }
        let limits = Limits {
            device: Some(Rate::new(1, 100).unwrap()),
            ..Limits::default()
        };
        let p = Arc::new(load(LoadOptions::default(), limits));
        let f = Arc::new(to_port(&v1("contended", 1, b"{}")));
        let start = Arc::new(Barrier::new(2));
        let t0 = Instant::now();
        let handles: Vec<_> = cpus[..2]
            .iter()
            .map(|&core| {
                let (p, f, start) = (p.clone(), f.clone(), start.clone());
                std::thread::spawn(move || {
                    core_affinity::set_for_current(core);
                    start.wait();
                    for _ in 0..20 {
                        p.test_run(&f, 10_000).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let elapsed_s = t0.elapsed().as_secs();
        let c = p.maps().counters().unwrap();
        let passed = c.get(Verdict::Pass);
        println!(
            "passed {passed} of {} across 2 CPUs, {} CAS retries",
            passed + c.get(Verdict::RateLimited),
            c.bucket_retries
        );
        assert_eq!(passed + c.get(Verdict::RateLimited), 400_000);
        assert!(passed >= 100);
        assert!(
            passed <= 100 + elapsed_s + 1,
            "{passed} passed in {elapsed_s} s: tokens were minted"
        );
    }

    #[test]
    #[ignore = "root"]
    fn the_global_budget_is_a_per_cpu_share() {
        common::require_root();
        let ncpus = klais::xdp::possible_cpus() as u64;
        let limits = Limits {
            global: Some(Rate::new(1, 8 * ncpus).unwrap()),
            ..Limits::default()
        };
        let p = load(LoadOptions::default(), limits);
        // Many devices, so only the global budget can refuse.
        let t0 = Instant::now();
        for i in 0..100 {
            p.test_run(&to_port(&v1(&format!("g-{i}"), 1, b"{}")), 1)
                .unwrap();
        }
        let elapsed_s = t0.elapsed().as_secs();
        let c = p.maps().counters().unwrap();
        let passed = c.get(Verdict::Pass);
        assert!(
            passed >= 8 && passed <= 8 + elapsed_s + 1,
            "passed {passed}"
        );
        assert_eq!(c.get(Verdict::GlobalBudget), 100 - passed);
    }

    #[test]
    #[ignore = "root"]
    fn overrides_replace_the_default_rate_and_can_be_removed() {
        common::require_root();
        let limits = Limits {
            device: Some(Rate::new(1, 1).unwrap()),
            ..Limits::default()
        };
        let p = load(LoadOptions::default(), limits);
        let vip = device_hash(&wire::raw_device_id("vip").unwrap());
        p.maps()
            .set_override(vip, Some(Rate::new(1, 50).unwrap()))
            .unwrap();
        p.test_run(&to_port(&v1("vip", 1, b"{}")), 100).unwrap();
        p.test_run(&to_port(&v1("plain", 1, b"{}")), 100).unwrap();
        let c = p.maps().counters().unwrap();
        assert!(
            (51..=53).contains(&c.get(Verdict::Pass)),
            "50 for vip + 1 for plain: {c:?}"
        );
        p.maps().set_override(vip, None).unwrap();
        p.maps().set_override(vip, None).unwrap(); // removing twice is fine
    }

    #[test]
    #[ignore = "root"]
    fn limits_written_to_the_kernel_read_back_unchanged() {
        common::require_root();
        let p = load(LoadOptions::default(), Limits::default());
        let l = Limits {
            device: Some(Rate::new(100, 20).unwrap()),
            global: Some(Rate::new(1_000_000, 10_000).unwrap()),
            events_per_sec: 250,
        };
        p.maps()
            .set_limits(&l, klais::xdp::possible_cpus())
            .unwrap();
        assert_eq!(p.maps().limits().unwrap(), l);
    }

    #[test]
    #[ignore = "root"]
    fn with_enforcement_off_refusals_are_counted_but_passed() {
        common::require_root();
        let p = load(
            LoadOptions {
                enforce: false,
                ..LoadOptions::default()
            },
            Limits::default(),
        );
        let mut bad = v1("x", 1, b"{}");
        bad[0] = 0;
        let (action, moved) = run(&p, &to_port(&bad));
        assert_eq!(action, XDP_PASS);
        assert_eq!(moved, vec![(Verdict::BadMagic, 1)]);
    }

    #[test]
    #[ignore = "root"]
    fn the_kernel_hashes_device_ids_exactly_as_rust_does() {
        common::require_root();
        let p = load(LoadOptions::default(), Limits::default());
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/bpf/fnv1a64_vectors.txt"
        ))
        .unwrap();
        let mut checked = 0;
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let mut it = line.split_whitespace();
            let id_hex = it.next().unwrap();
            let want = u64::from_str_radix(it.next().unwrap(), 16).unwrap();
            let mut payload = vec![0u8; HEADER_LEN];
            payload[0] = 0xAA;
            payload[1] = 0x55;
            for i in 0..16 {
                payload[2 + i] = u8::from_str_radix(&id_hex[2 * i..2 * i + 2], 16).unwrap();
            }
            p.test_run(&to_port(&payload), 1).unwrap();
            let events = p.maps().events().unwrap();
            let ev = events
                .iter()
                .find(|e| e.kind == EventKind::NewDevice)
                .expect("a new-device event");
            assert_eq!(ev.device_hash, want, "id {id_hex}");
            assert_eq!(ev.device_hash, device_hash(&ev.device_id));
            checked += 1;
        }
        assert!(checked >= 8);
    }

    #[test]
    #[ignore = "root"]
    fn events_report_new_devices_resets_and_rate_limiting_once_per_episode() {
        common::require_root();
        let limits = Limits {
            device: Some(Rate::new(1, 2).unwrap()),
            ..Limits::default()
        };
        let p = load(LoadOptions::default(), limits);
        p.test_run(&to_port(&v1("ev", 100, b"{}")), 1).unwrap();
        p.test_run(&to_port(&v1("ev", 1, b"{}")), 1).unwrap(); // restart near zero
        p.test_run(&to_port(&v1("ev", 2, b"{}")), 20).unwrap(); // over the burst, 19 times
        let kinds: Vec<EventKind> = p.maps().events().unwrap().iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::NewDevice,
                EventKind::SeqReset,
                EventKind::RateLimited
            ],
            "one rate-limited event for the whole episode"
        );
    }

    #[test]
    #[ignore = "root"]
    fn a_flood_of_new_devices_cannot_exceed_the_event_cap() {
        common::require_root();
        let limits = Limits {
            events_per_sec: 1,
            ..Limits::default()
        };
        let p = load(LoadOptions::default(), limits);
        for i in 0..50 {
            p.test_run(&to_port(&v1(&format!("flood-{i}"), 1, b"{}")), 1)
                .unwrap();
        }
        let c = p.maps().counters().unwrap();
        let sent = p.maps().events().unwrap().len() as u64;
        assert_eq!(sent, c.events_sent);
        assert!(sent <= 2, "cap of 1/s (per-CPU share, burst 1): {sent}");
        assert_eq!(
            c.events_sent + c.events_capped + c.events_lost,
            50,
            "every event accounted for"
        );
    }

    #[test]
    #[ignore = "root"]
    fn a_flood_of_new_ids_cannot_free_a_limited_device_from_its_bucket() {
        common::require_root();
        // The smallest table: 256 sets of 4 ways.
        let limits = Limits {
            device: Some(Rate::new(1, 1).unwrap()),
            ..Limits::default()
        };
        let p = load(
            LoadOptions {
                max_devices: 1024,
                ..LoadOptions::default()
            },
            limits,
        );
        let hot = to_port(&v1("hot-device", 1, b"{}"));
        p.test_run(&hot, 1).unwrap(); // its one token
        let t0 = Instant::now();
        for i in 0..3000 {
            p.test_run(&to_port(&v1(&format!("sweep-{i}"), 1, b"{}")), 1)
                .unwrap();
            p.test_run(&hot, 1).unwrap();
        }
        let elapsed_s = t0.elapsed().as_secs();
        let c = p.maps().counters().unwrap();
        // 3000 new ids in 1024 ways: sets fill up and devices are replaced or go
        // untracked, but the hot device keeps its debt: at most one more token
        // per elapsed second.
        assert!(c.bucket_evictions + c.bucket_untracked > 0, "{c:?}");
        let hot_limited = c.get(Verdict::RateLimited);
        assert!(
        hot_limited >= 3000 - elapsed_s - 1,
        "the hot device was refused {hot_limited} of 3000 times in {elapsed_s} s: its bucket was handed over"
    );
    }
}
