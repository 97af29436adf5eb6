//! Every input fuzzing found (`fuzz/regressions/<target>-<name>.bin`) run
//! through the same entry point as its fuzz target, on every `cargo test`:
//! a fixed bug stays fixed without the nightly toolchain.

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).expect("fuzz/regressions exists") {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with(&format!("{target}-")) {
            out.push((name, std::fs::read(&p).unwrap()));
        }
    }
    out
}

#[test]
fn every_regression_file_belongs_to_a_known_target() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(
            [
                "config_toml-",
                "wire_parse-",
                "journal_reader-",
                "wire_v2_roundtrip-",
                "kafka_response-",
                "batch_encoder-"
            ]
            .iter()
            .any(|t| name.starts_with(t)),
            "{name}: name it <target>-<what>.bin for a target this test runs"
        );
    }
}

#[test]
fn configurations_fuzzing_found_are_refused_with_errors_not_panics() {
    for (name, bytes) in inputs("config_toml") {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        let r = klais::config::Config::from_toml(text, &name);
        if name.contains("max-payload-mul-overflow") {
            let errs = r.expect_err("an absurd max_payload_bytes is refused");
            assert!(
                errs.iter()
                    .any(|e| e.to_string().starts_with("protocol.max_payload_bytes")),
                "{errs:?}"
            );
        }
    }
}

#[test]
fn datagrams_fuzzing_found_parse_or_are_rejected() {
    // wire_v2_roundtrip's inputs are `arbitrary` encodings, not datagrams: a
    // finding there gets its own test beside the code it broke; its bytes
    // still go through the parser here.
    let mut all = inputs("wire_parse");
    all.extend(inputs("wire_v2_roundtrip"));
    for (_, bytes) in all {
        for validate_json in [false, true] {
            let _ = klais::wire::parse(
                &bytes,
                &klais::wire::ParseOptions {
                    max_payload: 1400,
                    validate_json,
                },
            );
        }
    }
}

#[test]
fn journal_segments_fuzzing_found_are_read_without_panics() {
    for (_, bytes) in inputs("journal_reader") {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("{:016x}.klj", 1)), &bytes).unwrap();
        let _ = klais::kafka::journal::read_all(dir.path());
    }
}
