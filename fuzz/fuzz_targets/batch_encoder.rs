//! The shards' Kafka RecordBatch encoder (`klais::wire::kafka`) on arbitrary
//! records and codecs: the batch must carry a valid CRC-32C (also after
//! `stamp`), its length and count fields must agree with what was written,
//! and decompressing its records section must give back exactly the
//! uncompressed encoding of the same records; `decode_batch` (the output
//! core's re-split of unpartitioned batches) must read back every record as
//! written, and refuse the batch with one byte flipped, never panic.

#![no_main]

use std::io::Read;

use klais::wire::kafka::{
    decode_batch, producer_fields, record_count, stamp, BatchWriter, Codec, Compression,
    BATCH_HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;

fn encode(kind: Compression, records: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut codec = Codec::new(kind, 1).unwrap();
    let mut w = BatchWriter::new(Vec::new());
    for (i, (k, v)) in records.iter().enumerate() {
        w.push(i as i64 * 7 - 3, k, v, &[(b"h".as_slice(), *k)]);
    }
    let (b, ok) = w.finish(&mut codec);
    assert!(ok, "{kind:?} failed");
    b
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let kind = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ][usize::from(pick % 5)];
    // Records: each cut at a 0xff byte, key = first 16 bytes of it.
    let records: Vec<(&[u8], &[u8])> = rest
        .split(|&b| b == 0xff)
        .take(200)
        .map(|r| r.split_at(r.len().min(16)))
        .collect();
    let mut b = encode(kind, &records);
    let plain = encode(Compression::None, &records);
    let crc = |b: &[u8]| u32::from_be_bytes(b[17..21].try_into().unwrap());
    assert_eq!(crc(&b), crc32c::crc32c(&b[21..]));
    assert_eq!(record_count(&b), Some(records.len() as u32));
    assert_eq!(i32::from_be_bytes(b[8..12].try_into().unwrap()) as usize, b.len() - 12);
    stamp(&mut b, i64::from(pick) * 1_000_003, 5, 77);
    assert_eq!(crc(&b), crc32c::crc32c(&b[21..]));
    assert_eq!(producer_fields(&b), Some((i64::from(pick) * 1_000_003, 5, 77)));
    let body = &b[BATCH_HEADER_LEN..];
    let mut out = Vec::new();
    match kind {
        Compression::None => out.extend_from_slice(body),
        Compression::Gzip => {
            flate2::read::GzDecoder::new(body).read_to_end(&mut out).unwrap();
        }
        Compression::Snappy => out = snap::raw::Decoder::new().decompress_vec(body).unwrap(),
        Compression::Lz4 => {
            lz4_flex::frame::FrameDecoder::new(body).read_to_end(&mut out).unwrap();
        }
        Compression::Zstd => out = zstd::decode_all(body).unwrap(),
    }
    let back = decode_batch(&b).expect("a batch klais wrote decodes");
    assert_eq!(back.len(), records.len());
    for (i, (r, (k, v))) in back.iter().zip(&records).enumerate() {
        assert_eq!((r.ts_ms, &r.key[..], &r.value[..]), (i as i64 * 7 - 3, *k, *v));
        assert_eq!(r.headers, vec![(b"h".to_vec(), k.to_vec())]);
    }
    let at = usize::from(pick) % b.len();
    b[at] ^= 0x5a;
    let _ = decode_batch(&b);
    if records.is_empty() {
        return;
    }
    assert_eq!(out, plain[BATCH_HEADER_LEN..]);
});
