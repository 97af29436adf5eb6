//! The kernel data plane's user-space side: loads the XDP filter (`bpf/`),
//! writes its run-time settings, attaches it to an interface, reads its
//! counters and events.
//!
//! The C program decides per packet; this module only configures and observes
//! it. Types shared with C come from the skeleton libbpf-cargo generates into
//! `OUT_DIR` ([`skel::types`]); nothing here is a hand-kept copy of a C layout.
//!
//! # Requires
//! Root or CAP_BPF + CAP_NET_ADMIN (CAP_PERFMON for `BPF_PROG_TEST_RUN`
//! timing), a kernel with BTF and BPF atomics (5.12+), bpffs at `/sys/fs/bpf`.

mod attach;
pub mod bench;
pub mod frame;
mod limits;

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, OpenObject};

pub use attach::{detach_iface, iface_index, pin_dir, status, AttachMode, Attachment, IfaceStatus};
pub use limits::{Limits, Rate, RateError};

/// The generated skeletons (libbpf-cargo, `OUT_DIR`).
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    unused_imports
)]
pub mod skel {
    include!(concat!(env!("OUT_DIR"), "/klais.skel.rs"));
}

#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    unused_imports
)]
mod empty_skel {
    include!(concat!(env!("OUT_DIR"), "/empty.skel.rs"));
}

use skel::types::{
    klais_counters, klais_event, klais_model, klais_model_ctl, klais_model_scratch, klais_policy,
    klais_settings, klais_verdict,
};

/// Every exit of the XDP program. Discriminants are the C enum's values
/// (checked at compile time below).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Verdict {
    /// Not klais traffic: passed untouched.
    NotKlais = klais_verdict::KLAIS_V_NOT_KLAIS.0,
    /// Headers end early: passed (the kernel drops it).
    Truncated = klais_verdict::KLAIS_V_TRUNCATED.0,
    /// Payload shorter than the v1 header: dropped.
    TooShort = klais_verdict::KLAIS_V_TOO_SHORT.0,
    /// Not magic 0xAA55: dropped.
    BadMagic = klais_verdict::KLAIS_V_BAD_MAGIC.0,
    /// Device on the deny list: dropped.
    Denied = klais_verdict::KLAIS_V_DENIED.0,
    /// Device over its token bucket: dropped.
    RateLimited = klais_verdict::KLAIS_V_RATE_LIMITED.0,
    /// Global budget exceeded: dropped.
    GlobalBudget = klais_verdict::KLAIS_V_GLOBAL_BUDGET.0,
    /// Redirected to the AF_XDP socket of the receive queue.
    Redirect = klais_verdict::KLAIS_V_REDIRECT.0,
    /// No socket on the queue: passed to the kernel UDP path.
    Pass = klais_verdict::KLAIS_V_PASS.0,
    /// The classifier put it in a class whose action is drop.
    ModelDrop = klais_verdict::KLAIS_V_MODEL_DROP.0,
}

const _: () = assert!(klais_verdict::KLAIS_V__COUNT.0 as usize == Verdict::ALL.len());

impl Verdict {
    /// Every verdict, in counter order.
    pub const ALL: [Verdict; 10] = [
        Verdict::NotKlais,
        Verdict::Truncated,
        Verdict::TooShort,
        Verdict::BadMagic,
        Verdict::Denied,
        Verdict::RateLimited,
        Verdict::GlobalBudget,
        Verdict::Redirect,
        Verdict::Pass,
        Verdict::ModelDrop,
    ];

    /// Stable snake_case name.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::NotKlais => "not_klais",
            Verdict::Truncated => "truncated",
            Verdict::TooShort => "too_short",
            Verdict::BadMagic => "bad_magic",
            Verdict::Denied => "denied",
            Verdict::RateLimited => "rate_limited",
            Verdict::GlobalBudget => "global_budget",
            Verdict::Redirect => "redirect",
            Verdict::Pass => "pass",
            Verdict::ModelDrop => "model_drop",
        }
    }

    /// The XDP action this verdict returns with enforcement on.
    pub const fn action(self) -> u32 {
        match self {
            Verdict::TooShort
            | Verdict::BadMagic
            | Verdict::Denied
            | Verdict::RateLimited
            | Verdict::GlobalBudget
            | Verdict::ModelDrop => XDP_DROP,
            Verdict::Redirect => XDP_REDIRECT,
            Verdict::NotKlais | Verdict::Truncated | Verdict::Pass => XDP_PASS,
        }
    }
}

