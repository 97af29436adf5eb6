//! `klais::wire::parse` on arbitrary bytes, under the four corners of
//! `ParseOptions` (JSON validation on/off × the default and the largest
//! payload limit). It must never panic, and every `Ok` must describe the
//! bytes it was given exactly (DESIGN.md §2 layout, `src/wire/mod.rs`).

#![no_main]

use klais::wire::{
    is_json, parse, Datagram, ParseOptions, DEVICE_ID_LEN, HEADER_LEN, MAC_LEN, MAGIC_V1,
    MAGIC_V2, V2_FLAGS_KNOWN, V2_FLAG_AUTHENTICATED, V2_HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;

const OPTS: [ParseOptions; 4] = [
    ParseOptions {
        max_payload: 1400,
        validate_json: false,
    },
    ParseOptions {
        max_payload: 1400,
        validate_json: true,
    },
    ParseOptions {
        max_payload: 65_485,
        validate_json: false,
    },
    ParseOptions {
        max_payload: 65_485,
        validate_json: true,
    },
];

/// `inner` lies inside `outer` (same allocation, in bounds).
fn is_subslice(outer: &[u8], inner: &[u8]) -> bool {
    let o = outer.as_ptr_range();
    let i = inner.as_ptr_range();
    o.start <= i.start && i.end <= o.end
}

fn check(data: &[u8], opts: &ParseOptions, d: &Datagram<'_>) {
    let magic = u16::from_be_bytes([data[0], data[1]]);
    assert!(data.len() >= HEADER_LEN, "Ok for {} bytes", data.len());
    assert!(d.version == 1 || d.version == 2, "version {}", d.version);
    assert!(is_subslice(data, d.payload), "payload is not borrowed from the input");
    assert!(is_subslice(data, d.signed), "signed is not borrowed from the input");
    assert_eq!(d.signed.as_ptr(), data.as_ptr(), "signed starts the datagram");
    assert!(d.payload.len() <= opts.max_payload, "payload over max_payload");
    if opts.validate_json {
        assert!(is_json(d.payload), "payload accepted as JSON but is not");
    }

    // Device id: non-empty text, at most 16 bytes, the raw bytes at 2..18.
    assert!(!d.device_id.is_empty(), "empty device id accepted");
    assert!(d.device_id.len() <= DEVICE_ID_LEN, "device id over 16 bytes");
    assert!(!d.device_id.as_bytes().contains(&0), "NUL inside the device id");
    assert_eq!(&d.raw_id[..], &data[2..18]);
    assert_eq!(&d.raw_id[..d.device_id.len()], d.device_id.as_bytes());
    assert!(d.raw_id[d.device_id.len()..].iter().all(|&b| b == 0), "padding is not NUL");
    assert_eq!(
        d.sequence,
        u32::from_be_bytes([data[18], data[19], data[20], data[21]])
    );

    match d.version {
        1 => {
            assert_eq!(magic, MAGIC_V1);
            assert_eq!(d.flags, 0);
            assert!(d.mac.is_none());
            assert_eq!(d.payload.len(), data.len() - HEADER_LEN);
            assert_eq!(d.payload.as_ptr(), data[HEADER_LEN..].as_ptr());
            assert_eq!(d.signed.len(), data.len());
        }
        _ => {
            assert_eq!(magic, MAGIC_V2);
            assert!(data.len() >= V2_HEADER_LEN);
            assert_eq!(d.flags, data[22]);
            assert_eq!(d.flags & !V2_FLAGS_KNOWN, 0, "unknown flag accepted");
            assert_eq!(data[23], 0, "non-zero reserved byte accepted");
            assert_eq!(d.payload.as_ptr(), data[V2_HEADER_LEN..].as_ptr());
            let authenticated = d.flags & V2_FLAG_AUTHENTICATED != 0;
            assert_eq!(d.mac.is_some(), authenticated, "MAC presence != flag");
            if let Some(mac) = d.mac {
                assert_eq!(d.signed.len() + MAC_LEN, data.len());
                assert_eq!(&mac[..], &data[data.len() - MAC_LEN..]);
                assert_eq!(d.payload.len() + V2_HEADER_LEN + MAC_LEN, data.len());
            } else {
                assert_eq!(d.signed.len(), data.len());
                assert_eq!(d.payload.len() + V2_HEADER_LEN, data.len());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let results = OPTS.map(|o| parse(data, &o));
    for (opts, r) in OPTS.iter().zip(&results) {
        if let Ok(d) = r {
            // Same invariants whatever the mac says; an authenticated
            // datagram must also be Ok when the MAC bytes alone change.
            check(data, opts, d);
        }
    }
    // The options only add checks: strict Ok => lax Ok with the same view.
    let [small_lax, small_strict, big_lax, big_strict] = &results;
    for (strict, lax) in [
        (small_strict, small_lax),
        (big_strict, big_lax),
        (small_lax, big_lax),
        (small_strict, big_strict),
    ] {
        if let Ok(s) = strict {
            assert_eq!(Ok(*s), *lax, "a stricter option accepted what a laxer one refused");
        }
    }
    // Faults other than payload size / JSON do not depend on the options.
    if let Err(e) = big_lax {
        for r in &results {
            assert_eq!(r.as_ref().err(), Some(e), "framing verdict depends on options");
        }
    }
});
