//! The spill journal reader, `klais::kafka::journal::read_all`, on arbitrary
//! segment files. The input is cut into segments before every occurrence of
//! the segment magic `KLAISJ01`, so one valid segment is one file and a
//! concatenation of segments is several (bytes before the first magic form a
//! file without magic, which the reader must skip). Files are named
//! `<id:016x>.klj` as the journal names them, in a fresh temporary directory
//! per run. Must never panic; what it returns must fit in what was written.

#![no_main]

use klais::handoff::RECORD_HEADER_LEN;
use klais::kafka::journal::read_all;
use libfuzzer_sys::fuzz_target;

const MAGIC: &[u8; 8] = b"KLAISJ01";
/// The journal's first segment id (`FIRST_ID`, 1 << 30); prepended segments
/// take lower ids, so the files start a little below it.
const BASE_ID: u64 = (1 << 30) - 4;

/// `data` cut before each magic; at most 16 files.
fn segments(data: &[u8]) -> Vec<&[u8]> {
    let mut cuts: Vec<usize> = data
        .windows(MAGIC.len())
        .enumerate()
        .filter(|(_, w)| w == MAGIC)
        .map(|(i, _)| i)
        .filter(|&i| i > 0)
        .take(15)
        .collect();
    cuts.insert(0, 0);
    cuts.push(data.len());
    cuts.windows(2).map(|w| &data[w[0]..w[1]]).collect()
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::Builder::new()
        .prefix("klais-fuzz-journal-")
        .tempdir()
        .expect("temporary directory");
    let segs = segments(data);
    for (i, seg) in segs.iter().enumerate() {
        let id = BASE_ID + i as u64;
        std::fs::write(dir.path().join(format!("{id:016x}.klj")), seg).expect("write segment");
    }
    let records = read_all(dir.path()).expect("reading a directory of regular files");
    // Every record is a 4-byte CRC, a 40-byte header and its payload, inside
    // one segment after its magic.
    let with_magic: usize = segs.iter().filter(|s| s.starts_with(MAGIC)).count();
    let framed: usize = records
        .iter()
        .map(|(_, p)| 4 + RECORD_HEADER_LEN + p.len())
        .sum();
    assert!(
        framed + with_magic * MAGIC.len() <= data.len(),
        "{} records framing {framed} bytes out of {} input bytes",
        records.len(),
        data.len()
    );
});
