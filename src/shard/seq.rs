//! Per-device sequence tracking: gaps, duplicates, late arrivals and resets.
//!
//! Pure logic, owned by one shard. Each device has its highest sequence seen and
//! a 64-bit window of which of the 64 sequences below it were seen (the IPsec
//! anti-replay window), so a late packet is told apart from a duplicate.
//!
//! Classification of a sequence `s` against the highest seen `h` (32-bit,
//! wrapping, so `0` after `u32::MAX` is in order):
//! - `s == h`: [`SeqEvent::Duplicate`].
//! - `s` ahead of `h`: [`SeqEvent::InOrder`], or [`SeqEvent::Gap`] with the
//!   number of sequences skipped (upstream loss, or packets still in flight).
//! - `s` behind `h` and `s <= reset_window`: [`SeqEvent::Reset`]: the device
//!   restarted its counter (reboot, reconnect), a storm signal. This wins over
//!   duplicate detection: a device that reboots shortly after a previous boot
//!   reuses small numbers it already sent, and that is a restart, not a replay.
//! - `s` behind `h` within the window: [`SeqEvent::Duplicate`] if seen, else
//!   [`SeqEvent::Late`] (reordered, accepted, fills one gap).
//! - `s` further behind than the window: [`SeqEvent::Reset`] (the device's
//!   counter jumped back; its state was lost).
//!
//! Memory is bounded: a fixed table allocated once, 4-way set-associative by
//! device hash, one 64-byte cache line per set (so a lookup costs one line).
//! Ways are kept in recency order; when a set is full its least recently seen
//! device is evicted (counted), and an evicted device's next packet is
//! [`SeqEvent::New`] again. A flood of invented ids costs evictions, never memory.
//!
//! Devices are told apart by their 64-bit FNV-1a hash alone. Two ids with the
//! same hash would share state; protocol v1 lets any sender claim any id, so a
//! crafted collision gives an attacker nothing that spoofing the id itself
//! does not, and accidental collisions among even 10^7 devices are ~10^-5 likely.

pub use crate::handoff::SeqEvent;

/// Counters kept by the tracker (plain integers, published per tick).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqCounters {
    /// Devices seen for the first time (or again after eviction).
    pub new_devices: u64,
    /// Gap events.
    pub gaps: u64,
    /// Sum of sequences missing over all gaps.
    pub missing: u64,
    /// Late (reordered) packets accepted.
    pub late: u64,
    /// Duplicates.
    pub duplicates: u64,
    /// Sequence resets.
    pub resets: u64,
    /// Devices evicted from a full set.
    pub evictions: u64,
}

impl SeqCounters {
    /// Adds another set (per-shard totals into a summary).
    pub fn add(&mut self, o: &SeqCounters) {
        self.new_devices += o.new_devices;
        self.gaps += o.gaps;
        self.missing += o.missing;
        self.late += o.late;
        self.duplicates += o.duplicates;
        self.resets += o.resets;
        self.evictions += o.evictions;
    }
}

const WAYS: usize = 4;
/// Width of the late/duplicate window in sequences.
pub const WINDOW: u32 = 32;

/// One set: four ways in recency order (way 0 most recent), one cache line.
/// All-zero is the empty set, so a zeroed mapping is a ready table.
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Set {
    /// Device hash per way; 0 marks an empty way (a real hash of 0 is stored as 1).
    tags: [u64; WAYS],
    /// Highest sequence seen per way.
    highest: [u32; WAYS],
    /// Bit i set = sequence `highest - i` seen (bit 0 is `highest`).
    seen: [u32; WAYS],
}

/// A bounded per-device sequence table for one shard.
///
/// The table is an anonymous mapping advised for transparent huge pages: with
/// 2^20 devices it spans 16 MiB, and on 4 KiB pages nearly every lookup of a
/// large population would also miss the TLB.
#[derive(Debug)]
pub struct SeqTracker {
    table: memmap2::MmapMut,
    set_mask: usize,
    reset_window: u32,
    counters: SeqCounters,
}

