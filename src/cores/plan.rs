//! Core maps: which CPU runs which role, planned from a topology and checked
//! against one. Pure logic over [`HostTopology`] and [`NicInfo`] values, so a
//! plan for a host we do not have is tested from its hwloc XML.
//!
//! Planning rules, in order (each choice is explained in the written map):
//! 1. Shards go on the NIC's NUMA node (node 0 without a NIC), one per
//!    receive queue, each on its own physical core (never two shards on SMT
//!    siblings), preferring isolated cores, and leaving the core of CPU 0
//!    (housekeeping, most IRQs) alone when the node has cores to spare.
//! 2. The batcher and control roles share one further physical core on the
//!    same node, never an SMT sibling of a shard's core.
//! 3. On a small machine the roles share: with two cores, one shard and the
//!    batcher + control on the other core; with one, everything on it.

use serde::{Deserialize, Serialize};

use super::{HostTopology, NicInfo};

/// One shard's place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardSlot {
    /// CPU the shard is pinned to.
    pub cpu: usize,
    /// NIC receive queue it owns.
    pub queue: u32,
    /// NUMA node of that CPU.
    pub node: usize,
}

/// A core map (a TOML file under numa/).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreMap {
    /// What host this map is for.
    pub host: String,
    /// Shards, in shard order.
    pub shards: Vec<ShardSlot>,
    /// CPU of the batcher (output) role.
    pub batcher_cpu: usize,
    /// CPU of the control role.
    pub control_cpu: usize,
}

/// A map and the reasons for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The map.
    pub map: CoreMap,
    /// One line per choice, written as comments above the map.
    pub notes: Vec<String>,
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// More shards asked for than physical cores on the node.
    #[error("{shards} shards asked for but NUMA node {node} has {cores} physical cores")]
    TooManyShards {
        /// Shards asked for.
        shards: usize,
        /// The node.
        node: usize,
        /// Its cores.
        cores: usize,
    },
    /// The topology has no cores.
    #[error("the topology has no cores")]
    Empty,
}

impl Plan {
    /// The map as TOML with the reasons as comments.
    pub fn to_toml(&self) -> String {
        let mut s = String::from("# klais core map, written by `klais cores plan`.\n#\n");
        for n in &self.notes {
            s.push_str(&format!("# - {n}\n"));
        }
        s.push('\n');
        s.push_str(&toml::to_string_pretty(&self.map).unwrap_or_default());
        s
    }
}

/// Why a map file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The file could not be read.
    #[error("cannot read core map {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// Not a valid map; toml's message names the key, line and column.
    #[error("core map {path}: {message}")]
    Parse {
        /// File.
        path: String,
        /// The parser's message.
        message: String,
    },
}