/// XDP_DROP.
pub const XDP_DROP: u32 = 1;
/// XDP_PASS.
pub const XDP_PASS: u32 = 2;
/// XDP_REDIRECT.
pub const XDP_REDIRECT: u32 = 4;

/// Counters summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpCounters {
    /// Packets per verdict, indexed by `Verdict as usize`.
    pub packets: [u64; 10],
    /// Events written to the ring buffer.
    pub events_sent: u64,
    /// Events not sent: over the per-second cap.
    pub events_capped: u64,
    /// Events not sent: ring buffer full.
    pub events_lost: u64,
    /// Lost compare-and-swap races on device buckets.
    pub bucket_retries: u64,
    /// Devices whose bucket was given to a new device (a full set).
    pub bucket_evictions: u64,
    /// New devices admitted without a bucket: every way of their set belonged
    /// to a device over its rate (or the race for a way was lost twice).
    pub bucket_untracked: u64,
    /// Packets the classifier put in each class (normal, flood, sweep, replay).
    pub model_class: [u64; 4],
    /// Redirected with a mark for the Kafka header.
    pub model_marked: u64,
}

impl XdpCounters {
    /// Packets for one verdict.
    pub fn get(&self, v: Verdict) -> u64 {
        self.packets[v as usize]
    }
    fn add(&mut self, c: &klais_counters) {
        for (a, b) in self.packets.iter_mut().zip(c.packets.iter()) {
            *a += b;
        }
        self.events_sent += c.events_sent;
        self.events_capped += c.events_capped;
        self.events_lost += c.events_lost;
        self.bucket_retries += c.bucket_retries;
        self.bucket_evictions += c.bucket_evictions;
        self.bucket_untracked += c.bucket_untracked;
        for (a, b) in self.model_class.iter_mut().zip(c.model_class.iter()) {
            *a += b;
        }
        self.model_marked += c.model_marked;
    }
}

/// A device event from the kernel's ring buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceEvent {
    /// Kernel monotonic time, ns.
    pub ts_ns: u64,
    /// FNV-1a 64 of the raw id.
    pub device_hash: u64,
    /// Raw id bytes.
    pub device_id: [u8; 16],
    /// What happened.
    pub kind: EventKind,
    /// The packet's sequence number.
    pub seq: u32,
}

/// Kinds of [`DeviceEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// First packet of a device the kernel had no bucket for.
    NewDevice,
    /// Sequence went back near zero: the device restarted.
    SeqReset,
    /// The device went over its rate (sent once per episode).
    RateLimited,
    /// A kind this build does not know.
    Unknown(u32),
}

impl DeviceEvent {
    fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < std::mem::size_of::<klais_event>() {
            return None;
        }
        // SAFETY: the kernel wrote a `struct klais_event` (plain integers, no
        // padding-sensitive invariants) and the length was checked above;
        // read_unaligned copes with any alignment.
        let e: klais_event = unsafe { std::ptr::read_unaligned(b.as_ptr().cast()) };
        use skel::types::klais_event_kind as K;
        let kind = match e.kind {
            k if k == K::KLAIS_EV_NEW_DEVICE.0 => EventKind::NewDevice,
            k if k == K::KLAIS_EV_SEQ_RESET.0 => EventKind::SeqReset,
            k if k == K::KLAIS_EV_RATE_LIMITED.0 => EventKind::RateLimited,
            k => EventKind::Unknown(k),
        };
        Some(DeviceEvent {
            ts_ns: e.ts_ns,
            device_hash: e.device_hash,
            device_id: e.device_id,
            kind,
            seq: e.seq,
        })
    }
}