impl SeqTracker {
    /// A table for at least `capacity` devices (rounded up to a power of two,
    /// at least 4), with restarts recognised at or below `reset_window`.
    /// Allocates once, here: 16 bytes per device. Fails only when the
    /// kernel refuses the mapping (out of memory).
    pub fn new(capacity: usize, reset_window: u32) -> std::io::Result<Self> {
        let sets = (capacity.max(WAYS) / WAYS).next_power_of_two();
        let table = memmap2::MmapMut::map_anon(sets * std::mem::size_of::<Set>())?;
        // Only advice: without THP the table works on 4 KiB pages.
        let _ = table.advise(memmap2::Advice::HugePage);
        Ok(Self {
            table,
            set_mask: sets - 1,
            reset_window,
            counters: SeqCounters::default(),
        })
    }

    /// Number of device slots.
    pub fn capacity(&self) -> usize {
        (self.set_mask + 1) * WAYS
    }

    /// The counters so far.
    pub fn counters(&self) -> &SeqCounters {
        &self.counters
    }

    /// Starts loading the device's set into cache. Receive loops call this for
    /// a whole batch before tracking it, so the cache misses of a large device
    /// population overlap instead of queueing one behind the other.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let key = if hash == 0 { 1 } else { hash };
        let idx = (key.rotate_left(32) as usize) & self.set_mask;
        let sets: &[Set] = bytemuck::cast_slice(&self.table[..]);
        if let Some(set) = sets.get(idx) {
            prefetch_line((set as *const Set).cast());
        }
    }

    /// Classifies `seq` for the device with FNV-1a hash `hash` and updates its
    /// state. Duplicates leave the state unchanged.
    #[inline]
    pub fn track(&mut self, hash: u64, seq: u32) -> SeqEvent {
        let key = if hash == 0 { 1 } else { hash };
        // High bits pick the set: FNV's low bits are the least mixed.
        let idx = (key.rotate_left(32) as usize) & self.set_mask;
        // The mapping is page-aligned and sized to whole sets, so the cast
        // always succeeds; zeroed pages are empty sets.
        let sets: &mut [Set] = bytemuck::cast_slice_mut(&mut self.table[..]);
        let set = &mut sets[idx];
        let hit = set.tags.iter().position(|&t| t == key);
        let (way, ev) = match hit {
            Some(w) => {
                let mut slot = (set.highest[w], set.seen[w]);
                let ev = classify(&mut slot, seq, self.reset_window);
                (set.highest[w], set.seen[w]) = slot;
                (w, ev)
            }
            None => {
                let w = WAYS - 1;
                if set.tags[w] != 0 {
                    self.counters.evictions += 1;
                }
                set.tags[w] = key;
                set.highest[w] = seq;
                set.seen[w] = 1;
                (w, SeqEvent::New)
            }
        };
        if way > 0 {
            // Move to the front: ways stay in recency order.
            set.tags[..=way].rotate_right(1);
            set.highest[..=way].rotate_right(1);
            set.seen[..=way].rotate_right(1);
        }
        count(&mut self.counters, ev);
        ev
    }
}

