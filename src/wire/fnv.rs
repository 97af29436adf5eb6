//! FNV-1a 64 over the 16 raw device-id bytes (padding included).
//!
//! The same function runs in the XDP program (`bpf/klais_wire.h`) to key the
//! per-device token buckets and here to pick a device's shard; both are tested
//! against the vectors in `bpf/fnv1a64_vectors.txt`, so the kernel and user space
//! can never disagree on which bucket or shard a device belongs to.

/// FNV-1a 64 offset basis.
pub const FNV1A64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
pub const FNV1A64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of arbitrary bytes.
#[inline]
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = FNV1A64_OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV1A64_PRIME);
    }
    h
}

/// FNV-1a 64 of a raw 16-byte device id; unrolled by the compiler, no bounds checks.
#[inline]
pub fn device_hash(raw_id: &[u8; 16]) -> u64 {
    let mut h = FNV1A64_OFFSET;
    let mut i = 0;
    while i < 16 {
        h ^= raw_id[i] as u64;
        h = h.wrapping_mul(FNV1A64_PRIME);
        i += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `bpf/fnv1a64_vectors.txt`: `<32 hex chars of the 16 id bytes> <16 hex chars of the hash>`.
    pub(crate) fn shared_vectors() -> Vec<([u8; 16], u64)> {
        let text = include_str!("../../bpf/fnv1a64_vectors.txt");
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let mut it = l.split_whitespace();
                let id_hex = it.next().expect("id column");
                let hash_hex = it.next().expect("hash column");
                let mut id = [0u8; 16];
                for (i, b) in id.iter_mut().enumerate() {
                    *b = u8::from_str_radix(&id_hex[2 * i..2 * i + 2], 16).expect("hex");
                }
                (id, u64::from_str_radix(hash_hex, 16).expect("hex"))
            })
            .collect()
    }

    #[test]
    fn empty_input_hashes_to_the_offset_basis() {
        assert_eq!(fnv1a64(b""), FNV1A64_OFFSET);
    }

    #[test]
    fn published_fnv1a64_reference_values_hold() {
        // Reference values from the FNV authors' test suite.
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn device_hash_matches_every_shared_vector() {
        let vectors = shared_vectors();
        assert!(vectors.len() >= 8, "the vector file lost its rows");
        for (id, want) in vectors {
            assert_eq!(device_hash(&id), want, "id {id:02x?}");
            assert_eq!(fnv1a64(&id), want);
        }
    }
}
