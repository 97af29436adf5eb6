//! The one wall clock every stage stamps with: receive timestamps on the
//! shards, send timestamps in the generators, read times in the bench. A leaf:
//! it imports nothing of klais, so the tools need not reach into an adapter
//! (ingest) for it.

/// Wall-clock time, ns since the Unix epoch (vDSO `clock_gettime`); 0 if the
/// clock is before the epoch.
#[inline]
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
