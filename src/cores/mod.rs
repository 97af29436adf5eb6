//! Discovery of the machine klais places its cores on: packages, NUMA nodes,
//! physical cores and their SMT siblings, online and isolated CPUs, and for a
//! NIC its NUMA node, receive queues and their IRQs.
//!
//! CPU topology comes from hwloc (hwloc2), so a topology saved as hwloc XML can
//! stand in for a host we do not have (`HWLOC_XMLFILE=host.xml`): planning and
//! tests run against it. hwloc2's `objects_with_type(NUMANode)` panics (its
//! depth mapping predates hwloc 2's memory children, MACHINE-NOTES), so a
//! core's node comes from its nodeset instead. Online / isolated / nohz_full
//! CPUs and NIC details come from sysfs and /proc of the running machine, and
//! are left empty when the topology is loaded from XML (they would describe
//! another machine).
//!
//! The result is a plain value ([`HostTopology`]) that prints as a tree or as
//! JSON; planning core maps from it is pure logic (the core-map issue).

pub mod placement;
pub mod plan;

use std::path::Path;

use serde::Serialize;

use placement::parse_cpu_list;

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum CoresError {
    /// hwloc could not load a topology.
    #[error("hwloc could not load the topology{}", .xml.as_ref().map(|x| format!(" from HWLOC_XMLFILE={x}")).unwrap_or_default())]
    Hwloc {
        /// The XML file, when one was given.
        xml: Option<String>,
    },
    /// The topology has no cores.
    #[error("hwloc found no cores in the topology")]
    NoCores,
}

/// One physical core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Core {
    /// hwloc's logical index of the core.
    pub id: usize,
    /// Package (socket) OS index.
    pub package: usize,
    /// NUMA node OS index (the first node local to the core).
    pub node: usize,
    /// The core's CPUs (hardware threads): more than one means SMT siblings.
    pub cpus: Vec<usize>,
}

/// A cache shared by some CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cache {
    /// 2 or 3.
    pub level: u8,
    /// Bytes.
    pub size: u64,
    /// CPUs sharing it.
    pub cpus: Vec<usize>,
}

/// The CPU topology and the state of its CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostTopology {
    /// Where it came from: "this machine" or the XML file.
    pub source: String,
    /// Physical cores in hwloc's logical order.
    pub cores: Vec<Core>,
    /// NUMA nodes (OS indices).
    pub nodes: Vec<usize>,
    /// L2 and L3 caches.
    pub caches: Vec<Cache>,
    /// Online CPUs (empty when loaded from XML).
    pub online: Vec<usize>,
    /// CPUs isolated from the scheduler (`isolcpus`).
    pub isolated: Vec<usize>,
    /// CPUs in `nohz_full`.
    pub nohz_full: Vec<usize>,
}

impl HostTopology {
    /// Every CPU of the topology.
    pub fn cpus(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .cores
            .iter()
            .flat_map(|c| c.cpus.iter().copied())
            .collect();
        v.sort_unstable();
        v
    }
    /// Packages (OS indices).
    pub fn packages(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.cores.iter().map(|c| c.package).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
    /// The core a CPU belongs to.
    pub fn core_of(&self, cpu: usize) -> Option<&Core> {
        self.cores.iter().find(|c| c.cpus.contains(&cpu))
    }
    /// True when some core has more than one hardware thread.
    pub fn smt(&self) -> bool {
        self.cores.iter().any(|c| c.cpus.len() > 1)
    }
}

fn read_list(path: &str) -> Vec<usize> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| parse_cpu_list(&s).ok())
        .unwrap_or_default()
}

