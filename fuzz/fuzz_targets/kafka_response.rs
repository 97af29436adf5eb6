//! The native Kafka client's response decoders
//! (`klais::kafka::native::proto`) on arbitrary bytes: Produce v3–v8,
//! Metadata v1–v8, ApiVersions, InitProducerId v1 and v3. The first byte
//! picks the decoder and version. Must never panic: a broker response that
//! makes no sense is an error, and what decodes must fit the input.

#![no_main]

use klais::kafka::native::proto;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    match pick % 4 {
        0 => {
            let v = 3 + i16::from(pick / 4 % 6);
            let mut out = Vec::new();
            if proto::decode_produce(body, v, &mut out).is_ok() {
                // Each partition result takes at least 14 bytes.
                assert!(out.len() * 14 <= body.len());
            }
        }
        1 => {
            let v = 1 + i16::from(pick / 4 % 8);
            if let Ok(m) = proto::decode_metadata(body, v) {
                assert!(m.brokers.len() * 10 <= body.len());
            }
        }
        2 => {
            if let Ok((_, apis)) = proto::decode_api_versions(body) {
                assert!(apis.len() * 6 <= body.len());
            }
        }
        _ => {
            let v = if pick & 4 == 0 { 1 } else { 3 };
            let _ = proto::decode_init_producer_id(body, v);
        }
    }
});
