//! Protocol v2 round trip: `encode_v2` → `parse` gives back every field, the
//! MAC is SipHash-2-4 of the signed bytes under the device key, the shard's
//! `Auth::verify` takes the datagram, and no single flipped byte yields a
//! datagram that still parses *and* verifies (v1's `encode` round trip is
//! checked on the way).

#![no_main]

use arbitrary::Arbitrary;
use klais::shard::auth::{Auth, KeyTable};
use klais::wire::{
    self, device_hash, encode, encode_v2, parse, raw_device_id, ParseOptions, Reject,
    DEVICE_ID_LEN, HEADER_LEN, MAC_LEN, V2_FLAG_AUTHENTICATED, V2_FLAG_URGENT, V2_HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;

const LAX: ParseOptions = ParseOptions {
    max_payload: 65_485,
    validate_json: false,
};

const ALNUM: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[derive(Debug, Arbitrary)]
struct Input {
    id_len: u8,
    id: [u8; DEVICE_ID_LEN],
    sequence: u32,
    flags: u8,
    key: [u8; 16],
    flip_xor: u8,
    /// Extra flip positions (besides header and MAC) inside the payload.
    flips: Vec<u16>,
    payload: Vec<u8>,
}

fn hex(key: &[u8; 16]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fuzz_target!(|input: Input| {
    let n = 1 + usize::from(input.id_len) % DEVICE_ID_LEN;
    let id: String = input.id[..n]
        .iter()
        .map(|&b| char::from(ALNUM[usize::from(b) % ALNUM.len()]))
        .collect();
    let mut payload = input.payload;
    payload.truncate(LAX.max_payload);
    let key = input.key;
    let raw = raw_device_id(&id).expect("an alnum id of 1..=16 bytes is valid");

    // v1 on the way: encode then parse.
    let mut v1 = vec![0u8; HEADER_LEN + payload.len()];
    let len = encode(&id, input.sequence, &payload, &mut v1).expect("v1 encode");
    assert_eq!(len, v1.len());
    let d = parse(&v1, &LAX).expect("v1 round trip");
    assert_eq!((d.version, d.flags, d.mac), (1, 0, None));
    assert_eq!((d.device_id, d.sequence, d.payload), (id.as_str(), input.sequence, &payload[..]));

    // v2 without a key: no MAC, the authenticated flag clear whatever was asked.
    let mut plain = vec![0u8; V2_HEADER_LEN + payload.len()];
    let len = encode_v2(&id, input.sequence, input.flags, &payload, None, &mut plain)
        .expect("v2 encode without key");
    assert_eq!(len, plain.len());
    let d = parse(&plain, &LAX).expect("unauthenticated v2 round trip");
    assert_eq!((d.version, d.flags, d.mac), (2, input.flags & V2_FLAG_URGENT, None));
    assert_eq!((d.device_id, d.sequence, d.payload), (id.as_str(), input.sequence, &payload[..]));

    // v2 with the key.
    let mut buf = vec![0u8; V2_HEADER_LEN + payload.len() + MAC_LEN];
    let len = encode_v2(&id, input.sequence, input.flags, &payload, Some(&key), &mut buf)
        .expect("v2 encode with key");
    assert_eq!(len, buf.len());
    let d = parse(&buf, &LAX).expect("authenticated v2 round trip");
    assert_eq!(d.version, 2);
    assert_eq!(d.flags, (input.flags & V2_FLAG_URGENT) | V2_FLAG_AUTHENTICATED);
    assert_eq!(d.device_id, id);
    assert_eq!(d.raw_id, &raw);
    assert_eq!(d.sequence, input.sequence);
    assert_eq!(d.payload, &payload[..]);
    assert_eq!(d.signed, &buf[..buf.len() - MAC_LEN]);
    let mac = d.mac.expect("the authenticated flag brings a MAC");
    assert_eq!(*mac, wire::mac(&key, d.signed), "MAC is not SipHash-2-4 of signed");

    let table = KeyTable::parse(&format!("{id} {}", hex(&key))).expect("key line");
    assert_eq!(table.key_of(&raw), Some(&key));
    let auth = Auth::new(&table);
    let hash = device_hash(&raw);
    assert_eq!(auth.verify(hash, d.raw_id, d.signed, mac), Ok(()), "own datagram refused");

    // Flip one byte: never a datagram that parses and verifies. Every header
    // and MAC byte, every payload byte of short datagrams, and the payload
    // positions the input names otherwise.
    let xor = if input.flip_xor == 0 { 0x01 } else { input.flip_xor };
    let mut positions: Vec<usize> = if buf.len() <= 512 {
        (0..buf.len()).collect()
    } else {
        (0..V2_HEADER_LEN)
            .chain(buf.len() - MAC_LEN..buf.len())
            .chain(input.flips.iter().map(|&p| usize::from(p) % buf.len()))
            .collect()
    };
    positions.truncate(1024);
    for i in positions {
        let mut bad = buf.clone();
        bad[i] ^= xor;
        let Ok(b) = parse(&bad, &LAX) else { continue };
        let Some(bad_mac) = b.mac else { continue };
        let r = auth.verify(device_hash(b.raw_id), b.raw_id, b.signed, bad_mac);
        if b.raw_id == &raw {
            assert_eq!(r, Err(Reject::BadMac), "byte {i} ^ {xor:#04x} still verifies");
        } else {
            assert!(r.is_err(), "byte {i} ^ {xor:#04x}: another device id verifies");
        }
    }
});