/// Discovers the topology: the running machine's, or the XML file named by
/// `HWLOC_XMLFILE` when set.
pub fn discover() -> Result<HostTopology, CoresError> {
    let xml = std::env::var("HWLOC_XMLFILE")
        .ok()
        .filter(|x| !x.is_empty());
    let topo = hwloc2::Topology::new().ok_or_else(|| CoresError::Hwloc { xml: xml.clone() })?;
    let cores_objs = topo
        .objects_with_type(&hwloc2::ObjectType::Core)
        .map_err(|_| CoresError::NoCores)?;
    let mut cores = Vec::with_capacity(cores_objs.len());
    for c in cores_objs {
        let mut package = 0;
        let mut p = c.parent();
        while let Some(o) = p {
            if o.object_type() == hwloc2::ObjectType::Package {
                package = o.os_index() as usize;
                break;
            }
            p = o.parent();
        }
        let cpus = c
            .cpuset()
            .and_then(|s| parse_cpu_list(&s.to_string()).ok())
            .unwrap_or_default();
        let node = c
            .nodeset()
            .and_then(|s| parse_cpu_list(&s.to_string()).ok())
            .and_then(|v| v.first().copied())
            .unwrap_or(0);
        cores.push(Core {
            id: c.logical_index() as usize,
            package,
            node,
            cpus,
        });
    }
    if cores.is_empty() {
        return Err(CoresError::NoCores);
    }
    let mut caches = Vec::new();
    for (level, ty) in [
        (2u8, hwloc2::ObjectType::L2Cache),
        (3u8, hwloc2::ObjectType::L3Cache),
    ] {
        if let Ok(objs) = topo.objects_with_type(&ty) {
            for o in objs {
                caches.push(Cache {
                    level,
                    size: o.cache_attributes().map_or(0, |a| a.size()),
                    cpus: o
                        .cpuset()
                        .and_then(|s| parse_cpu_list(&s.to_string()).ok())
                        .unwrap_or_default(),
                });
            }
        }
    }
    let mut nodes: Vec<usize> = cores.iter().map(|c| c.node).collect();
    nodes.sort_unstable();
    nodes.dedup();
    let (source, online, isolated, nohz_full) = match &xml {
        Some(x) => (x.clone(), Vec::new(), Vec::new(), Vec::new()),
        None => (
            "this machine".to_string(),
            read_list("/sys/devices/system/cpu/online"),
            read_list("/sys/devices/system/cpu/isolated"),
            read_list("/sys/devices/system/cpu/nohz_full"),
        ),
    };
    Ok(HostTopology {
        source,
        cores,
        nodes,
        caches,
        online,
        isolated,
        nohz_full,
    })
}

/// One receive queue of a NIC and its interrupt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueIrq {
    /// IRQ number.
    pub irq: u32,
    /// Its name in /proc/interrupts (names the queue, e.g. `eth0-TxRx-3`).
    pub name: String,
    /// CPUs it may run on (`/proc/irq/N/smp_affinity_list`).
    pub affinity: Vec<usize>,
}

/// What klais needs to know about a NIC to place shards next to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NicInfo {
    /// Interface name.
    pub iface: String,
    /// NUMA node of its PCI device (None: virtual, or the machine has one node).
    pub numa_node: Option<usize>,
    /// Receive queues (ethtool channels, else sysfs).
    pub rx_queues: usize,
    /// Its queue interrupts, in IRQ order (empty for virtual devices).
    pub irqs: Vec<QueueIrq>,
}

/// Discovers a NIC from sysfs and /proc. Fails only when the interface does
/// not exist.
pub fn nic_info(iface: &str) -> Result<NicInfo, crate::xdp::XdpError> {
    crate::xdp::iface_index(iface)?;
    let dev = format!("/sys/class/net/{iface}/device");
    let numa_node = std::fs::read_to_string(format!("{dev}/numa_node"))
        .or_else(|_| std::fs::read_to_string(format!("{dev}/../numa_node")))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|&n| n >= 0)
        .map(|n| n as usize);
    // A PCI NIC has msi_irqs on its device; a virtio NIC on the PCI device above it.
    let read_irqs = |dir: String| -> Option<Vec<u32>> {
        std::fs::read_dir(dir).ok().map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .collect()
        })
    };
    let mut irq_numbers = read_irqs(format!("{dev}/msi_irqs"))
        .or_else(|| read_irqs(format!("{dev}/../msi_irqs")))
        .unwrap_or_default();
    irq_numbers.sort_unstable();
    let interrupts = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    let irqs = irq_numbers
        .into_iter()
        .map(|irq| QueueIrq {
            irq,
            name: irq_name(&interrupts, irq).unwrap_or_default(),
            affinity: read_list(&format!("/proc/irq/{irq}/smp_affinity_list")),
        })
        .collect();
    Ok(NicInfo {
        iface: iface.to_string(),
        numa_node,
        rx_queues: rx_queue_count(iface).unwrap_or(0),
        irqs,
    })
}

