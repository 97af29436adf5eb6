//! Counters published once per tick by the core that owns them and read by
//! whoever reports (the live line, the summary, later /metrics).
//!
//! A core never shares a counter per packet: it keeps plain integers and copies
//! a snapshot here on its tick, so the lock below is taken a few times per
//! second, not per packet.

use std::sync::{Arc, Mutex};

/// The last snapshot a core published.
#[derive(Debug, Default)]
pub struct Published<T: Copy + Default> {
    last: Mutex<T>,
}

impl<T: Copy + Default> Published<T> {
    /// A new, shareable slot holding `T::default()`.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            last: Mutex::new(T::default()),
        })
    }
    /// Replaces the snapshot (the owning core, per tick).
    pub fn publish(&self, v: T) {
        // A poisoned lock only means a reader panicked mid-copy of a Copy value.
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
    /// The latest snapshot.
    pub fn read(&self) -> T {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}
