//! Least privilege after start-up (docs/operating.md, "Least privilege").
//!
//! What klais needs, and when:
//!
//! | capability      | start-up                                        | after |
//! |-----------------|-------------------------------------------------|-------|
//! | CAP_BPF         | load the XDP program, create its maps           | yes: the control core and the admin API write the maps (rates, overrides, deny list, classifier), `/metrics` reads them; Linux < 6.5 checks CAP_BPF on every bpf() call while `kernel.unprivileged_bpf_disabled` is set (Debian's default) |
//! | CAP_NET_ADMIN   | attach XDP (netlink), larger socket buffers     | yes: detaching the filter at stop is a netlink request again |
//! | CAP_NET_RAW     | open AF_XDP sockets                             | no |
//! | CAP_IPC_LOCK    | lock UMEM and io_uring memory                   | no |
//! | CAP_SYS_RESOURCE| raise RLIMIT_MEMLOCK (or LimitMEMLOCK in the unit) | no |
//! | CAP_PERFMON     | BPF helpers some kernels gate on it             | no |
//!
//! Without the XDP filter nothing is kept. Needs Linux ≥ 5.8 (CAP_BPF).
//!
//! Capabilities belong to threads, not processes: `capset(2)` changes only
//! the calling thread, and every core of klais is a thread (glommio executors
//! and their helper threads, the batcher and librdkafka's threads, the control
//! and admin threads). So [`drop_all_threads`] does what libcap's `psx` does:
//! it sends every other thread a real-time signal whose handler calls
//! `capset` on itself (an async-signal-safe system call), waits for each to
//! answer, drops its own, then checks `/proc/self/task/*/status` that every
//! thread holds exactly the kept set, and fails loudly if one does not. The
//! inheritable set is emptied (which empties the ambient set), and
//! `no_new_privs` is set, so nothing klais might execute gains any.
//!
//! Threads that block every signal cannot be reached this way: librdkafka's
//! (so the output core drops its own capabilities before it creates the
//! producer, and they inherit the dropped set) and io_uring's `iou-wrk`
//! workers, if any existed before the drop (none do on klais's paths: the
//! shards' rings only poll sockets). Any such thread left holding more is
//! found by the final /proc check, and klais stops cleanly with its name.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Capability numbers (linux/capability.h) klais knows by name.
pub const NAMES: [(u32, &str); 9] = [
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (12, "CAP_NET_ADMIN"),
    (13, "CAP_NET_RAW"),
    (14, "CAP_IPC_LOCK"),
    (21, "CAP_SYS_ADMIN"),
    (24, "CAP_SYS_RESOURCE"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
];

/// CAP_NET_ADMIN.
pub const CAP_NET_ADMIN: u32 = 12;
/// CAP_BPF.
pub const CAP_BPF: u32 = 39;

/// The name of capability `n`.
pub fn name(n: u32) -> String {
    NAMES
        .iter()
        .find(|(c, _)| *c == n)
        .map_or_else(|| format!("cap_{n}"), |(_, s)| (*s).to_string())
}

/// Names of the bits set in a capability mask.
pub fn names(mask: u64) -> Vec<String> {
    (0..64).filter(|b| mask >> b & 1 == 1).map(name).collect()
}

/// What klais keeps once started: CAP_BPF and CAP_NET_ADMIN with the XDP
/// filter, nothing without it.
pub fn runtime_set(xdp: bool) -> Vec<u32> {
    if xdp {
        vec![CAP_BPF, CAP_NET_ADMIN]
    } else {
        Vec::new()
    }
}

/// Why capabilities could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// A system call failed.
    #[error("dropping capabilities: {call} failed: {source}")]
    Sys {
        /// Which call.
        call: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// Some threads still hold more than the kept set.
    #[error("dropping capabilities: thread(s) {threads:?} still hold more than {kept:?} (set privilege.drop_capabilities = false to run without dropping, and report this)")]
    Incomplete {
        /// Threads that did not drop: id (name).
        threads: Vec<String>,
        /// The intended set.
        kept: Vec<String>,
    },
}

/// The masks of one thread, from its /proc status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ThreadCaps {
    /// CapEff.
    pub effective: u64,
    /// CapPrm.
    pub permitted: u64,
    /// CapInh.
    pub inheritable: u64,
    /// CapAmb.
    pub ambient: u64,
}

/// Parses the Cap* lines of a /proc/…/status text.
pub fn parse_status(text: &str) -> ThreadCaps {
    let mut c = ThreadCaps::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = u64::from_str_radix(v.trim(), 16).unwrap_or(0);
        match k {
            "CapEff" => c.effective = v,
            "CapPrm" => c.permitted = v,
            "CapInh" => c.inheritable = v,
            "CapAmb" => c.ambient = v,
            _ => {}
        }
    }
    c
}

/// Every thread of process `pid` (or "self") and its capabilities.
pub fn threads_of(pid: &str) -> Vec<(u32, ThreadCaps)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(e.path().join("status")) {
            out.push((tid, parse_status(&text)));
        }
    }
    out.sort_by_key(|(t, _)| *t);
    out
}

// The target masks, read by the signal handler.
static TARGET: AtomicU64 = AtomicU64::new(0);
static ANSWERED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// capset on the calling thread: effective = permitted = `mask`,
/// inheritable = 0; and no_new_privs. Only system calls: async-signal-safe.
fn capset_self(mask: u64) -> bool {
    let hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let lo = mask as u32;
    let hi = (mask >> 32) as u32;
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads a v3 header and two data structs, both valid for
    // the call; prctl(PR_SET_NO_NEW_PRIVS) takes integers only.
    unsafe {
        let ok = libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, data.as_ptr()) == 0;
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        ok
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    let saved = std::io::Error::last_os_error().raw_os_error();
    if capset_self(TARGET.load(Ordering::Acquire)) {
        ANSWERED.fetch_add(1, Ordering::AcqRel);
    } else {
        FAILED.fetch_add(1, Ordering::AcqRel);
    }
    // Keep errno as the interrupted code left it.
    if let Some(e) = saved {
        // SAFETY: __errno_location is the calling thread's errno.
        unsafe { *libc::__errno_location() = e };
    }
}