/// The IRQs that serve receive queues, with their queue index: names that
/// say rx / input / TxRx / comp, queue = the trailing number of the name; if
/// no name says so, every IRQ in order.
pub fn rx_queue_irqs(nic: &NicInfo) -> Vec<(u32, &QueueIrq)> {
    let rx: Vec<&QueueIrq> = nic
        .irqs
        .iter()
        .filter(|q| {
            let n = q.name.to_ascii_lowercase();
            ["rx", "input", "txrx", "comp"]
                .iter()
                .any(|k| n.contains(k))
        })
        .collect();
    if rx.is_empty() {
        return nic
            .irqs
            .iter()
            .enumerate()
            .map(|(i, q)| (i as u32, q))
            .collect();
    }
    rx.into_iter()
        .enumerate()
        .map(|(i, q)| {
            let digits: String = q
                .name
                .chars()
                .rev()
                .take_while(char::is_ascii_digit)
                .collect();
            let queue = digits
                .chars()
                .rev()
                .collect::<String>()
                .parse()
                .unwrap_or(i as u32);
            (queue, q)
        })
        .collect()
}

/// The last column of the /proc/interrupts line for `irq` (its action name).
fn irq_name(interrupts: &str, irq: u32) -> Option<String> {
    let prefix = format!("{irq}:");
    interrupts
        .lines()
        .find(|l| l.trim_start().starts_with(&prefix))
        .and_then(|l| l.split_whitespace().last())
        .map(str::to_string)
}