/// Why the kernel side could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// Opening or loading the BPF object failed (verifier, missing privilege).
    #[error("loading the XDP program failed: {0:#}. Needs root (or CAP_BPF + CAP_NET_ADMIN) and a kernel with BTF and BPF atomics (5.12+)")]
    Load(libbpf_rs::Error),
    /// A map operation failed.
    #[error("{what}: {source}")]
    Map {
        /// What was being done.
        what: String,
        /// libbpf's error.
        source: libbpf_rs::Error,
    },
    /// A setting is out of range.
    #[error(transparent)]
    Rate(#[from] RateError),
    /// Attaching failed.
    #[error("cannot attach XDP to {iface} in {mode} mode: {reason}")]
    Attach {
        /// Interface.
        iface: String,
        /// Mode asked for.
        mode: AttachMode,
        /// The kernel's reason and the fix.
        reason: String,
    },
    /// The interface does not exist.
    #[error("no network interface named {0:?} (see `ip link`)")]
    NoSuchIface(String),
    /// Nothing of klais is pinned for this interface.
    #[error("klais has no XDP program pinned for {iface} (nothing under {dir}); is it attached? `klais xdp status --iface {iface}`")]
    NotPinned {
        /// Interface.
        iface: String,
        /// Pin directory.
        dir: String,
    },
    /// Filesystem work on bpffs failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// OS error.
        source: std::io::Error,
    },
}

fn map_err(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> XdpError {
    let what = what.into();
    move |source| XdpError::Map { what, source }
}

/// Load-time settings (rodata): fixed for the life of a loaded program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// UDP ports that carry klais traffic (at most 8).
    pub ports: Vec<u16>,
    /// Drop what the checks refuse (false: count it and let it through).
    pub enforce: bool,
    /// Send sampled device events to the ring buffer.
    pub events: bool,
    /// Sequence numbers at or below this, going back, raise a reset event.
    pub reset_window: u32,
    /// Devices the kernel keeps buckets for (4-way sets; see `xdp.max_devices`).
    pub max_devices: u32,
    /// Flows the classifier keeps state for (an LRU hash, ~100 bytes each,
    /// preallocated; 1,024 to 4M). An evicted device's next datagram looks
    /// like a new one (and counts toward the new-flow rate): size it for
    /// every device when the classifier runs.
    pub flow_entries: u32,
}

impl LoadOptions {
    /// The load-time settings a configuration's `[xdp]` section asks for.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        LoadOptions {
            ports: cfg.xdp.effective_ports(&cfg.ingest.listen),
            enforce: cfg.xdp.enforce,
            events: cfg.xdp.events,
            reset_window: cfg.sequence.reset_window,
            max_devices: cfg.xdp.max_devices,
            // Every device when the classifier runs from the start; a small
            // table otherwise (a live `klais model load` then works, with
            // evictions beyond 65,536 devices).
            flow_entries: if cfg.model.classifier.is_some() {
                cfg.xdp.max_devices
            } else {
                1 << 16
            },
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ports: vec![7700],
            enforce: true,
            events: true,
            reset_window: 4,
            max_devices: 1 << 20,
            flow_entries: 1 << 16,
        }
    }
}

/// Handles on the program's maps, from a loaded program or from the pins of
/// an attached one (`klais xdp stats` in another process).
#[derive(Debug)]
pub struct KernelMaps {
    counters: MapHandle,
    settings: MapHandle,
    policy: MapHandle,
    /// The ring buffer, for [`KernelMaps::events`].
    events: MapHandle,
    /// AF_XDP sockets per queue (only in the process that loaded the program).
    xsks: Option<MapHandle>,
    /// Classifier slots, switch and working memory.
    model: MapHandle,
    model_ctl: MapHandle,
    model_scratch: MapHandle,
    /// The program puts marks in a frame prefix, not the metadata area
    /// ([`kernel_allows_xdp_meta`]).
    mark_prefix: bool,
}

/// Whether this kernel lets XDP programs call `bpf_xdp_adjust_meta` (asked
/// once, through libbpf's helper probe). Some kernels refuse it ("program of
/// this type cannot use helper bpf_xdp_adjust_meta"); the program then marks
/// redirected frames with a prefix instead (`mark_prefix` in bpf/klais.bpf.c).
pub fn kernel_allows_xdp_meta() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| {
        // SAFETY: a probe that loads a tiny program of the given type calling
        // the helper; the options pointer may be null.
        let r = unsafe {
            libbpf_rs::libbpf_sys::libbpf_probe_bpf_helper(
                libbpf_rs::libbpf_sys::BPF_PROG_TYPE_XDP,
                libbpf_rs::libbpf_sys::BPF_FUNC_xdp_adjust_meta,
                std::ptr::null(),
            )
        };
        if r != 1 {
            tracing::info!("this kernel refuses bpf_xdp_adjust_meta in XDP programs: classifier marks travel in an 8-byte prefix of each redirected frame");
        }
        r == 1
    })
}

