//! `klais cores`: the machine's cores for placing klais. Shows the topology
//! and the NIC's locality, plans a core map, checks one, and pins the NIC's
//! queue interrupts to the cores of the shards that own the queues.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use klais::cores::plan::CoreMap;
use klais::cores::{self, HostTopology, NicInfo};

use super::{runtime_fail, usage_fail};

#[derive(Subcommand, Debug)]
pub(super) enum CoresCmd {
    /// The topology as a tree: packages, NUMA nodes, cores and their SMT
    /// siblings, online / isolated / nohz_full CPUs, and with --iface the NIC's
    /// NUMA node, receive queues and their IRQs' affinity. HWLOC_XMLFILE=FILE
    /// shows a topology saved with `lstopo --of xml` instead of this machine's.
    Show {
        /// Also show this NIC's locality.
        #[arg(long)]
        iface: Option<String>,
        /// Print JSON for scripts instead of the tree.
        #[arg(long)]
        json: bool,
    },
    /// Plan a core map: shards on the NIC's node, one per receive queue, each
    /// on its own physical core; batcher and control on another core of the
    /// same node; CPU 0 left alone when there is room. Prints the map with the
    /// reason for each choice, or writes it with --write.
    Plan {
        /// The NIC the shards serve (its NUMA node and queue count).
        #[arg(long)]
        iface: Option<String>,
        /// Shards (default: one per receive queue).
        #[arg(long)]
        shards: Option<usize>,
        /// For a host described by HWLOC_XMLFILE: the NIC's NUMA node.
        #[arg(long)]
        nic_node: Option<usize>,
        /// For a host described by HWLOC_XMLFILE: the NIC's receive queues.
        #[arg(long)]
        queues: Option<usize>,
        /// Write the map to this file (e.g. numa/myhost.toml).
        #[arg(long, value_name = "FILE")]
        write: Option<PathBuf>,
    },
    /// Show each receive queue's IRQ, its affinity and the CPU of the shard
    /// that owns the queue; with --apply, pin each IRQ to that CPU (root).
    Irq {
        /// The NIC.
        #[arg(long)]
        iface: String,
        /// The core map whose shards own the queues (default: a fresh plan).
        #[arg(long, value_name = "FILE")]
        core_map: Option<PathBuf>,
        /// Write the affinities.
        #[arg(long)]
        apply: bool,
    },
    /// Check a core map against this machine (or HWLOC_XMLFILE): CPUs exist
    /// and are online, shards match queues, NUMA locality, SMT siblings.
    /// Prints each problem with its fix; exit 2 when any is an error.
    Check {
        /// The map.
        file: PathBuf,
        /// The NIC the shards serve.
        #[arg(long)]
        iface: Option<String>,
        /// For a host described by HWLOC_XMLFILE: the NIC's NUMA node.
        #[arg(long)]
        nic_node: Option<usize>,
        /// For a host described by HWLOC_XMLFILE: the NIC's receive queues.
        #[arg(long)]
        queues: Option<usize>,
    },
}

/// Runs a `klais cores` command.
pub(super) fn run(cmd: CoresCmd) -> ExitCode {
    let done = match cmd {
        CoresCmd::Show { iface, json } => show(iface.as_deref(), json),
        CoresCmd::Plan {
            iface,
            shards,
            nic_node,
            queues,
            write,
        } => plan(iface.as_deref(), shards, nic_node, queues, write.as_deref()),
        CoresCmd::Irq {
            iface,
            core_map,
            apply,
        } => irq(&iface, core_map.as_deref(), apply),
        CoresCmd::Check {
            file,
            iface,
            nic_node,
            queues,
        } => check(&file, iface.as_deref(), nic_node, queues),
    };
    done.unwrap_or_else(|code| code)
}