/// A CPU list in the kernel's compressed form (`0-3,8`).
pub fn list(v: &[usize]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    // Compress runs: 0-3,8,10-11.
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// The topology as a readable tree, with the NIC's locality when given.
pub fn tree_text(t: &HostTopology, nic: Option<&NicInfo>) -> String {
    let cpus = t.cpus();
    let mut s = format!(
        "topology of {}: {} package(s), {} NUMA node(s), {} cores, {} CPUs{}\n",
        t.source,
        t.packages().len(),
        t.nodes.len(),
        t.cores.len(),
        cpus.len(),
        if t.smt() { " (SMT)" } else { "" }
    );
    if !t.online.is_empty() {
        s.push_str(&format!(
            "online {}; isolated {}; nohz_full {}\n",
            list(&t.online),
            list(&t.isolated),
            list(&t.nohz_full)
        ));
    }
    for pkg in t.packages() {
        s.push_str(&format!("package {pkg}\n"));
        let pkg_cpus: Vec<usize> = t
            .cores
            .iter()
            .filter(|c| c.package == pkg)
            .flat_map(|c| c.cpus.clone())
            .collect();
        for c in t
            .caches
            .iter()
            .filter(|c| c.level == 3 && c.cpus.iter().any(|x| pkg_cpus.contains(x)))
        {
            s.push_str(&format!(
                "  L3 {} KiB shared by CPUs {}\n",
                c.size / 1024,
                list(&c.cpus)
            ));
        }
        for node in &t.nodes {
            let here: Vec<&Core> = t
                .cores
                .iter()
                .filter(|c| c.package == pkg && c.node == *node)
                .collect();
            if here.is_empty() {
                continue;
            }
            let nic_here = nic.and_then(|n| n.numa_node).is_some_and(|n| n == *node);
            s.push_str(&format!(
                "  numa node {node}{}\n",
                if nic_here {
                    format!(
                        "  <- {} is attached here",
                        nic.map_or("", |n| n.iface.as_str())
                    )
                } else {
                    String::new()
                }
            ));
            for c in here {
                let mut marks = Vec::new();
                if c.cpus.iter().any(|x| t.isolated.contains(x)) {
                    marks.push("isolated");
                }
                if !t.online.is_empty() && c.cpus.iter().any(|x| !t.online.contains(x)) {
                    marks.push("offline CPUs");
                }
                s.push_str(&format!(
                    "    core {:>3}: CPUs {}{}\n",
                    c.id,
                    list(&c.cpus),
                    if marks.is_empty() {
                        String::new()
                    } else {
                        format!("  [{}]", marks.join(", "))
                    }
                ));
            }
        }
    }
    if let Some(n) = nic {
        s.push_str(&format!(
            "nic {}: {} receive queue(s), NUMA node {}\n",
            n.iface,
            n.rx_queues,
            n.numa_node
                .map_or("unknown (virtual device or single node)".to_string(), |x| x
                    .to_string())
        ));
        for q in &n.irqs {
            s.push_str(&format!(
                "  irq {:>4} {:<24} affinity {}\n",
                q.irq,
                q.name,
                list(&q.affinity)
            ));
        }
        if n.irqs.is_empty() {
            s.push_str("  no queue interrupts (a virtual device, or its driver exposes none)\n");
        }
    }
    s
}

/// Whether `path` looks like an hwloc XML topology (for the CLI's `--xml`).
pub fn is_xml(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .map(|s| s.contains("<topology"))
        .unwrap_or(false)
}

/// Receive queues of a network interface: the ethtool channel count
/// (SIOCETHTOOL, answered in the caller's network namespace), else sysfs
/// `queues/rx-*`; None when neither tells.
pub fn rx_queue_count(iface: &str) -> Option<usize> {
    #[repr(C)]
    #[derive(Default)]
    struct EthtoolChannels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    // SAFETY: a plain datagram socket for the ioctl, closed below; `ifr` is a
    // zeroed ifreq whose name is NUL-terminated (at most 15 bytes copied) and
    // whose data pointer refers to `ch`, alive for the whole call.
    let by_ioctl = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            None
        } else {
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (d, s) in ifr.ifr_name.iter_mut().zip(iface.bytes().take(15)) {
                *d = s as libc::c_char;
            }
            ifr.ifr_ifru.ifru_data = (&mut ch as *mut EthtoolChannels).cast();
            let rc = libc::ioctl(fd, libc::SIOCETHTOOL, &mut ifr);
            libc::close(fd);
            (rc == 0).then(|| (ch.rx_count + ch.combined_count) as usize)
        }
    };
    by_ioctl.filter(|&n| n > 0).or_else(|| {
        std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
            .ok()
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                    .count()
            })
            .filter(|&n| n > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_print_compressed() {
        assert_eq!(list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(list(&[]), "-");
        assert_eq!(list(&[5]), "5");
    }

    #[test]
    fn receive_queue_irqs_are_found_by_name_with_their_queue() {
        let q = |irq, name: &str| QueueIrq {
            irq,
            name: name.into(),
            affinity: vec![],
        };
        let nic = NicInfo {
            iface: "eth0".into(),
            numa_node: None,
            rx_queues: 2,
            irqs: vec![
                q(37, "virtio2-config"),
                q(38, "virtio2-input.0"),
                q(39, "virtio2-output.0"),
                q(40, "virtio2-input.1"),
            ],
        };
        let got: Vec<(u32, u32)> = rx_queue_irqs(&nic)
            .iter()
            .map(|(queue, q)| (*queue, q.irq))
            .collect();
        assert_eq!(got, vec![(0, 38), (1, 40)]);
        let mlx = NicInfo {
            irqs: vec![
                q(90, "mlx5_async@pci:0000:3b:00.0"),
                q(91, "mlx5_comp0@pci:0000:3b:00.0"),
            ],
            ..nic.clone()
        };
        assert_eq!(
            rx_queue_irqs(&mlx)
                .iter()
                .map(|(qq, q)| (*qq, q.irq))
                .collect::<Vec<_>>(),
            vec![(0, 91)]
        );
        let plain = NicInfo {
            irqs: vec![q(50, "eth0-TxRx-0"), q(51, "eth0-TxRx-1")],
            ..nic
        };
        assert_eq!(rx_queue_irqs(&plain).len(), 2);
    }

    #[test]
    fn irq_names_come_from_the_last_column() {
        let p = "           CPU0       CPU1\n  24:          0          5  PCI-MSI 524288-edge      eth0-TxRx-0\n";
        assert_eq!(irq_name(p, 24).as_deref(), Some("eth0-TxRx-0"));
        assert_eq!(irq_name(p, 25), None);
    }

    #[test]
    fn the_tree_marks_the_nic_node_and_isolated_cores() {
        let t = HostTopology {
            source: "test".into(),
            cores: vec![
                Core {
                    id: 0,
                    package: 0,
                    node: 0,
                    cpus: vec![0, 2],
                },
                Core {
                    id: 1,
                    package: 0,
                    node: 1,
                    cpus: vec![1, 3],
                },
            ],
            nodes: vec![0, 1],
            caches: vec![],
            online: vec![0, 1, 2, 3],
            isolated: vec![1, 3],
            nohz_full: vec![],
        };
        let nic = NicInfo {
            iface: "eth9".into(),
            numa_node: Some(1),
            rx_queues: 4,
            irqs: vec![],
        };
        let s = tree_text(&t, Some(&nic));
        assert!(s.contains("numa node 1  <- eth9 is attached here"), "{s}");
        assert!(s.contains("core   1: CPUs 1,3  [isolated]"), "{s}");
        assert!(s.contains("(SMT)"), "{s}");
    }
}