/// Names under which maps are pinned, in `pin_dir(iface)`.
pub(crate) const PINNED_MAPS: [&str; 7] = [
    "counters",
    "settings",
    "policy",
    "events",
    "model",
    "model_ctl",
    "model_scratch",
];

/// `KLAIS_POLICY_DENY` (bpf/klais.h).
const POLICY_DENY: u64 = 1;
/// `KLAIS_POLICY_OVERRIDE` (bpf/klais.h).
const POLICY_OVERRIDE: u64 = 2;

impl KernelMaps {
    /// Opens the maps pinned for `iface` by `klais run` or `klais xdp attach`.
    pub fn from_pins(iface: &str) -> Result<Self, XdpError> {
        let dir = pin_dir(iface);
        if !dir.join("counters").exists() {
            return Err(XdpError::NotPinned {
                iface: iface.to_string(),
                dir: dir.display().to_string(),
            });
        }
        let open = |name: &str| {
            MapHandle::from_pinned_path(dir.join(name)).map_err(map_err(format!(
                "opening pinned map {}",
                dir.join(name).display()
            )))
        };
        Ok(Self {
            counters: open("counters")?,
            settings: open("settings")?,
            policy: open("policy")?,
            events: open("events")?,
            xsks: None,
            model: open("model")?,
            model_ctl: open("model_ctl")?,
            model_scratch: open("model_scratch")?,
            // No sockets are bound through pinned maps: the mode is not needed.
            mark_prefix: false,
        })
    }

    /// Loads a classifier into the idle model slot, then switches the
    /// program to it (and on) in one write: packets see the old model or the
    /// new one, never half of each. `None` switches the classifier off.
    /// Returns the slot now active.
    pub fn set_model(
        &self,
        f: Option<&crate::model::classifier::ClassifierFile>,
    ) -> Result<u32, XdpError> {
        let mut ctl = self.model_ctl_now()?;
        let Some(f) = f else {
            ctl.enabled = 0;
            self.write_model_ctl(&ctl)?;
            return Ok(ctl.active);
        };
        let slot = if ctl.enabled != 0 {
            ctl.active ^ 1
        } else {
            ctl.active
        };
        let m = model_value(f);
        self.model
            .update(&slot.to_ne_bytes(), pod_bytes(&m), MapFlags::ANY)
            .map_err(map_err("writing the classifier's model slot"))?;
        ctl.active = slot;
        ctl.enabled = 1;
        self.write_model_ctl(&ctl)?;
        // Grace period: a packet that read the old slot number finishes with
        // it (microseconds) before a next load may overwrite that slot.
        std::thread::sleep(std::time::Duration::from_millis(10));
        Ok(slot)
    }

