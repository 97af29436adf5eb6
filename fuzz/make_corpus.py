#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/ (deterministic; run from anywhere).

    python3 fuzz/make_corpus.py

Framing follows src/wire/mod.rs (datagrams), src/kafka/journal.rs and
src/handoff/mod.rs (journal segments: magic KLAISJ01, then records
`crc32 u32 LE | 40-byte header | payload`, the CRC being IEEE CRC-32 of
header and payload, as crc32fast computes it). Existing seed files of the
same names are overwritten; others are left alone.
"""

import os
import random
import shutil
import struct
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")

MAGIC_V1 = 0xAA55
MAGIC_V2 = 0xAA56
FLAG_URGENT = 1
FLAG_AUTH = 2


# --- SipHash-2-4 (reference implementation, 8-byte output, little-endian) ---
M64 = (1 << 64) - 1


def _rotl(x, b):
    return ((x << b) | (x >> (64 - b))) & M64


def siphash24(key: bytes, msg: bytes) -> bytes:
    k0, k1 = struct.unpack("<QQ", key)
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def rnd():
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & M64; v1 = _rotl(v1, 13); v1 ^= v0; v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & M64; v3 = _rotl(v3, 16); v3 ^= v2
        v0 = (v0 + v3) & M64; v3 = _rotl(v3, 21); v3 ^= v0
        v2 = (v2 + v1) & M64; v1 = _rotl(v1, 17); v1 ^= v2; v2 = _rotl(v2, 32)

    n = len(msg)
    end = n - n % 8
    for i in range(0, end, 8):
        m = struct.unpack_from("<Q", msg, i)[0]
        v3 ^= m
        rnd(); rnd()
        v0 ^= m
    last = (n & 0xFF) << 56
    for i, b in enumerate(msg[end:]):
        last |= b << (8 * i)
    v3 ^= last
    rnd(); rnd()
    v0 ^= last
    v2 ^= 0xFF
    rnd(); rnd(); rnd(); rnd()
    return struct.pack("<Q", v0 ^ v1 ^ v2 ^ v3)


# SipHash paper, appendix A: key 00..0f, message 00..0e.
assert siphash24(bytes(range(16)), bytes(range(15))) == bytes(
    [0xE5, 0x45, 0xBE, 0x49, 0x61, 0xCA, 0x29, 0xA1]
)


# --- wire datagrams ---
def raw_id(device_id: bytes) -> bytes:
    assert 1 <= len(device_id) <= 16
    return device_id + b"\0" * (16 - len(device_id))


def v1(device_id: bytes, seq: int, payload: bytes) -> bytes:
    return struct.pack(">H", MAGIC_V1) + raw_id(device_id) + struct.pack(">I", seq) + payload


def v2(device_id: bytes, seq: int, flags: int, payload: bytes, key=None, reserved=0) -> bytes:
    if key is not None:
        flags |= FLAG_AUTH
    head = struct.pack(">H", MAGIC_V2) + raw_id(device_id) + struct.pack(">I", seq)
    body = head + bytes([flags, reserved]) + payload
    return body + (siphash24(key, body) if key is not None else b"")


KEY = b"0123456789abcdef"


def wire_parse_seeds():
    j = b'{"t":21.5,"h":40}'
    return {
        "v1_json": v1(b"sensor-0001", 42, j),
        "v1_id16": v1(b"0123456789abcdef", 7, b"{}"),
        "v1_empty_payload": v1(b"d", 1, b""),
        "v1_not_json": v1(b"d", 2, b'{"t":'),
        "v1_utf8_id": v1("жук-7".encode(), 3, b"[1,2,3]"),
        "v2_plain": v2(b"sensor-7", 10, 0, b"{}"),
        "v2_urgent": v2(b"valve-17", 11, FLAG_URGENT, b'{"alarm":true}'),
        "v2_mac": v2(b"sensor-7", 9, 0, b'{"a":1}', key=KEY),
        "v2_mac_urgent": v2(b"meter-9", 12, FLAG_URGENT, b'{"kwh":1.25}', key=KEY),
        "v2_mac_too_short": v2(b"d", 1, 0, b"", key=KEY)[: 24 + 7],
        "too_short": v1(b"d", 1, b"")[:21],
        "bad_magic": b"\x55\xaa" + v1(b"d", 1, b"{}")[2:],
        "bad_flags": v2(b"d", 1, 0x80, b"{}"),
        "bad_reserved": v2(b"d", 1, 0, b"{}", reserved=1),
        "id_after_nul": v1(b"ab", 1, b"{}")[:10] + b"x" + v1(b"ab", 1, b"{}")[11:],
    }


# --- journal segments ---
JMAGIC = b"KLAISJ01"


def record(raw: bytes, seq: int, ts: int, shard: int, seq_event: int, flags: int, payload: bytes) -> bytes:
    header = struct.pack(
        "<IIQ16sHBBI", 40 + len(payload), seq, ts, raw, shard, seq_event, flags, len(payload)
    )
    assert len(header) == 40
    return struct.pack("<I", zlib.crc32(header + payload) & 0xFFFFFFFF) + header + payload


def journal_seeds():
    ts = 1_700_000_000_000_000_000
    recs = [
        record(raw_id(b"sensor-%d" % (i % 3)), 100 + i, ts + i * 1000, i % 2, 0, [0, 1, 2, 4, 0x90][i % 5],
               b'{"t":%d}' % i)
        for i in range(6)
    ]
    one = JMAGIC + recs[0]
    many = JMAGIC + b"".join(recs)
    torn = many + recs[1][:17]
    bad_crc = bytearray(many)
    bad_crc[len(JMAGIC) + len(recs[0]) + 44] ^= 0xFF  # payload byte of record 1
    empty_payload = JMAGIC + record(raw_id(b"d"), 1, ts, 0, 1, 0, b"")
    return {
        "empty_segment": JMAGIC,
        "one_record": one,
        "six_records": many,
        "torn_tail": torn,
        "bad_crc": bytes(bad_crc),
        "empty_payload": empty_payload,
        "two_segments": JMAGIC + recs[2] + recs[3] + JMAGIC + recs[4],
        "no_magic_then_segment": b"garbage!" + JMAGIC + recs[5],
    }


# --- configurations ---
CONFIGS = {
    "minimal": "",
    "protocol": """
