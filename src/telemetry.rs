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

/// Log lines dropped by [`RateLimit`] since start (shown in `/metrics`).
pub static LOG_SUPPRESSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Rate-limits log events per call site: at most `per_sec` lines per second
/// from one `tracing` macro call, the rest counted in [`LOG_SUPPRESSED`]. A
/// repeating fault (a broker flapping, a client hammering the admin API) then
/// costs a few lines per second, never a flood; nothing logs per packet in
/// the first place (STYLE.md).
#[derive(Debug)]
pub struct RateLimit<K = tracing::callsite::Identifier> {
    per_sec: u32,
    sites: Mutex<std::collections::HashMap<K, (std::time::Instant, u32)>>,
}

impl<K: std::hash::Hash + Eq> RateLimit<K> {
    /// At most `per_sec` lines per second per call site (per key `K`).
    pub fn new(per_sec: u32) -> Self {
        RateLimit {
            per_sec,
            sites: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Whether one more event from `site` may be written now.
    pub fn allow(&self, site: K, now: std::time::Instant) -> bool {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let e = sites.entry(site).or_insert((now, 0));
        if now.duration_since(e.0) >= std::time::Duration::from_secs(1) {
            *e = (now, 0);
        }
        e.1 += 1;
        if e.1 <= self.per_sec {
            true
        } else {
            LOG_SUPPRESSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            false
        }
    }
}

impl<S> tracing_subscriber::layer::Filter<S> for RateLimit {
    fn enabled(
        &self,
        _meta: &tracing::Metadata<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.allow(event.metadata().callsite(), std::time::Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_site_gets_its_lines_per_second_and_the_rest_are_counted() {
        // Keyed by name here; the subscriber keys by call-site identifier.
        let r = RateLimit::<&str>::new(3);
        let t0 = std::time::Instant::now();
        let before = LOG_SUPPRESSED.load(std::sync::atomic::Ordering::Relaxed);
        let allowed = (0..10).filter(|_| r.allow("a", t0)).count();
        assert_eq!(allowed, 3);
        assert!(r.allow("b", t0), "another site has its own budget");
        assert!(
            r.allow("a", t0 + std::time::Duration::from_millis(1001)),
            "a new second"
        );
        assert!(LOG_SUPPRESSED.load(std::sync::atomic::Ordering::Relaxed) >= before + 7);
    }
}