/// Reads a core map file.
pub fn load(path: &std::path::Path) -> Result<CoreMap, MapError> {
    let text = std::fs::read_to_string(path).map_err(|source| MapError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| MapError::Parse {
        path: path.display().to_string(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// Plans a core map. `shards` defaults to the NIC's receive queues (one per
/// queue), else to what the node can hold beside the batcher and control.
pub fn plan(
    t: &HostTopology,
    nic: Option<&NicInfo>,
    shards: Option<usize>,
    host: &str,
) -> Result<Plan, PlanError> {
    if t.cores.is_empty() {
        return Err(PlanError::Empty);
    }
    let mut notes = Vec::new();
    let node = match nic.and_then(|n| n.numa_node) {
        Some(n) if t.nodes.contains(&n) => {
            notes.push(format!(
                "NIC {} is on NUMA node {n}: shards, batcher and control go there",
                nic.map_or("", |n| n.iface.as_str())
            ));
            n
        }
        _ => {
            let n = t.nodes.first().copied().unwrap_or(0);
            notes.push(format!("no NIC NUMA node known: using node {n}"));
            n
        }
    };
    let on_node: Vec<&super::Core> = t.cores.iter().filter(|c| c.node == node).collect();
    let housekeeping = on_node.iter().position(|c| c.cpus.contains(&0));
    let wanted = shards
        .or_else(|| nic.map(|n| n.rx_queues).filter(|&q| q > 0))
        .unwrap_or_else(|| on_node.len().saturating_sub(1).max(1));
    if wanted > on_node.len() {
        return Err(PlanError::TooManyShards {
            shards: wanted,
            node,
            cores: on_node.len(),
        });
    }

    // Small machines: roles share cores.
    if on_node.len() <= 2 {
        let shard_core = on_node[on_node.len() - 1];
        let other = on_node[0];
        let shards: Vec<ShardSlot> = vec![ShardSlot {
            cpu: shard_core.cpus[0],
            queue: 0,
            node,
        }];
        notes.push(format!(
            "small machine ({} physical core(s) on the node): one shard on CPU {}, batcher and control share CPU {}",
            on_node.len(),
            shard_core.cpus[0],
            other.cpus[0]
        ));
        if wanted > 1 {
            notes.push(format!(
                "{wanted} shards asked for; a {}-core node holds one beside the batcher",
                on_node.len()
            ));
        }
        return Ok(Plan {
            map: CoreMap {
                host: host.to_string(),
                shards,
                batcher_cpu: other.cpus[0],
                control_cpu: other.cpus[0],
            },
            notes,
        });
    }

    // Order candidate cores: isolated first, then the rest, highest first;
    // the housekeeping core last.
    let mut order: Vec<usize> = (0..on_node.len()).collect();
    order.sort_by_key(|&i| {
        let c = on_node[i];
        let isolated = c.cpus.iter().all(|x| t.isolated.contains(x));
        (Some(i) == housekeeping, !isolated, std::cmp::Reverse(c.id))
    });
    let shard_cores: Vec<usize> = order.iter().copied().take(wanted).collect();
    let role_core = order
        .iter()
        .copied()
        .skip(wanted)
        .find(|&i| Some(i) != housekeeping)
        .or_else(|| housekeeping.filter(|h| !shard_cores.contains(h)));
    let Some(role_core) = role_core else {
        return Err(PlanError::TooManyShards {
            shards: wanted,
            node,
            cores: on_node.len(),
        });
    };
    if let Some(h) = housekeeping {
        if !shard_cores.contains(&h) && role_core != h {
            notes.push(format!(
                "core {} (CPU 0) left to the kernel and housekeeping",
                on_node[h].id
            ));
        }
    }
    let shards: Vec<ShardSlot> = shard_cores
        .iter()
        .enumerate()
        .map(|(q, &i)| ShardSlot {
            cpu: on_node[i].cpus[0],
            queue: q as u32,
            node,
        })
        .collect();
    notes.push(format!(
        "{} shard(s), one per receive queue, each on its own physical core (no two on SMT siblings): CPUs {:?}",
        shards.len(),
        shards.iter().map(|s| s.cpu).collect::<Vec<_>>()
    ));
    if shards.iter().any(|s| t.isolated.contains(&s.cpu)) {
        notes.push("isolated CPUs preferred for shards".to_string());
    }
    let rc = on_node[role_core];
    let (batcher_cpu, control_cpu) = match rc.cpus.as_slice() {
        [a, b, ..] => {
            notes.push(format!(
                "batcher and control on core {} (its SMT threads CPU {a} and CPU {b}), away from every shard's core",
                rc.id
            ));
            (*a, *b)
        }
        [a] => {
            notes.push(format!(
                "batcher and control share CPU {a} (core {}), away from every shard's core",
                rc.id
            ));
            (*a, *a)
        }
        [] => (0, 0),
    };
    Ok(Plan {
        map: CoreMap {
            host: host.to_string(),
            shards,
            batcher_cpu,
            control_cpu,
        },
        notes,
    })
}

/// One problem a map has on a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// True for errors (klais refuses the map), false for warnings.
    pub error: bool,
    /// What is wrong.
    pub what: String,
    /// How to fix it.
    pub fix: String,
}

/// Checks a map against a topology (and the NIC it serves): CPUs exist and
/// are online, shards match queues, locality, SMT siblings, isolation.
pub fn check(map: &CoreMap, t: &HostTopology, nic: Option<&NicInfo>) -> Vec<Problem> {
    let mut p = Vec::new();
    let cpus = t.cpus();
    let mut err = |what: String, fix: &str| {
        p.push(Problem {
            error: true,
            what,
            fix: fix.into(),
        })
    };
    let all = map
        .shards
        .iter()
        .map(|s| ("shard", s.cpu))
        .chain([("batcher", map.batcher_cpu), ("control", map.control_cpu)]);
    for (role, cpu) in all {
        if !cpus.contains(&cpu) {
            err(
                format!(
                    "{role} CPU {cpu} does not exist here (CPUs {})",
                    super::list(&cpus)
                ),
                "plan a map for this host: `klais cores plan`",
            );
        } else if !t.online.is_empty() && !t.online.contains(&cpu) {
            err(
                format!("{role} CPU {cpu} is offline"),
                "bring it online (/sys/devices/system/cpu/cpuN/online) or choose another",
            );
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for s in &map.shards {
        if !seen.insert(s.cpu) {
            err(
                format!("two shards on CPU {}", s.cpu),
                "give each shard its own CPU",
            );
        }
    }
    for (i, s) in map.shards.iter().enumerate() {
        if s.queue as usize != i {
            err(
                format!(
                    "shard {i} owns queue {} (klais gives shard i queue i)",
                    s.queue
                ),
                "list the shards in queue order, queues 0, 1, 2, ...",
            );
        }
    }
    if map.shards.is_empty() {
        err(
            "the map has no shards".into(),
            "list at least one [[shards]]",
        );
    }
    let mut warn = |what: String, fix: &str| {
        p.push(Problem {
            error: false,
            what,
            fix: fix.into(),
        })
    };
    if let Some(n) = nic {
        if n.rx_queues > 0 && map.shards.len() != n.rx_queues {
            warn(
                format!(
                    "{} shards for {} receive queues on {}",
                    map.shards.len(),
                    n.rx_queues,
                    n.iface
                ),
                "one shard per queue, or change the queue count (`ethtool -L IFACE combined N`)",
            );
        }
        for s in &map.shards {
            if n.rx_queues > 0 && s.queue as usize >= n.rx_queues {
                p.push(Problem {
                    error: true,
                    what: format!(
                        "shard on CPU {} owns queue {} but {} has {} queues",
                        s.cpu, s.queue, n.iface, n.rx_queues
                    ),
                    fix: "renumber the shards' queues from 0".into(),
                });
            }
        }
        if let Some(node) = n.numa_node {
            for s in &map.shards {
                if t.core_of(s.cpu).is_some_and(|c| c.node != node) {
                    p.push(Problem {
                        error: false,
                        what: format!(
                            "shard CPU {} is on node {} but {} is on node {node}",
                            s.cpu,
                            t.core_of(s.cpu).map_or(0, |c| c.node),
                            n.iface
                        ),
                        fix: "place shards on the NIC's node (`klais cores plan --iface`)".into(),
                    });
                }
            }
        }
    }
    for (role, cpu) in [("batcher", map.batcher_cpu), ("control", map.control_cpu)] {
        if let Some(core) = t.core_of(cpu) {
            if let Some(s) = map.shards.iter().find(|s| core.cpus.contains(&s.cpu)) {
                if s.cpu != cpu || map.shards.len() > 1 {
                    p.push(Problem {
                        error: false,
                        what: format!(
                            "{role} CPU {cpu} shares physical core {} with the shard on CPU {}",
                            core.id, s.cpu
                        ),
                        fix: "move it to a core no shard uses".into(),
                    });
                }
            }
        }
    }
    p
}

/// One receive queue's interrupt and where its shard runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqPlacement {
    /// Queue index.
    pub queue: u32,
    /// IRQ number.
    pub irq: u32,
    /// IRQ name.
    pub name: String,
    /// Current affinity.
    pub current: Vec<usize>,
    /// The CPU of the shard that owns the queue (None: no shard owns it).
    pub shard_cpu: Option<usize>,
}

/// Pairs each receive-queue IRQ of `nic` with its shard's CPU in `map`.
pub fn irq_placements(nic: &NicInfo, map: &CoreMap) -> Vec<IrqPlacement> {
    super::rx_queue_irqs(nic)
        .into_iter()
        .map(|(queue, q)| IrqPlacement {
            queue,
            irq: q.irq,
            name: q.name.clone(),
            current: q.affinity.clone(),
            shard_cpu: map.shards.iter().find(|s| s.queue == queue).map(|s| s.cpu),
        })
        .collect()
}

/// Sets an IRQ's affinity to one CPU (`/proc/irq/N/smp_affinity_list`).
///
/// # Requires
/// root; some interrupts refuse (managed IRQs), which the error says.
pub fn set_irq_affinity(irq: u32, cpu: usize) -> std::io::Result<()> {
    std::fs::write(
        format!("/proc/irq/{irq}/smp_affinity_list"),
        format!("{cpu}\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::super::Core;
    use super::*;

    /// `packages` x `cores` physical cores per package, `smt` threads each,
    /// one NUMA node per package; Linux-style numbering (siblings offset by
    /// the core count).
    fn host(packages: usize, cores: usize, smt: usize) -> HostTopology {
        let total = packages * cores;
        let mut v = Vec::new();
        for p in 0..packages {
            for c in 0..cores {
                let id = p * cores + c;
                v.push(Core {
                    id,
                    package: p,
                    node: p,
                    cpus: (0..smt).map(|t| id + t * total).collect(),
                });
            }
        }
        HostTopology {
            source: "synthetic".into(),
            cores: v,
            nodes: (0..packages).collect(),
            caches: vec![],
            online: (0..total * smt).collect(),
            isolated: vec![],
            nohz_full: vec![],
        }
    }

    fn nic(node: Option<usize>, queues: usize) -> NicInfo {
        NicInfo {
            iface: "eth0".into(),
            numa_node: node,
            rx_queues: queues,
            irqs: vec![],
        }
    }

    #[test]
    fn a_two_core_vm_gets_one_shard_and_shares_the_other_core() {
        let p = plan(&host(1, 2, 1), None, None, "vm").unwrap();
        assert_eq!(
            p.map.shards,
            vec![ShardSlot {
                cpu: 1,
                queue: 0,
                node: 0
            }]
        );
        assert_eq!((p.map.batcher_cpu, p.map.control_cpu), (0, 0));
        assert!(
            p.notes.iter().any(|n| n.contains("small machine")),
            "{:?}",
            p.notes
        );
        assert!(check(&p.map, &host(1, 2, 1), None).iter().all(|x| !x.error));
    }

    #[test]
    fn shards_take_whole_physical_cores_and_roles_avoid_their_siblings() {
        let t = host(1, 16, 2);
        let p = plan(&t, Some(&nic(Some(0), 8)), None, "16c").unwrap();
        assert_eq!(p.map.shards.len(), 8);
        let mut cores: Vec<usize> = p
            .map
            .shards
            .iter()
            .map(|s| t.core_of(s.cpu).unwrap().id)
            .collect();
        cores.sort_unstable();
        cores.dedup();
        assert_eq!(cores.len(), 8, "no two shards on one physical core");
        let role_core = t.core_of(p.map.batcher_cpu).unwrap().id;
        assert!(!cores.contains(&role_core));
        assert_eq!(
            t.core_of(p.map.control_cpu).unwrap().id,
            role_core,
            "batcher and control on one core's two threads"
        );
        assert!(
            !p.map.shards.iter().any(|s| s.cpu == 0) && p.map.batcher_cpu != 0,
            "CPU 0 left alone"
        );
        assert!(
            check(&p.map, &t, Some(&nic(Some(0), 8))).is_empty(),
            "{:?}",
            check(&p.map, &t, Some(&nic(Some(0), 8)))
        );
    }

    #[test]
    fn a_nic_on_node_1_pulls_every_role_to_node_1() {
        let t = host(2, 32, 2);
        let p = plan(&t, Some(&nic(Some(1), 16)), None, "2x32").unwrap();
        assert_eq!(p.map.shards.len(), 16);
        for s in &p.map.shards {
            assert_eq!(t.core_of(s.cpu).unwrap().node, 1);
        }
        assert_eq!(t.core_of(p.map.batcher_cpu).unwrap().node, 1);
    }

    #[test]
    fn fewer_queues_than_cores_gives_one_shard_per_queue() {
        let p = plan(&host(1, 16, 1), Some(&nic(None, 4)), None, "x").unwrap();
        assert_eq!(
            p.map.shards.iter().map(|s| s.queue).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
    }

    #[test]
    fn isolated_cores_are_preferred_for_shards() {
        let mut t = host(1, 8, 1);
        t.isolated = vec![2, 3];
        let p = plan(&t, Some(&nic(Some(0), 2)), None, "iso").unwrap();
        let mut cpus: Vec<usize> = p.map.shards.iter().map(|s| s.cpu).collect();
        cpus.sort_unstable();
        assert_eq!(cpus, vec![2, 3]);
    }

    #[test]
    fn more_shards_than_cores_on_the_node_is_refused() {
        let e = plan(&host(2, 4, 2), Some(&nic(Some(1), 8)), None, "x").unwrap_err();
        assert_eq!(
            e,
            PlanError::TooManyShards {
                shards: 8,
                node: 1,
                cores: 4
            }
        );
    }

    #[test]
    fn check_names_offline_cpus_wrong_node_and_queue_mismatch() {
        let mut t = host(2, 4, 1);
        t.online.retain(|&c| c != 5);
        let map = CoreMap {
            host: "x".into(),
            shards: vec![
                ShardSlot {
                    cpu: 5,
                    queue: 0,
                    node: 1,
                },
                ShardSlot {
                    cpu: 1,
                    queue: 3,
                    node: 0,
                },
            ],
            batcher_cpu: 2,
            control_cpu: 99,
        };
        let p = check(&map, &t, Some(&nic(Some(1), 2)));
        let all: Vec<String> = p
            .iter()
            .map(|x| format!("{} {}", if x.error { "E" } else { "W" }, x.what))
            .collect();
        let text = all.join("\n");
        assert!(text.contains("E shard CPU 5 is offline"), "{text}");
        assert!(text.contains("E control CPU 99 does not exist"), "{text}");
        assert!(text.contains("E shard on CPU 1 owns queue 3"), "{text}");
        assert!(
            text.contains("W shard CPU 1 is on node 0 but eth0 is on node 1"),
            "{text}"
        );
    }

    #[test]
    fn each_queue_irq_is_paired_with_its_shard_cpu() {
        let q = |irq, name: &str| super::super::QueueIrq {
            irq,
            name: name.into(),
            affinity: vec![0, 1],
        };
        let nic = NicInfo {
            iface: "eth0".into(),
            numa_node: None,
            rx_queues: 2,
            irqs: vec![
                q(50, "eth0-TxRx-0"),
                q(51, "eth0-TxRx-1"),
                q(52, "eth0-TxRx-2"),
            ],
        };
        let map = CoreMap {
            host: "x".into(),
            shards: vec![
                ShardSlot {
                    cpu: 6,
                    queue: 0,
                    node: 0,
                },
                ShardSlot {
                    cpu: 7,
                    queue: 1,
                    node: 0,
                },
            ],
            batcher_cpu: 1,
            control_cpu: 1,
        };
        let got: Vec<(u32, Option<usize>)> = irq_placements(&nic, &map)
            .iter()
            .map(|p| (p.irq, p.shard_cpu))
            .collect();
        assert_eq!(got, vec![(50, Some(6)), (51, Some(7)), (52, None)]);
    }

    #[test]
    fn a_written_plan_reads_back_as_the_same_map() {
        let p = plan(&host(1, 16, 2), Some(&nic(Some(0), 4)), None, "16c").unwrap();
        let back: CoreMap = toml::from_str(&p.to_toml()).unwrap();
        assert_eq!(back, p.map);
        assert!(p.to_toml().starts_with("# klais core map"));
    }
}
