//! Topology discovery on this machine and on hwloc XML fixtures of hosts we
//! do not have (tests/fixtures/topology, made with `lstopo --of xml`; the two
//! synthetic ones with `lstopo --input "pack:N numa:1 l3:1 core:C pu:2"`).

use std::process::Command;

const KLAIS: &str = env!("CARGO_BIN_EXE_klais");

fn show(xml: Option<&str>, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut cmd = Command::new(KLAIS);
    cmd.args(["cores", "show", "--json"]).args(extra);
    match xml {
        Some(x) => cmd.env(
            "HWLOC_XMLFILE",
            format!("{}/tests/fixtures/topology/{x}", env!("CARGO_MANIFEST_DIR")),
        ),
        None => cmd.env_remove("HWLOC_XMLFILE"),
    };
    let out = cmd.output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code().unwrap_or(-1),
        v,
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn summary(v: &serde_json::Value) -> (usize, usize, usize, bool) {
    let cores = v["topology"]["cores"].as_array().unwrap();
    let cpus: usize = cores
        .iter()
        .map(|c| c["cpus"].as_array().unwrap().len())
        .sum();
    let smt = cores
        .iter()
        .any(|c| c["cpus"].as_array().unwrap().len() > 1);
    (
        cores.len(),
        cpus,
        v["topology"]["nodes"].as_array().unwrap().len(),
        smt,
    )
}

#[test]
fn this_machine_is_discovered_with_its_online_cpus() {
    let t = klais::cores::discover().unwrap();
    assert!(!t.cores.is_empty());
    assert!(!t.nodes.is_empty());
    let online = klais::runtime::placement::online_cpus().unwrap();
    assert_eq!(t.online, online);
    for cpu in &online {
        assert!(t.core_of(*cpu).is_some(), "CPU {cpu} belongs to a core");
    }
}

#[test]
fn the_vm_fixture_has_two_cores_on_one_node() {
    let (code, v, err) = show(Some("vm-2cpu.xml"), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary(&v), (2, 2, 1, false));
    assert_eq!(
        v["topology"]["online"].as_array().unwrap().len(),
        0,
        "no sysfs state for a fixture"
    );
}

#[test]
fn the_16_core_fixture_has_smt_siblings() {
    let (code, v, err) = show(Some("1socket-16core-smt.xml"), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary(&v), (16, 32, 1, true));
}

#[test]
fn the_two_socket_fixture_puts_the_second_half_of_the_cores_on_node_1() {
    let (code, v, err) = show(Some("2socket-2x32core-smt.xml"), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary(&v), (64, 128, 2, true));
    for c in v["topology"]["cores"].as_array().unwrap() {
        let id = c["id"].as_u64().unwrap();
        let want = u64::from(id >= 32);
        assert_eq!(
            (c["node"].as_u64().unwrap(), c["package"].as_u64().unwrap()),
            (want, want),
            "core {id}"
        );
    }
}

#[test]
fn a_nic_that_does_not_exist_is_named_in_the_error() {
    let (code, _, err) = show(None, &["--iface", "nosuch0"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no network interface named \"nosuch0\""),
        "{err}"
    );
}

#[test]
fn loopback_shows_as_a_virtual_nic_without_queue_interrupts() {
    let (code, v, err) = show(None, &["--iface", "lo"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["nic"]["iface"], "lo");
    assert!(v["nic"]["numa_node"].is_null());
    assert_eq!(v["nic"]["irqs"].as_array().unwrap().len(), 0);
}