/// The topology (and the NIC's locality) as a tree or JSON.
fn show(iface: Option<&str>, json: bool) -> Result<ExitCode, ExitCode> {
    let topo = cores::discover().map_err(runtime_fail)?;
    let nic = iface
        .map(cores::nic_info)
        .transpose()
        .map_err(runtime_fail)?;
    if json {
        let v = serde_json::json!({ "topology": topo, "nic": nic });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", cores::tree_text(&topo, nic.as_ref()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Plans a core map; prints it, or writes it to `write`.
fn plan(
    iface: Option<&str>,
    shards: Option<usize>,
    nic_node: Option<usize>,
    queues: Option<usize>,
    write: Option<&Path>,
) -> Result<ExitCode, ExitCode> {
    let (topo, nic) = topology_and_nic(iface, nic_node, queues)?;
    let host = write
        .and_then(|w| w.file_stem())
        .map_or(topo.source.clone(), |s| s.to_string_lossy().into_owned());
    let text = cores::plan::plan(&topo, nic.as_ref(), shards, &host)
        .map_err(usage_fail)?
        .to_toml();
    match write {
        Some(path) => {
            std::fs::write(path, &text)
                .map_err(|e| runtime_fail(format!("cannot write {}: {e}", path.display())))?;
            println!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the map in `file`; exit 2 when any problem is an error.
fn check(
    file: &Path,
    iface: Option<&str>,
    nic_node: Option<usize>,
    queues: Option<usize>,
) -> Result<ExitCode, ExitCode> {
    let map = cores::plan::load(file).map_err(usage_fail)?;
    let (topo, nic) = topology_and_nic(iface, nic_node, queues)?;
    let problems = cores::plan::check(&map, &topo, nic.as_ref());
    for p in &problems {
        println!(
            "{}: {}; fix: {}",
            if p.error { "error" } else { "warning" },
            p.what,
            p.fix
        );
    }
    if problems.iter().any(|p| p.error) {
        Ok(ExitCode::from(2))
    } else {
        println!("{}: OK for {}", file.display(), topo.source);
        Ok(ExitCode::SUCCESS)
    }
}

/// Shows (and with `apply` sets) each queue IRQ's affinity to its shard's
/// CPU; exit 1 when one could not be set.
fn irq(iface: &str, core_map: Option<&Path>, apply: bool) -> Result<ExitCode, ExitCode> {
    let nic = cores::nic_info(iface).map_err(runtime_fail)?;
    let map = irq_map(&nic, core_map)?;
    let placements = cores::plan::irq_placements(&nic, &map);
    if placements.is_empty() {
        println!("{iface} exposes no queue interrupts (a virtual device?): nothing to pin");
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = false;
    for p in &placements {
        let want = p
            .shard_cpu
            .map_or("no shard".to_string(), |c| format!("CPU {c}"));
        print!(
            "queue {:>3}  irq {:>4}  {:<24} affinity {:<10} shard {}",
            p.queue,
            p.irq,
            p.name,
            cores::list(&p.current),
            want
        );
        match (apply, p.shard_cpu) {
            (true, Some(cpu)) => match cores::plan::set_irq_affinity(p.irq, cpu) {
                Ok(()) => println!("  -> set"),
                Err(e) => {
                    failed = true;
                    println!("  -> not set: {e} (needs root; managed IRQs refuse)");
                }
            },
            _ => println!(),
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The core map whose shards own the queues: `core_map`, or a fresh plan.
fn irq_map(nic: &NicInfo, core_map: Option<&Path>) -> Result<CoreMap, ExitCode> {
    match core_map {
        Some(path) => cores::plan::load(path).map_err(usage_fail),
        None => {
            let topo = cores::discover().map_err(runtime_fail)?;
            cores::plan::plan(&topo, Some(nic), None, &topo.source)
                .map(|p| p.map)
                .map_err(usage_fail)
        }
    }
}

/// The topology (this machine, or HWLOC_XMLFILE) and the NIC to plan or
/// check for; a failure is reported and becomes exit status 1.
fn topology_and_nic(
    iface: Option<&str>,
    nic_node: Option<usize>,
    queues: Option<usize>,
) -> Result<(HostTopology, Option<NicInfo>), ExitCode> {
    let topo = cores::discover().map_err(runtime_fail)?;
    let nic = nic_for(iface, nic_node, queues).map_err(runtime_fail)?;
    Ok((topo, nic))
}

/// The NIC to plan or check for: a real interface, or one described by flags.
fn nic_for(
    iface: Option<&str>,
    nic_node: Option<usize>,
    queues: Option<usize>,
) -> Result<Option<NicInfo>, klais::xdp::XdpError> {
    match iface {
        Some(i) => {
            let mut n = cores::nic_info(i)?;
            if nic_node.is_some() {
                n.numa_node = nic_node;
            }
            if let Some(q) = queues {
                n.rx_queues = q;
            }
            Ok(Some(n))
        }
        None if nic_node.is_some() || queues.is_some() => Ok(Some(NicInfo {
            iface: "nic".into(),
            numa_node: nic_node,
            rx_queues: queues.unwrap_or(0),
            irqs: Vec::new(),
        })),
        None => Ok(None),
    }
}
