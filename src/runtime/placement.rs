//! Placement as data: which CPU runs which role, decided once, printable and
//! checked against the CPUs that are online before anything starts.
//!
//! The full core-map files (numa/, `klais cores`) come with their own issue;
//! this is the single-shard placement `klais run` uses until then.

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
}

/// Where the roles run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// CPU of shard 0.
    pub shard_cpu: usize,
    /// CPU of the output (batcher) stage.
    pub output_cpu: usize,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shard 0 on CPU {}, output on CPU {}",
            self.shard_cpu, self.output_cpu
        )?;
        if self.shard_cpu == self.output_cpu {
            write!(f, " (sharing one CPU: expect lower throughput)")?;
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

/// Chooses the placement: configured CPUs are checked, omitted ones chosen.
/// The shard takes the highest online CPU (CPU 0 usually carries housekeeping
/// and most IRQs); the output stage takes the lowest online CPU that is not the
/// shard's, or shares the shard's CPU on a one-CPU machine.
pub fn plan(
    online: &[usize],
    shard_cpu: Option<usize>,
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
    let Some(&highest) = online.last() else {
        return Err(PlacementError::Unreadable("no CPU is online".into()));
    };
    let shard = match shard_cpu {
        Some(c) => check("cores.shard_cpu", c)?,
        None => match output_cpu {
            // Keep off an explicitly placed output CPU when possible.
            Some(o) if o == highest && online.len() > 1 => online[online.len() - 2],
            _ => highest,
        },
    };
    let output = match output_cpu {
        Some(c) => check("cores.output_cpu", c)?,
        None => online
            .iter()
            .copied()
            .find(|&c| c != shard)
            .unwrap_or(shard),
    };
    Ok(Placement {
        shard_cpu: shard,
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
    fn on_two_cpus_the_shard_takes_cpu_1_and_the_output_cpu_0() {
        assert_eq!(
            plan(&[0, 1], None, None).unwrap(),
            Placement {
                shard_cpu: 1,
                output_cpu: 0
            }
        );
    }

    #[test]
    fn one_cpu_is_shared_and_said_so() {
        let p = plan(&[0], None, None).unwrap();
        assert_eq!(
            p,
            Placement {
                shard_cpu: 0,
                output_cpu: 0
            }
        );
        assert!(p.to_string().contains("sharing"));
    }

    #[test]
    fn an_offline_cpu_is_refused_naming_the_key() {
        let e = plan(&[0, 1], Some(5), None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cores.shard_cpu = 5 is not an online CPU (online: 0,1)"),
            "{e}"
        );
    }

    #[test]
    fn an_explicit_output_cpu_pushes_the_automatic_shard_elsewhere() {
        assert_eq!(
            plan(&[0, 1, 2, 3], None, Some(3)).unwrap(),
            Placement {
                shard_cpu: 2,
                output_cpu: 3
            }
        );
    }
}
