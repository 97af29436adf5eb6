/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Wire protocol v1 as the kernel side sees it (DESIGN.md section 2), shared by
 * the XDP program and its tests. The Rust side (src/wire/) implements the same
 * layout and hash; both are tested against bpf/fnv1a64_vectors.txt.
 *
 *   offset 0   u16  magic 0xAA55 (big-endian)
 *   offset 2   16B  device id, UTF-8, NUL-padded
 *   offset 18  u32  sequence (big-endian)
 *   offset 22  ..   JSON payload
 *
 * v2 (magic 0xAA56) keeps these offsets; see KLAIS_MAGIC_V2.
 */
#ifndef KLAIS_WIRE_H
#define KLAIS_WIRE_H

#define KLAIS_MAGIC_V1 0xAA55
/* Protocol v2 (src/wire/mod.rs): same id and sequence offsets, then flags and
 * an optional MAC the shard verifies. */
#define KLAIS_MAGIC_V2 0xAA56
#define KLAIS_HEADER_LEN 22
#define KLAIS_DEVICE_ID_LEN 16

#define KLAIS_FNV1A64_OFFSET 0xcbf29ce484222325ULL
#define KLAIS_FNV1A64_PRIME 0x00000100000001b3ULL

/* FNV-1a 64 over the 16 raw device-id bytes, padding included. Unrolled with
 * a constant bound so the BPF verifier sees a bounded loop. */
static inline unsigned long long klais_device_hash(const unsigned char id[KLAIS_DEVICE_ID_LEN])
{
	unsigned long long h = KLAIS_FNV1A64_OFFSET;
	int i;

#pragma unroll
	for (i = 0; i < KLAIS_DEVICE_ID_LEN; i++) {
		h ^= id[i];
		h *= KLAIS_FNV1A64_PRIME;
	}
	return h;
}

#endif /* KLAIS_WIRE_H */
