//! Payload storage for records waiting in the Dam: fixed 256-byte chunks in
//! one allocation made at start, chained per payload, a free list — no
//! allocation per message, bounded by the configured bytes
//! (`dam.queue_bytes`). Chunks are freed in any order (the Dam drains
//! round-robin), which a byte ring could not do.

const CHUNK: usize = 256;
const NIL: u32 = u32::MAX;

/// The chunk store.
#[derive(Debug)]
pub struct ChunkStore {
    data: Vec<u8>,
    next: Vec<u32>,
    free: u32,
    free_count: usize,
}

impl ChunkStore {
    /// A store of `bytes` (rounded down to whole chunks, at least one).
    pub fn new(bytes: usize) -> ChunkStore {
        let n = (bytes / CHUNK).clamp(1, NIL as usize - 1);
        ChunkStore {
            data: vec![0; n * CHUNK],
            next: (1..=n as u32)
                .map(|i| if i as usize == n { NIL } else { i })
                .collect(),
            free: 0,
            free_count: n,
        }
    }

    /// Chunks a payload of `len` bytes takes.
    fn chunks(len: usize) -> usize {
        len.div_ceil(CHUNK).max(1)
    }

    /// Stores a payload; its first chunk, or None when there is no room.
    pub fn put(&mut self, payload: &[u8]) -> Option<u32> {
        let k = Self::chunks(payload.len());
        if k > self.free_count {
            return None;
        }
        let head = self.free;
        let mut c = head;
        for (i, part) in payload.chunks(CHUNK).enumerate() {
            let at = c as usize * CHUNK;
            self.data[at..at + part.len()].copy_from_slice(part);
            if i + 1 < k {
                c = self.next[c as usize];
            }
        }
        self.free = self.next[c as usize];
        self.next[c as usize] = NIL;
        self.free_count -= k;
        Some(head)
    }

    /// Copies a stored payload into `out` (cleared first) and frees it.
    pub fn take(&mut self, head: u32, len: usize, out: &mut Vec<u8>) {
        out.clear();
        let mut c = head;
        let mut left = len;
        let k = Self::chunks(len);
        for i in 0..k {
            let at = c as usize * CHUNK;
            let n = left.min(CHUNK);
            out.extend_from_slice(&self.data[at..at + n]);
            left -= n;
            if i + 1 < k {
                c = self.next[c as usize];
            }
        }
        self.next[c as usize] = self.free;
        self.free = head;
        self.free_count += k;
    }

    /// Free bytes (whole chunks).
    pub fn free_bytes(&self) -> usize {
        self.free_count * CHUNK
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn payloads_come_back_intact_in_any_order(
            lens in proptest::collection::vec(0usize..1500, 1..60),
            order in any::<u64>(),
        ) {
            let mut s = ChunkStore::new(64 * 1024);
            let total = s.free_bytes();
            let mut held = Vec::new();
            for (i, &len) in lens.iter().enumerate() {
                let p: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
                if let Some(h) = s.put(&p) {
                    held.push((h, p));
                }
            }
            let mut out = Vec::new();
            let mut k = order;
            while !held.is_empty() {
                let i = (k % held.len() as u64) as usize;
                k = k.rotate_left(7) ^ 0x9e37;
                let (h, p) = held.swap_remove(i);
                s.take(h, p.len(), &mut out);
                prop_assert_eq!(&out, &p);
            }
            prop_assert_eq!(s.free_bytes(), total);
        }
    }

    #[test]
    fn a_full_store_refuses() {
        let mut s = ChunkStore::new(1024);
        assert!(s.put(&[1; 1000]).is_some());
        assert!(s.put(&[1; 100]).is_none());
    }
}
