//! Attaching the filter to an interface, detaching it, and recovering from a
//! klais that died while attached.
//!
//! Ownership is marked by the pin directory `/sys/fs/bpf/klais/<iface>/` (mode
//! 0700): klais pins its maps there when it attaches and removes them when it
//! detaches. A program found attached *with* that directory present was left
//! by a klais that died (SIGKILL, crash): it is replaced and said so. A program
//! found attached *without* it belongs to someone else and is never touched.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use libbpf_rs::{Xdp, XdpFlags};

use super::{XdpError, XdpProgram, BPFFS_ROOT, PINNED_MAPS};

pub use crate::config::AttachMode;

/// The pin directory for `iface`.
pub fn pin_dir(iface: &str) -> PathBuf {
    PathBuf::from(BPFFS_ROOT).join(iface)
}

/// The interface's index.
pub fn iface_index(iface: &str) -> Result<i32, XdpError> {
    let c = std::ffi::CString::new(iface).map_err(|_| XdpError::NoSuchIface(iface.to_string()))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(XdpError::NoSuchIface(iface.to_string()))
    } else {
        Ok(idx as i32)
    }
}

/// What is attached to an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceStatus {
    /// Interface.
    pub iface: String,
    /// Its index.
    pub ifindex: i32,
    /// Id of the attached XDP program (0: none).
    pub prog_id: u32,
    /// "native", "generic", "offload", "multi" or "none".
    pub mode: &'static str,
    /// klais's pin directory exists (klais attached it).
    pub klais_pinned: bool,
}

fn query(ifindex: i32) -> (u32, u8) {
    // A query needs no program; any fd-less handle does. libbpf's query only
    // reads the interface state.
    // SAFETY: bpf_xdp_query writes into the zero-initialised opts struct whose
    // `sz` field is set to its size as libbpf requires.
    unsafe {
        let mut opts: libbpf_rs::libbpf_sys::bpf_xdp_query_opts = std::mem::zeroed();
        opts.sz = std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_xdp_query_opts>() as _;
        if libbpf_rs::libbpf_sys::bpf_xdp_query(ifindex, 0, &mut opts) != 0 {
            return (0, 0);
        }
        (opts.prog_id, opts.attach_mode)
    }
}

fn mode_name(m: u8) -> &'static str {
    match u32::from(m) {
        libbpf_rs::libbpf_sys::XDP_ATTACHED_DRV => "native",
        libbpf_rs::libbpf_sys::XDP_ATTACHED_SKB => "generic",
        libbpf_rs::libbpf_sys::XDP_ATTACHED_HW => "offload",
        libbpf_rs::libbpf_sys::XDP_ATTACHED_MULTI => "multi",
        _ => "none",
    }
}

fn mode_flags(m: u8) -> XdpFlags {
    match u32::from(m) {
        libbpf_rs::libbpf_sys::XDP_ATTACHED_DRV => XdpFlags::DRV_MODE,
        libbpf_rs::libbpf_sys::XDP_ATTACHED_SKB => XdpFlags::SKB_MODE,
        libbpf_rs::libbpf_sys::XDP_ATTACHED_HW => XdpFlags::HW_MODE,
        _ => XdpFlags::NONE,
    }
}

/// What is attached to `iface`.
pub fn status(iface: &str) -> Result<IfaceStatus, XdpError> {
    let ifindex = iface_index(iface)?;
    let (prog_id, mode) = query(ifindex);
    Ok(IfaceStatus {
        iface: iface.to_string(),
        ifindex,
        prog_id,
        mode: if prog_id == 0 {
            "none"
        } else {
            mode_name(mode)
        },
        klais_pinned: pin_dir(iface).exists(),
    })
}

fn raw_detach(ifindex: i32, mode: u8) -> Result<(), std::io::Error> {
    // SAFETY: plain libbpf call with a null opts pointer, which it accepts.
    let rc = unsafe {
        libbpf_rs::libbpf_sys::bpf_xdp_detach(ifindex, mode_flags(mode).bits(), std::ptr::null())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(-rc))
    }
}