#[inline]
fn prefetch_line(p: *const i8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint; it never faults, even for an invalid
    // address, and SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `slot` = (highest, seen window).
#[inline]
fn classify(slot: &mut (u32, u32), seq: u32, reset_window: u32) -> SeqEvent {
    let (highest, seen) = slot;
    let ahead = seq.wrapping_sub(*highest);
    if ahead == 0 {
        return SeqEvent::Duplicate;
    }
    if ahead <= i32::MAX as u32 {
        // Forward: shift the window.
        *seen = if ahead >= WINDOW {
            1
        } else {
            (*seen << ahead) | 1
        };
        *highest = seq;
        return if ahead == 1 {
            SeqEvent::InOrder
        } else {
            SeqEvent::Gap { missing: ahead - 1 }
        };
    }
    let behind = highest.wrapping_sub(seq);
    if seq <= reset_window || behind >= WINDOW {
        *highest = seq;
        *seen = 1;
        return SeqEvent::Reset;
    }
    let bit = 1u32 << behind;
    if *seen & bit != 0 {
        SeqEvent::Duplicate
    } else {
        *seen |= bit;
        SeqEvent::Late
    }
}

#[inline]
fn count(c: &mut SeqCounters, ev: SeqEvent) {
    match ev {
        SeqEvent::New => c.new_devices += 1,
        SeqEvent::InOrder => {}
        SeqEvent::Gap { missing } => {
            c.gaps += 1;
            c.missing += u64::from(missing);
        }
        SeqEvent::Late => c.late += 1,
        SeqEvent::Duplicate => c.duplicates += 1,
        SeqEvent::Reset => c.resets += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::device_hash;
    use proptest::prelude::*;

    fn id(n: u32) -> [u8; 16] {
        let mut raw = [0u8; 16];
        let s = format!("dev-{n}");
        raw[..s.len()].copy_from_slice(s.as_bytes());
        raw
    }

    fn t(tr: &mut SeqTracker, dev: u32, seq: u32) -> SeqEvent {
        tr.track(device_hash(&id(dev)), seq)
    }

    #[test]
    fn first_packet_is_new_then_consecutive_packets_are_in_order() {
        let mut tr = SeqTracker::new(16, 4).unwrap();
        assert_eq!(t(&mut tr, 1, 100), SeqEvent::New);
        assert_eq!(t(&mut tr, 1, 101), SeqEvent::InOrder);
        assert_eq!(t(&mut tr, 1, 102), SeqEvent::InOrder);
        assert_eq!(tr.counters().new_devices, 1);
    }

    #[test]
    fn a_skip_forward_reports_how_many_are_missing() {
        let mut tr = SeqTracker::new(16, 4).unwrap();
        t(&mut tr, 1, 10);
        assert_eq!(t(&mut tr, 1, 15), SeqEvent::Gap { missing: 4 });
        assert_eq!(tr.counters().gaps, 1);
        assert_eq!(tr.counters().missing, 4);
    }

    #[test]
    fn the_same_sequence_twice_is_a_duplicate() {
        let mut tr = SeqTracker::new(16, 4).unwrap();
        t(&mut tr, 1, 10);
        assert_eq!(t(&mut tr, 1, 10), SeqEvent::Duplicate);
        assert_eq!(tr.counters().duplicates, 1);
    }

    #[test]
    fn a_reordered_packet_is_late_once_then_a_duplicate() {
        let mut tr = SeqTracker::new(16, 4).unwrap();
        t(&mut tr, 1, 10);
        t(&mut tr, 1, 13);
        assert_eq!(t(&mut tr, 1, 11), SeqEvent::Late);
        assert_eq!(t(&mut tr, 1, 11), SeqEvent::Duplicate);
        assert_eq!(t(&mut tr, 1, 12), SeqEvent::Late);
        assert_eq!(t(&mut tr, 1, 10), SeqEvent::Duplicate);
    }

    #[test]
    fn restarting_near_zero_is_a_reset_even_shortly_after_boot() {
        let mut tr = SeqTracker::new(16, 4).unwrap();
        t(&mut tr, 1, 0);
        for s in 1..=30 {
            t(&mut tr, 1, s);
        }
        assert_eq!(t(&mut tr, 1, 0), SeqEvent::Reset);
        assert_eq!(t(&mut tr, 1, 1), SeqEvent::InOrder);
        assert_eq!(tr.counters().resets, 1);
    }

    #[test]
    fn the_reset_window_is_configurable() {
        let mut narrow = SeqTracker::new(16, 0).unwrap();
        let mut wide = SeqTracker::new(16, 10).unwrap();
        for tr in [&mut narrow, &mut wide] {
            for s in 0..=20 {
                t(tr, 1, s);
            }
        }
        assert_eq!(t(&mut narrow, 1, 5), SeqEvent::Duplicate);
        assert_eq!(t(&mut wide, 1, 5), SeqEvent::Reset);
    }

    #[test]
    fn a_jump_back_beyond_the_window_is_a_reset() {
        let mut tr = SeqTracker::new(16, 4).unwrap();
        t(&mut tr, 1, 1000);
        assert_eq!(t(&mut tr, 1, 1000 - WINDOW), SeqEvent::Reset);
        assert_eq!(t(&mut tr, 1, 1000 - WINDOW + 1), SeqEvent::InOrder);
    }

    #[test]
    fn the_sequence_wraps_at_u32_max_in_order() {
        let mut tr = SeqTracker::new(16, 4).unwrap();
        t(&mut tr, 1, u32::MAX - 1);
        assert_eq!(t(&mut tr, 1, u32::MAX), SeqEvent::InOrder);
        assert_eq!(t(&mut tr, 1, 0), SeqEvent::InOrder);
        assert_eq!(t(&mut tr, 1, 2), SeqEvent::Gap { missing: 1 });
    }

    #[test]
    fn devices_are_tracked_independently() {
        let mut tr = SeqTracker::new(64, 4).unwrap();
        t(&mut tr, 1, 5);
        t(&mut tr, 2, 5);
        assert_eq!(t(&mut tr, 1, 6), SeqEvent::InOrder);
        assert_eq!(t(&mut tr, 2, 5), SeqEvent::Duplicate);
    }

    #[test]
    fn a_flood_of_new_ids_evicts_instead_of_growing() {
        let mut tr = SeqTracker::new(64, 4).unwrap();
        let cap = tr.capacity();
        for dev in 0..10_000 {
            assert_eq!(t(&mut tr, dev, 1), SeqEvent::New);
        }
        assert_eq!(tr.capacity(), cap);
        assert_eq!(tr.counters().evictions, 10_000 - cap as u64);
    }

    #[test]
    fn recently_seen_devices_survive_eviction() {
        // Four ways per set: keep one device hot while others churn through its set.
        let mut tr = SeqTracker::new(4, 4).unwrap(); // one set
        t(&mut tr, 0, 1);
        for (i, dev) in (1..100).enumerate() {
            t(&mut tr, dev, 1);
            assert_ne!(
                t(&mut tr, 0, 2 + i as u32),
                SeqEvent::New,
                "hot device evicted"
            );
        }
    }

    proptest! {
        #[test]
        fn an_in_order_stream_with_one_retransmission_sees_exactly_one_duplicate(
            start in any::<u32>(), len in 2u32..500, dup_at in 0u32..500,
        ) {
            let dup_at = dup_at % len;
            let mut tr = SeqTracker::new(16, 0).unwrap();
            let mut dups = 0;
            for i in 0..len {
                let s = start.wrapping_add(i);
                if t(&mut tr, 7, s) == SeqEvent::Duplicate { dups += 1; }
                if i == dup_at && t(&mut tr, 7, s) == SeqEvent::Duplicate { dups += 1; }
            }
            prop_assert_eq!(dups, 1);
        }

        #[test]
        fn every_sequence_delivered_once_in_any_order_within_the_window_has_no_duplicates(
            perm in Just((0u32..32).collect::<Vec<_>>()).prop_shuffle(),
        ) {
            let mut tr = SeqTracker::new(16, 0).unwrap();
            t(&mut tr, 3, 1000);
            for p in perm {
                let ev = t(&mut tr, 3, 1001 + p);
                prop_assert_ne!(ev, SeqEvent::Duplicate);
                prop_assert_ne!(ev, SeqEvent::Reset);
            }
        }
    }
}