    fn model_ctl_now(&self) -> Result<klais_model_ctl, XdpError> {
        let bytes = self
            .model_ctl
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("reading the classifier switch"))?
            .unwrap_or_default();
        if bytes.len() < std::mem::size_of::<klais_model_ctl>() {
            return Ok(klais_model_ctl::default());
        }
        // SAFETY: the map's value type is `struct klais_model_ctl` (u32 only); length checked.
        Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
    }

    fn write_model_ctl(&self, c: &klais_model_ctl) -> Result<(), XdpError> {
        self.model_ctl
            .update(&0u32.to_ne_bytes(), pod_bytes(c), MapFlags::ANY)
            .map_err(map_err("writing the classifier switch"))
    }

    /// Whether the classifier is on, and its active slot.
    pub fn model_enabled(&self) -> Result<(bool, u32), XdpError> {
        let c = self.model_ctl_now()?;
        Ok((c.enabled != 0, c.active))
    }

    /// The classifier's last inputs and outputs on each CPU (tests; the
    /// kernel leaves them in its per-CPU working memory): the entry with the
    /// latest time is the last packet classified.
    pub fn model_last(&self) -> Result<Option<ModelTrace>, XdpError> {
        let per_cpu = self
            .model_scratch
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("reading the classifier's scratch"))?
            .unwrap_or_default();
        let mut best: Option<ModelTrace> = None;
        for bytes in per_cpu {
            if bytes.len() < std::mem::size_of::<klais_model_scratch>() {
                continue;
            }
            // SAFETY: the map's value type is `struct klais_model_scratch`
            // (integers only); the length was checked.
            let sc: klais_model_scratch =
                unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            if sc.now_ns != 0 && best.as_ref().map_or(true, |b| sc.now_ns > b.now_ns) {
                best = Some(ModelTrace {
                    now_ns: sc.now_ns,
                    x: sc.x,
                    out: sc.out,
                    class: sc.class,
                    action: sc.action,
                });
            }
        }
        Ok(best)
    }

    /// Per-verdict counters summed over CPUs.
    pub fn counters(&self) -> Result<XdpCounters, XdpError> {
        let per_cpu = self
            .counters
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("reading XDP counters"))?
            .unwrap_or_default();
        let mut sum = XdpCounters::default();
        for bytes in per_cpu {
            if bytes.len() >= std::mem::size_of::<klais_counters>() {
                // SAFETY: the map's value type is `struct klais_counters`
                // (integers only); the length was checked.
                let c: klais_counters = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
                sum.add(&c);
            }
        }
        Ok(sum)
    }

    /// Writes the run-time limits (rates, budgets, event cap) for `ncpus` CPUs.
    pub fn set_limits(&self, limits: &Limits, ncpus: u32) -> Result<(), XdpError> {
        let mut s = limits.to_settings(ncpus);
        s.policy_entries = self.policy.keys().count() as u64;
        self.write_settings(&s)
    }

    fn read_settings(&self) -> Result<klais_settings, XdpError> {
        let bytes = self
            .settings
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("reading XDP settings"))?
            .unwrap_or_default();
        if bytes.len() < std::mem::size_of::<klais_settings>() {
            return Ok(Limits::default().to_settings(possible_cpus()));
        }
        // SAFETY: the map's value type is `struct klais_settings` (u64 only); length checked.
        Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
    }

    fn write_settings(&self, s: &klais_settings) -> Result<(), XdpError> {
        self.settings
            .update(&0u32.to_ne_bytes(), pod_bytes(s), MapFlags::ANY)
            .map_err(map_err("writing XDP settings"))
    }

    /// The limits currently in the kernel.
    pub fn limits(&self) -> Result<Limits, XdpError> {
        Ok(Limits::from_settings(&self.read_settings()?))
    }

    fn policy_of(&self, key: &[u8]) -> Result<Option<klais_policy>, XdpError> {
        let v = self
            .policy
            .lookup(key, MapFlags::ANY)
            .map_err(map_err("reading the device policy map"))?;
        Ok(v.filter(|b| b.len() >= std::mem::size_of::<klais_policy>())
            .map(|b| {
                // SAFETY: the map's value type is `struct klais_policy` (u64 only); length checked.
                unsafe { std::ptr::read_unaligned(b.as_ptr().cast()) }
            }))
    }

    /// Applies `change` to one device's policy entry (deleting it when no flag
    /// is left), then tells the program how many entries exist, so it skips
    /// the lookup while the map is empty.
    fn edit_policy(
        &self,
        device_hash: u64,
        change: impl FnOnce(&mut klais_policy),
    ) -> Result<(), XdpError> {
        let key = device_hash.to_ne_bytes();
        let mut p = self.policy_of(&key)?.unwrap_or_default();
        change(&mut p);
        if p.flags == 0 {
            match self.policy.delete(&key) {
                Ok(()) => {}
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(e) => return Err(map_err("removing a device policy")(e)),
            }
        } else {
            self.policy
                .update(&key, pod_bytes(&p), MapFlags::ANY)
                .map_err(map_err("writing a device policy (at most 65536 devices)"))?;
        }
        let mut s = self.read_settings()?;
        s.policy_entries = self.policy.keys().count() as u64;
        self.write_settings(&s)
    }

    /// Sets (or with `None` removes) a per-device rate override.
    pub fn set_override(&self, device_hash: u64, rate: Option<Rate>) -> Result<(), XdpError> {
        self.edit_policy(device_hash, |p| match rate {
            Some(r) => {
                (p.interval_ns, p.tolerance_ns) = r.gcra();
                p.rate_pps = r.pps();
                p.burst = r.burst();
                p.flags |= POLICY_OVERRIDE;
            }
            None => {
                p.flags &= !POLICY_OVERRIDE;
                (p.interval_ns, p.tolerance_ns, p.rate_pps, p.burst) = (0, 0, 0, 0);
            }
        })
    }

    /// Adds (`true`) or removes a device from the deny list.
    pub fn set_denied(&self, device_hash: u64, denied: bool) -> Result<(), XdpError> {
        self.edit_policy(device_hash, |p| {
            if denied {
                p.flags |= POLICY_DENY;
            } else {
                p.flags &= !POLICY_DENY;
            }
        })
    }

    /// Binds an AF_XDP socket to receive queue `queue`: from now on the filter
    /// redirects that queue's accepted klais traffic to it.
    pub fn bind_socket(&self, queue: u32, fd: std::os::fd::RawFd) -> Result<(), XdpError> {
        self.bind_fd(queue, fd)
    }

    /// Binds `xsk` to receive queue `queue` ([`KernelMaps::bind_socket`]) and
    /// tells it how this program hands it marks (metadata area or prefix).
    pub fn bind_xsk(
        &self,
        queue: u32,
        xsk: &mut crate::ingest::af_xdp::XskSocket,
    ) -> Result<(), XdpError> {
        xsk.set_mark_prefix(self.mark_prefix);
        self.bind_fd(queue, xsk.fd())
    }

    /// Whether redirected frames start with the 8-byte mark prefix.
    pub fn mark_prefix(&self) -> bool {
        self.mark_prefix
    }

    fn bind_fd(&self, queue: u32, fd: std::os::fd::RawFd) -> Result<(), XdpError> {
        let xsks = self.xsks.as_ref().ok_or_else(|| XdpError::Map {
            what: "binding an AF_XDP socket".into(),
            source: libbpf_rs::Error::from(std::io::Error::other(
                "the XSKMAP is only reachable from the process that loaded the program",
            )),
        })?;
        xsks.update(
            &queue.to_ne_bytes(),
            &(fd as u32).to_ne_bytes(),
            MapFlags::ANY,
        )
        .map_err(map_err(format!(
            "binding the AF_XDP socket of queue {queue} in the XSKMAP"
        )))
    }

    /// Unbinds queue `queue`: its traffic takes the kernel path again.
    pub fn unbind_socket(&self, queue: u32) -> Result<(), XdpError> {
        if let Some(xsks) = &self.xsks {
            match xsks.delete(&queue.to_ne_bytes()) {
                Ok(()) => {}
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(e) => return Err(map_err("unbinding an AF_XDP socket")(e)),
            }
        }
        Ok(())
    }

    /// Drains the events waiting in the ring buffer (non-blocking).
    pub fn events(&self) -> Result<Vec<DeviceEvent>, XdpError> {
        let mut out = Vec::new();
        {
            let mut b = libbpf_rs::RingBufferBuilder::new();
            b.add(&self.events, |data: &[u8]| {
                if let Some(e) = DeviceEvent::from_bytes(data) {
                    out.push(e);
                }
                0
            })
            .map_err(map_err("opening the event ring buffer"))?;
            let rb = b
                .build()
                .map_err(map_err("opening the event ring buffer"))?;
            rb.consume()
                .map_err(map_err("reading the event ring buffer"))?;
        }
        Ok(out)
    }
}