fn remove_pins(iface: &str) {
    let dir = pin_dir(iface);
    for name in PINNED_MAPS {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(&dir);
}

/// Detaches klais's program from `iface` and removes its pins (operators,
/// and recovery after a crash). Refuses to touch a program klais did not
/// attach. Returns whether something was detached.
pub fn detach_iface(iface: &str) -> Result<bool, XdpError> {
    let st = status(iface)?;
    if st.prog_id != 0 && !st.klais_pinned {
        return Err(XdpError::Attach {
            iface: iface.into(),
            mode: super::AttachMode::Auto,
            reason: format!(
                "the XDP program on {iface} (id {}) was not attached by klais; leaving it (`ip link set dev {iface} xdp off` removes it)",
                st.prog_id
            ),
        });
    }
    let mut did = false;
    if st.prog_id != 0 {
        let (_, mode) = query(st.ifindex);
        raw_detach(st.ifindex, mode).map_err(|e| XdpError::Attach {
            iface: iface.into(),
            mode: super::AttachMode::Auto,
            reason: format!("detach failed: {e}"),
        })?;
        did = true;
    }
    if st.klais_pinned {
        remove_pins(iface);
        did = true;
    }
    Ok(did)
}

/// The filter attached to an interface; detaches and unpins when dropped
/// (also on error paths and panics that unwind).
#[derive(Debug)]
pub struct Attachment {
    iface: String,
    ifindex: i32,
    mode_used: AttachMode,
    recovered: Option<u32>,
    done: bool,
}

impl Attachment {
    /// Interface.
    pub fn iface(&self) -> &str {
        &self.iface
    }
    /// The mode the kernel accepted (native or generic).
    pub fn mode(&self) -> AttachMode {
        self.mode_used
    }
    /// Id of a stale klais program that was replaced, if any.
    pub fn recovered(&self) -> Option<u32> {
        self.recovered
    }
    /// Leaves the program attached and its maps pinned after this process
    /// exits (`klais xdp attach`); `klais xdp detach` removes them.
    pub fn persist(mut self) {
        self.done = true;
    }

    /// Detaches now, reporting errors (Drop does the same, silently).
    pub fn detach(mut self) -> Result<(), XdpError> {
        self.done = true;
        let (id, mode) = query(self.ifindex);
        if id != 0 {
            raw_detach(self.ifindex, mode).map_err(|e| XdpError::Attach {
                iface: self.iface.clone(),
                mode: self.mode_used,
                reason: format!("detach failed: {e}"),
            })?;
        }
        remove_pins(&self.iface);
        Ok(())
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if !self.done {
            let (id, mode) = query(self.ifindex);
            if id != 0 {
                let _ = raw_detach(self.ifindex, mode);
            }
            remove_pins(&self.iface);
        }
    }
}

/// bpffs's magic number (`BPF_FS_MAGIC`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Makes sure `/sys/fs/bpf` is a bpffs, mounting one when it is not (as
/// bpftool does): `ip netns exec` remounts /sys and hides the host's.
fn ensure_bpffs() -> Result<(), XdpError> {
    let path = std::ffi::CString::new("/sys/fs/bpf").unwrap_or_default();
    // SAFETY: statfs fills the zeroed struct; `path` is NUL-terminated.
    let is_bpffs = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(path.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    };
    if is_bpffs {
        return Ok(());
    }
    let fstype = std::ffi::CString::new("bpf").unwrap_or_default();
    let opts = std::ffi::CString::new("mode=0700").unwrap_or_default();
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(XdpError::Io {
            what: "/sys/fs/bpf is not a bpffs and mounting one failed (as root: `mount -t bpf bpf /sys/fs/bpf`)".into(),
            source: std::io::Error::last_os_error(),
        })
    }
}

fn reason(e: &libbpf_rs::Error, iface: &str, mode: AttachMode) -> String {
    let errno = match e.kind() {
        libbpf_rs::ErrorKind::PermissionDenied => libc::EPERM,
        libbpf_rs::ErrorKind::Unsupported => libc::EOPNOTSUPP,
        libbpf_rs::ErrorKind::AlreadyExists => libc::EEXIST,
        _ => 0,
    };
    let hint = match errno {
        libc::EPERM => "needs root or CAP_NET_ADMIN + CAP_BPF".to_string(),
        libc::EOPNOTSUPP => format!("the driver of {iface} has no native XDP support; use xdp.mode = \"generic\" or \"auto\""),
        libc::EEXIST | libc::EBUSY => {
            format!("another XDP program is attached to {iface} (`klais xdp status --iface {iface}`)")
        }
        _ if mode == AttachMode::Native => "try xdp.mode = \"generic\"".to_string(),
        _ => "see `dmesg` for the kernel's detail".to_string(),
    };
    format!("{e} ({hint})")
}

pub(super) fn attach(
    prog: &XdpProgram,
    iface: &str,
    mode: AttachMode,
) -> Result<Attachment, XdpError> {
    let ifindex = iface_index(iface)?;
    let err = |mode, reason| XdpError::Attach {
        iface: iface.to_string(),
        mode,
        reason,
    };
    let (existing, existing_mode) = query(ifindex);
    let mut recovered = None;
    if existing != 0 {
        if !pin_dir(iface).exists() {
            return Err(err(
                mode,
                format!(
                    "an XDP program klais did not attach (id {existing}) is on {iface}; remove it first if it is not needed (`ip link set dev {iface} xdp off`)"
                ),
            ));
        }
        // Left by a klais that died while attached: take it over.
        raw_detach(ifindex, existing_mode).map_err(|e| {
            err(
                mode,
                format!("cannot remove the stale klais program (id {existing}): {e}"),
            )
        })?;
        remove_pins(iface);
        recovered = Some(existing);
    } else if pin_dir(iface).exists() {
        // Pins without a program: a detach that died half-way.
        remove_pins(iface);
    }

    let xdp = Xdp::new(prog.prog_fd());
    let try_mode = |flags: XdpFlags| xdp.attach(ifindex, XdpFlags::UPDATE_IF_NOEXIST | flags);
    let mode_used = match mode {
        AttachMode::Native => {
            try_mode(XdpFlags::DRV_MODE).map_err(|e| err(mode, reason(&e, iface, mode)))?;
            AttachMode::Native
        }
        AttachMode::Generic => {
            try_mode(XdpFlags::SKB_MODE).map_err(|e| err(mode, reason(&e, iface, mode)))?;
            AttachMode::Generic
        }
        AttachMode::Auto => match try_mode(XdpFlags::DRV_MODE) {
            Ok(()) => AttachMode::Native,
            Err(_) => {
                try_mode(XdpFlags::SKB_MODE).map_err(|e| err(mode, reason(&e, iface, mode)))?;
                AttachMode::Generic
            }
        },
    };
    let attachment = Attachment {
        iface: iface.to_string(),
        ifindex,
        mode_used,
        recovered,
        done: false,
    };
    // From here on, dropping `attachment` detaches: errors below leave nothing.
    ensure_bpffs()?;
    let dir = pin_dir(iface);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| XdpError::Io {
            what: format!(
                "creating {} (is bpffs mounted? `mount -t bpf bpf /sys/fs/bpf`)",
                dir.display()
            ),
            source: e,
        })?;
    prog.pin_all(&dir)?;
    Ok(attachment)
}