[protocol]
max_payload_bytes = 65485
validate_json = true
""",
    "auth_ports": """
[auth]
policy = "both"
ports = { "7701" = "v2", "7702" = "v1", "notaport" = "both" }
""",
    "auth_v2_no_keys": """
[auth]
policy = "v2"
""",
    "auth_keys_missing": """
[auth]
keys = "/nonexistent/klais-device-keys"
policy = "v1"
""",
    "admin": """
[admin]
enabled = true
listen = "127.0.0.1:9464"
token_file = "/nonexistent/admin-token"
""",
    "dam_window": """
[dam]
device_rate_pps = 100
device_burst = 200
queue_messages = 1024
queue_bytes = 1048576

[model]
predictor = "window"
window = "models/window.json"
""",
    "xdp_classifier": """
[ingest]
backend = "af_xdp"
shards = 2

[xdp]
iface = "lo"
ports = [7700, 7701]
device_rate_pps = 100
device_burst = 200

[model]
classifier = "models/classifier.json"
drop_classes = ["flood", "sweep"]
""",
    "kafka_journal": """
[output]
sink = "kafka"

[output.kafka]
brokers = "127.0.0.1:9092,127.0.0.2:9092"
acks = "1"
compression = "zstd"

[output.kafka.journal]
dir = "/tmp/klais-journal"
segment_bytes = 1024
budget_bytes = 512
fsync = "always"

[output.kafka.librdkafka]
"socket.keepalive.enable" = "true"
""",
}


def v2_roundtrip_seeds():
    rng = random.Random(0x6B6C6169)
    seeds = {}
    for i, n in enumerate([48, 64, 96, 160, 300, 700]):
        seeds["random_%d" % i] = bytes(rng.getrandbits(8) for _ in range(n))
    return seeds


def write(target: str, name: str, data: bytes):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    for name, data in wire_parse_seeds().items():
        write("wire_parse", name + ".bin", data)
    for name, data in journal_seeds().items():
        write("journal_reader", name + ".klj", data)
    for name, data in v2_roundtrip_seeds().items():
        write("wire_v2_roundtrip", name + ".bin", data)
    os.makedirs(os.path.join(CORPUS, "config_toml"), exist_ok=True)
    shutil.copyfile(os.path.join(ROOT, "config.toml"), os.path.join(CORPUS, "config_toml", "default.toml"))
    for name, text in CONFIGS.items():
        write("config_toml", name + ".toml", text.lstrip("\n").encode())


if __name__ == "__main__":
    main()