/// The classifier's last packet as the kernel saw it ([`KernelMaps::model_last`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelTrace {
    /// The time the features used, ns (kernel monotonic clock).
    pub now_ns: u64,
    /// Features, Q16.
    pub x: [i64; 12],
    /// Logits, Q16.
    pub out: [i64; 4],
    /// Class.
    pub class: u32,
    /// `KLAIS_ACT_*`.
    pub action: u32,
}

/// The kernel's `struct klais_model` of a classifier file.
fn model_value(f: &crate::model::classifier::ClassifierFile) -> klais_model {
    let q = &f.quant;
    let mut m = klais_model {
        norm_min: q.norm.min,
        norm_max: q.norm.max,
        norm_recip: q.norm.recip(),
        in_scale: q.in_scale,
        deq1: q.deq1,
        b1: q.b1,
        deq2: q.deq2,
        b2: q.b2,
        deq3: q.deq3,
        b3: q.b3,
        version: 1,
        ..Default::default()
    };
    // Stored biased by 128 (see `struct klais_model`).
    let biased = |w: i8| (i16::from(w) + 128) as u8;
    for (d, s) in m.w1.iter_mut().zip(&q.w1) {
        *d = s.map(biased);
    }
    for (d, s) in m.w2.iter_mut().zip(&q.w2) {
        *d = s.map(biased);
    }
    for (d, s) in m.w3.iter_mut().zip(&q.w3) {
        *d = s.map(biased);
    }
    for (d, a) in m.action.iter_mut().zip(f.actions.iter()) {
        *d = a.code();
    }
    m
}

