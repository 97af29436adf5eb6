//! The in-kernel classifier through `BPF_PROG_TEST_RUN`: the kernel's
//! features and int8 logits equal the Rust int8 path's bit for bit on the
//! same packets; `set_model` switches slots on a loaded program and turns the
//! classifier off; a class whose action is drop is dropped and counted.
//!
//! Root tier (`#[ignore = "root"]`): `cargo test -- --ignored root::`, as root.

use std::collections::HashMap;
use std::path::Path;

use klais::model::classifier::{Action, ClassifierFile};
use klais::model::features::{self, FlowState};
use klais::scenario::{self, Generator, Label};
use klais::xdp::frame::{self, UdpFrame};
use klais::xdp::{Limits, LoadOptions, Verdict, XdpProgram, XDP_DROP};

mod common;

/// Root tier: `cargo test -- --ignored root::`, as root.
mod root {
    use super::*;

    const PORT: u16 = 7700;

    fn shipped() -> ClassifierFile {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/classifier.json");
        klais::model::load_classifier(&p).expect("models/classifier.json ships with the repository")
    }

    fn frame_of(p: &scenario::Packet) -> Vec<u8> {
        let mut buf = vec![0u8; p.len()];
        let n = p.write(1, &mut buf);
        frame::udp(&UdpFrame {
            dst_port: PORT,
            payload: &buf[..n],
            ..Default::default()
        })
    }

    fn no_limits() -> Limits {
        Limits {
            device: None,
            global: None,
            ..Limits::default()
        }
    }

    #[test]
    #[ignore = "root"]
    fn kernel_and_rust_int8_agree_bit_for_bit() {
        common::require_root();
        // One CPU: the kernel keeps the new-flow rate (x11) per CPU.
        // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
        let model = shipped();
        let prog = XdpProgram::load(&LoadOptions::default(), &no_limits()).expect("loads");
        prog.maps().set_model(Some(&model)).unwrap();
        let mut cpu = features::CpuState::default();
        let spec = scenario::preset("mixed", 11).unwrap();
        let mut flows: HashMap<u64, FlowState> = HashMap::new();
        let mut per_label: HashMap<Label, u32> = HashMap::new();
        let mut checked = 0;
        let mut classes = [0u32; 4];
        // Every kind of traffic: take up to 400 packets of each label.
        for p in Generator::new(spec) {
            if p.label == Label::Malformed {
                continue;
            }
            let n = per_label.entry(p.label).or_insert(0);
            if *n >= 400 {
                if per_label.len() == 4 && per_label.values().all(|&v| v >= 400) {
                    break;
                }
                continue;
            }
            *n += 1;
            let (action, _) = prog.test_run(&frame_of(&p), 1).unwrap();
            let t = prog
                .maps()
                .model_last()
                .unwrap()
                .expect("the classifier ran");
            let mut st = flows.get(&p.hash).copied();
            let x = features::update(&mut cpu, &mut st, t.now_ns, u32::from(p.payload_len), p.seq);
            flows.insert(p.hash, st.unwrap());
            assert_eq!(x, t.x, "features of {p:?}");
            let out = model.quant.infer(&x);
            assert_eq!(out, t.out, "logits of {p:?}");
            let class = klais::model::classifier::argmax(&out);
            assert_eq!(class as u32, t.class);
            classes[class] += 1;
            if model.actions[class] == Action::Drop {
                assert_eq!(action, XDP_DROP, "class {class} is dropped");
            }
            checked += 1;
        }
        assert!(checked >= 1600, "checked {checked}");
        println!("kernel = Rust int8 on {checked} packets; classes {classes:?}");
        assert!(
            classes.iter().filter(|&&c| c > 0).count() >= 2,
            "more than one class seen: {classes:?}"
        );
    }

    #[test]
    #[ignore = "root"]
    fn a_model_switches_slots_live_and_turns_off() {
        common::require_root();
        let model = shipped();
        let prog = XdpProgram::load(&LoadOptions::default(), &no_limits()).expect("loads");
        let maps = prog.maps();
        assert!(!maps.model_enabled().unwrap().0, "off until loaded");
        let p = Generator::new(scenario::preset("normal", 3).unwrap())
            .next()
            .unwrap();
        let f = frame_of(&p);
        prog.test_run(&f, 1).unwrap();
        assert!(
            maps.model_last().unwrap().is_none(),
            "nothing classified while off"
        );

        let s0 = maps.set_model(Some(&model)).unwrap();
        let s1 = maps.set_model(Some(&model)).unwrap();
        assert_ne!(s0, s1, "a second load goes to the other slot");
        prog.test_run(&f, 1).unwrap();
        let before = maps.counters().unwrap();
        let t = maps.model_last().unwrap().expect("classified");

        // Every class dropped: the next packet is dropped by the model.
        let mut all_drop = model.clone();
        all_drop.actions = [Action::Drop; 4];
        maps.set_model(Some(&all_drop)).unwrap();
        let (action, _) = prog.test_run(&f, 1).unwrap();
        assert_eq!(action, XDP_DROP);
        let after = maps.counters().unwrap();
        assert_eq!(
            after.get(Verdict::ModelDrop) - before.get(Verdict::ModelDrop),
            1
        );

        maps.set_model(None).unwrap();
        assert!(!maps.model_enabled().unwrap().0);
        let (action, _) = prog.test_run(&f, 1).unwrap();
        assert_ne!(action, XDP_DROP, "off again: the model no longer drops");
        let last = maps.model_last().unwrap().unwrap();
        assert!(
            last.now_ns >= t.now_ns,
            "the drop run was the last classified"
        );
        let c = maps.counters().unwrap();
        assert_eq!(
            c.model_class.iter().sum::<u64>(),
            after.model_class.iter().sum::<u64>()
        );
    }
}
