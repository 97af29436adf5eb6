//! Placement as data: which CPU runs which role, decided once, printable and
//! checked against the CPUs that are online before anything starts.
//!
//! Pure: it reads the online CPU list once ([`online_cpus`]) and plans from
//! that value, so a plan can be printed, diffed and tested without a machine.

use std::fmt;

/// Why a placement cannot be used on this machine.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    /// A configured CPU is not online.
    #[error("{key} = {cpu} is not an online CPU (online: {online}); fix: pick one of those or omit the key")]
    CpuOffline {
        /// Config key.
        key: &'static str,
        /// CPU asked for.
        cpu: usize,
        /// Online CPUs as a list string.
        online: String,
    },
    /// The online CPU list could not be read.
    #[error("cannot read the online CPU list ({0})")]
    Unreadable(String),
    /// More shards than CPUs.
    #[error("ingest.shards = {shards} but only CPUs {online} are online; fix: use at most that many shards")]
    TooFewCpus {
        /// Shards asked for.
        shards: usize,
        /// Online CPUs.
        online: String,
    },
}

/// Where the roles run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// CPU of each shard, in shard order.
    pub shard_cpus: Vec<usize>,
    /// CPU of the output (batcher) stage.
    pub output_cpu: usize,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.shard_cpus.iter().enumerate() {
            write!(f, "shard {i} on CPU {c}, ")?;
        }
        write!(f, "output on CPU {}", self.output_cpu)?;
        if let Some(i) = self.shard_cpus.iter().position(|&c| c == self.output_cpu) {
            write!(
                f,
                " (sharing CPU {} with shard {i}: expect lower throughput)",
                self.output_cpu
            )?;
        }
        Ok(())
    }
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, PlacementError> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let bad = || PlacementError::Unreadable(format!("bad CPU list {s:?}"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// The online CPUs of this machine (sysfs).
pub fn online_cpus() -> Result<Vec<usize>, PlacementError> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map_err(|e| PlacementError::Unreadable(format!("/sys/devices/system/cpu/online: {e}")))?;
    parse_cpu_list(&s)
}

fn list_string(cpus: &[usize]) -> String {
    cpus.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Chooses the placement for `shards` shards: configured CPUs are checked,
/// omitted ones chosen. Shards take the highest online CPUs (CPU 0 usually
/// carries housekeeping and IRQs), keeping off an explicitly placed output
/// CPU; the output stage takes the lowest online CPU no shard uses, or shares
/// one when every CPU runs a shard (said in the printed placement).
pub fn plan(
    online: &[usize],
    shards: usize,
    shard_cpus: Option<&[usize]>,
    output_cpu: Option<usize>,
) -> Result<Placement, PlacementError> {
    let check = |key: &'static str, cpu: usize| {
        if online.contains(&cpu) {
            Ok(cpu)
        } else {
            Err(PlacementError::CpuOffline {
                key,
                cpu,
                online: list_string(online),
            })
        }
    };
    if online.is_empty() {
        return Err(PlacementError::Unreadable("no CPU is online".into()));
    }
    if let Some(o) = output_cpu {
        check("cores.output_cpu", o)?;
    }
    let shard_cpus = match shard_cpus {
        Some(list) => list
            .iter()
            .map(|&c| check("cores.shard_cpus", c))
            .collect::<Result<Vec<_>, _>>()?,
        None => {
            if shards > online.len() {
                return Err(PlacementError::TooFewCpus {
                    shards,
                    online: list_string(online),
                });
            }
            let mut pick: Vec<usize> = online
                .iter()
                .rev()
                .copied()
                .filter(|&c| Some(c) != output_cpu)
                .take(shards)
                .collect();
            if pick.len() < shards {
                // Every CPU is needed: the output's CPU too.
                pick = online.iter().rev().copied().take(shards).collect();
            }
            pick
        }
    };
    let output = match output_cpu {
        Some(o) => o,
        None => online
            .iter()
            .copied()
            .find(|c| !shard_cpus.contains(c))
            .unwrap_or(online[0]),
    };
    Ok(Placement {
        shard_cpus,
        output_cpu: output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_cpu_lists_parse() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
    }

    #[test]
    fn on_two_cpus_one_shard_takes_cpu_1_and_the_output_cpu_0() {
        assert_eq!(
            plan(&[0, 1], 1, None, None).unwrap(),
            Placement {
                shard_cpus: vec![1],
                output_cpu: 0
            }
        );
    }

    #[test]
    fn two_shards_on_two_cpus_share_cpu_0_with_the_output_and_say_so() {
        let p = plan(&[0, 1], 2, None, None).unwrap();
        assert_eq!(
            p,
            Placement {
                shard_cpus: vec![1, 0],
                output_cpu: 0
            }
        );
        assert!(p.to_string().contains("sharing CPU 0 with shard 1"), "{p}");
    }

    #[test]
    fn more_shards_than_cpus_is_refused() {
        let e = plan(&[0, 1], 3, None, None).unwrap_err().to_string();
        assert!(e.contains("ingest.shards = 3"), "{e}");
    }

    #[test]
    fn an_offline_cpu_is_refused_naming_the_key() {
        let e = plan(&[0, 1], 1, Some(&[5]), None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cores.shard_cpus = 5 is not an online CPU (online: 0,1)"),
            "{e}"
        );
    }

    #[test]
    fn an_explicit_output_cpu_pushes_automatic_shards_elsewhere() {
        assert_eq!(
            plan(&[0, 1, 2, 3], 2, None, Some(3)).unwrap(),
            Placement {
                shard_cpus: vec![2, 1],
                output_cpu: 3
            }
        );
    }
}