/// The bytes of a generated C struct of integers.
fn pod_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: only called with skeleton types generated from C structs of
    // integers (klais_settings, klais_policy, klais_model_ctl: no padding;
    // klais_model: its only padding is the tail after `version`, zeroed by
    // `Default` where it is built and ignored by the kernel); any bit pattern
    // is valid; the slice borrows `v` for its lifetime.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// The loaded XDP filter.
pub struct XdpProgram {
    skel: skel::KlaisSkel<'static>,
    maps: std::sync::Arc<KernelMaps>,
}

impl std::fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpProgram").finish_non_exhaustive()
    }
}

/// Sets in the kernel's device table for `max_devices` (4 ways each, a power
/// of two, at least 256).
fn bucket_sets(max_devices: u32) -> u32 {
    (max_devices / 4).max(256).next_power_of_two()
}

/// Number of possible CPUs (per-CPU map width; the global budget's divisor).
pub fn possible_cpus() -> u32 {
    libbpf_rs::num_possible_cpus().map_or(1, |n| n.max(1) as u32)
}

impl XdpProgram {
    /// Opens, configures (rodata, map sizes) and loads the program into the
    /// kernel, then writes `limits`. Not attached to anything yet.
    pub fn load(opts: &LoadOptions, limits: &Limits) -> Result<Self, XdpError> {
        if opts.ports.is_empty() || opts.ports.len() > 8 || opts.ports.contains(&0) {
            return Err(XdpError::Attach {
                iface: String::new(),
                mode: AttachMode::Auto,
                reason: format!(
                    "xdp ports must be 1 to 8 non-zero ports, got {:?}",
                    opts.ports
                ),
            });
        }
        // The skeleton borrows its object storage for as long as the program
        // is used; one small allocation per load, kept for the process.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = skel::KlaisSkelBuilder::default()
            .open(storage)
            .map_err(XdpError::Load)?;
        {
            let ro = open.maps.rodata_data.as_deref_mut().ok_or_else(|| {
                XdpError::Load(libbpf_rs::Error::from(std::io::Error::other("no .rodata")))
            })?;
            for (slot, p) in ro.klais_ports.iter_mut().zip(opts.ports.iter()) {
                *slot = *p;
            }
            ro.enforce = u32::from(opts.enforce);
            ro.events_enabled = u32::from(opts.events);
            ro.reset_window = opts.reset_window;
            ro.bucket_set_mask = bucket_sets(opts.max_devices) - 1;
            ro.mark_prefix = u32::from(!kernel_allows_xdp_meta());
        }
        open.maps
            .buckets
            .set_max_entries(bucket_sets(opts.max_devices))
            .map_err(XdpError::Load)?;
        // Classifier flow state (preallocated LRU, ~100 bytes an entry).
        open.maps
            .flows
            .set_max_entries(opts.flow_entries.clamp(1024, 1 << 22))
            .map_err(XdpError::Load)?;
        let skel = open.load().map_err(XdpError::Load)?;
        let handle = |m: &libbpf_rs::MapMut<'_>, name: &str| {
            MapHandle::try_from(m).map_err(map_err(format!("opening map {name}")))
        };
        let maps = KernelMaps {
            counters: handle(&skel.maps.counters, "counters")?,
            settings: handle(&skel.maps.settings, "settings")?,
            policy: handle(&skel.maps.policy, "policy")?,
            events: handle(&skel.maps.events, "events")?,
            xsks: Some(handle(&skel.maps.xsks, "xsks")?),
            model: handle(&skel.maps.model, "model")?,
            model_ctl: handle(&skel.maps.model_ctl, "model_ctl")?,
            model_scratch: handle(&skel.maps.model_scratch, "model_scratch")?,
            mark_prefix: !kernel_allows_xdp_meta(),
        };
        let prog = Self {
            skel,
            maps: std::sync::Arc::new(maps),
        };
        prog.maps.set_limits(limits, possible_cpus())?;
        Ok(prog)
    }

    /// The program's maps.
    pub fn maps(&self) -> &KernelMaps {
        &self.maps
    }

    /// The program's maps, shareable with the shard cores (they bind their
    /// AF_XDP sockets; the control core writes limits).
    pub fn maps_arc(&self) -> std::sync::Arc<KernelMaps> {
        self.maps.clone()
    }

    /// Runs the program on `frame` through `BPF_PROG_TEST_RUN`, `repeat` times;
    /// returns the XDP action and the kernel's average time per run.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration), XdpError> {
        test_run(&self.skel.progs.klais_xdp, frame, repeat)
    }

    /// Attaches to `iface` (see [`Attachment`]); pins the maps for operators.
    pub fn attach(&self, iface: &str, mode: AttachMode) -> Result<Attachment, XdpError> {
        attach::attach(self, iface, mode)
    }

    pub(crate) fn prog_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.skel.progs.klais_xdp.as_fd()
    }

    pub(crate) fn pin_all(&self, dir: &Path) -> Result<(), XdpError> {
        let pins: [(&str, &libbpf_rs::MapMut<'_>); 7] = [
            ("counters", &self.skel.maps.counters),
            ("settings", &self.skel.maps.settings),
            ("policy", &self.skel.maps.policy),
            ("events", &self.skel.maps.events),
            ("model", &self.skel.maps.model),
            ("model_ctl", &self.skel.maps.model_ctl),
            ("model_scratch", &self.skel.maps.model_scratch),
        ];
        for (name, map) in pins {
            let mut h = MapHandle::try_from(map).map_err(map_err(format!("opening map {name}")))?;
            h.pin(dir.join(name))
                .map_err(map_err(format!("pinning {}", dir.join(name).display())))?;
        }
        Ok(())
    }
}

