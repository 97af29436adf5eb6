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
    let online = klais::cores::placement::online_cpus().unwrap();
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

fn check_map(map: &str, xml: &str, extra: &[&str]) -> (i32, String) {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(KLAIS)
        .args(["cores", "check", &format!("{root}/numa/{map}")])
        .args(extra)
        .env(
            "HWLOC_XMLFILE",
            format!("{root}/tests/fixtures/topology/{xml}"),
        )
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_shipped_core_map_passes_the_check_on_its_host() {
    for (map, xml, extra) in [
        ("vm-2cpu.toml", "vm-2cpu.xml", &[][..]),
        (
            "1socket-16core-smt.toml",
            "1socket-16core-smt.xml",
            &["--nic-node", "0", "--queues", "8"][..],
        ),
        (
            "2socket-2x32core-nic-node1.toml",
            "2socket-2x32core-smt.xml",
            &["--nic-node", "1", "--queues", "16"][..],
        ),
    ] {
        let (code, out) = check_map(map, xml, extra);
        assert_eq!(code, 0, "{map} on {xml}:\n{out}");
        assert!(!out.contains("warning"), "{map}: {out}");
    }
}

#[test]
fn a_map_for_another_host_fails_the_check_with_the_fix() {
    let (code, out) = check_map(
        "2socket-2x32core-nic-node1.toml",
        "1socket-16core-smt.xml",
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        out.contains("does not exist here") && out.contains("fix: plan a map for this host"),
        "{out}"
    );
}

#[test]
fn run_refuses_a_core_map_that_does_not_fit_this_machine() {
    let out = Command::new(KLAIS)
        .args(["run", "--core-map"])
        .arg(format!(
            "{}/numa/2socket-2x32core-nic-node1.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .env_remove("HWLOC_XMLFILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing core map"));
}

#[test]
fn run_places_its_cores_by_a_map_that_fits() {
    let topo = klais::cores::discover().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("here.toml");
    let plan = klais::cores::plan::plan(&topo, None, Some(1), "here").unwrap();
    std::fs::write(&map, plan.to_toml()).unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("klais.toml");
    std::fs::write(
        &cfg,
        format!("[ingest]\nlisten = \"127.0.0.1:{port}\"\n[output]\nsink = \"null\"\n"),
    )
    .unwrap();
    let out = Command::new(KLAIS)
        .args(["run", "--duration", "0.3", "--config"])
        .arg(&cfg)
        .arg("--core-map")
        .arg(&map)
        .env_remove("HWLOC_XMLFILE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("shard 0 on CPU {}", plan.map.shards[0].cpu)),
        "{err}"
    );
    assert!(
        err.contains(&format!("output on CPU {}", plan.map.batcher_cpu)),
        "{err}"
    );
}