/// True when thread `tid` of this process blocks signal `sig`.
fn blocks(tid: u32, sig: i32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")) else {
        return false;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|m| m >> (sig - 1) & 1 == 1)
}

/// Drops the calling thread's capabilities to `keep` (limited to what it
/// has), before it creates threads that block signals (librdkafka's) and so
/// could not be reached by [`drop_all_threads`] later.
pub fn drop_self(keep: &[u32]) -> Result<(), PrivilegeError> {
    if capset_self(target(keep)) {
        Ok(())
    } else {
        Err(PrivilegeError::Sys {
            call: "capset",
            source: std::io::Error::last_os_error(),
        })
    }
}

/// The calling thread's capabilities.
fn own_caps() -> ThreadCaps {
    std::fs::read_to_string("/proc/thread-self/status")
        .map(|t| parse_status(&t))
        .unwrap_or_default()
}

/// `keep` as a mask, limited to what the calling thread may hold.
fn target(keep: &[u32]) -> u64 {
    keep.iter().fold(0, |m, c| m | 1u64 << c) & own_caps().permitted
}

fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Keeps only `keep` (capability numbers, limited to what the process has)
/// in every thread of the process; returns the names kept.
///
/// # Requires
/// Linux ≥ 4.3 (ambient sets) and ≥ 5.8 for CAP_BPF to exist.
pub fn drop_all_threads(keep: &[u32]) -> Result<Vec<String>, PrivilegeError> {
    let want = target(keep);
    TARGET.store(want, Ordering::Release);
    let sig = libc::SIGRTMAX() - 2;
    // SAFETY: a handler that only makes system calls and touches atomics;
    // SA_RESTART so interrupted calls resume (glommio's io_uring wait also
    // takes EINTR as a spurious wake-up).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(PrivilegeError::Sys {
                call: "sigaction",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    let pid = std::process::id() as i32;
    let tid = gettid();
    let holds_more = |c: &ThreadCaps| {
        c.effective != want || c.permitted != want || c.inheritable != 0 || c.ambient != 0
    };
    // Threads may start while this runs (librdkafka's broker threads): they
    // inherit from a thread that already dropped, or the next round gets them.
    for _round in 0..20 {
        let holding: Vec<(i32, bool)> = threads_of("self")
            .into_iter()
            .filter(|(t, c)| *t as i32 != tid && holds_more(c))
            .map(|(t, _)| (t as i32, blocks(t, sig)))
            .collect();
        let others: Vec<i32> = holding
            .iter()
            .filter(|(_, blocked)| !blocked)
            .map(|&(t, _)| t)
            .collect();
        if others.is_empty() {
            if holding.is_empty() {
                break;
            }
            // Only threads that block the signal still hold more: threads
            // still starting (glibc runs a new thread with every signal
            // blocked until it is set up, and one started before the drop
            // inherited everything). The next round reaches them.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        ANSWERED.store(0, Ordering::Release);
        FAILED.store(0, Ordering::Release);
        let mut sent = 0u32;
        for t in &others {
            // SAFETY: tgkill with this process's id and one of its threads;
            // a thread that exited meanwhile gives ESRCH, skipped.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, *t, sig) } == 0 {
                sent += 1;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while ANSWERED.load(Ordering::Acquire) + FAILED.load(Ordering::Acquire) < sent
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        if FAILED.load(Ordering::Acquire) > 0 {
            return Err(PrivilegeError::Sys {
                call: "capset (in a core's thread)",
                source: std::io::Error::from_raw_os_error(libc::EPERM),
            });
        }
    }
    if !capset_self(want) {
        return Err(PrivilegeError::Sys {
            call: "capset",
            source: std::io::Error::last_os_error(),
        });
    }
    // The check: until two scans in a row list the same threads (a thread
    // that dropped late may have started one in between; it inherited from
    // a thread that still held more).
    let mut scan = threads_of("self");
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(5));
        let again = threads_of("self");
        let same = again.len() == scan.len() && again.iter().zip(&scan).all(|(a, b)| a.0 == b.0);
        scan = again;
        if same {
            break;
        }
    }
    let left: Vec<String> = scan
        .iter()
        .filter(|(_, c)| holds_more(c))
        .map(|(t, _)| {
            let comm =
                std::fs::read_to_string(format!("/proc/self/task/{t}/comm")).unwrap_or_default();
            format!("{t} ({})", comm.trim())
        })
        .collect();
    if !left.is_empty() {
        return Err(PrivilegeError::Incomplete {
            threads: left,
            kept: names(want),
        });
    }
    Ok(names(want))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse_into_masks_and_names() {
        let c = parse_status(
            "Name:\tklais\nCapInh:\t0000000000000000\nCapPrm:\t0000008000001000\nCapEff:\t0000008000001000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n",
        );
        assert_eq!(c.permitted, 1 << 39 | 1 << 12);
        assert_eq!(c.effective, c.permitted);
        assert_eq!(names(c.effective), vec!["CAP_NET_ADMIN", "CAP_BPF"]);
        assert_eq!(name(5), "cap_5");
    }

    #[test]
    fn the_runtime_set_is_empty_without_the_filter() {
        assert!(runtime_set(false).is_empty());
        assert_eq!(runtime_set(true), vec![CAP_BPF, CAP_NET_ADMIN]);
    }
}