fn test_run(
    prog: &libbpf_rs::ProgramMut<'_>,
    frame: &[u8],
    repeat: u32,
) -> Result<(u32, Duration), XdpError> {
    let input = libbpf_rs::ProgramInput {
        data_in: Some(frame),
        repeat,
        ..Default::default()
    };
    let out = prog.test_run(input).map_err(map_err("BPF_PROG_TEST_RUN"))?;
    Ok((out.return_value, out.duration))
}

/// The empty XDP program (returns XDP_PASS): the harness cost of
/// `BPF_PROG_TEST_RUN`, for benchmarks.
pub struct EmptyProgram {
    skel: empty_skel::EmptySkel<'static>,
}

impl std::fmt::Debug for EmptyProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmptyProgram").finish_non_exhaustive()
    }
}

impl EmptyProgram {
    /// Loads it.
    pub fn load() -> Result<Self, XdpError> {
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = empty_skel::EmptySkelBuilder::default()
            .open(storage)
            .map_err(XdpError::Load)?;
        Ok(Self {
            skel: open.load().map_err(XdpError::Load)?,
        })
    }
    /// As [`XdpProgram::test_run`].
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration), XdpError> {
        test_run(&self.skel.progs.klais_xdp_empty, frame, repeat)
    }
}

/// Where pins live.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf/klais";

/// `PathBuf` of a pinned object for `iface`.
pub fn pinned(iface: &str, name: &str) -> PathBuf {
    pin_dir(iface).join(name)
}
