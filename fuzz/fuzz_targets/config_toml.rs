//! `klais::config::Config::from_toml` on arbitrary UTF-8: parse and validate
//! must return errors, never panic (overflow checks are on in fuzz builds).
//!
//! validate() reads the files the configuration names (auth.keys,
//! admin.token_file, model.classifier, model.window). A fuzzer that stumbles
//! on `/dev/zero` or a FIFO would hang the run, which says nothing about
//! klais, so such inputs are skipped: the text is deserialized once here and
//! every named path that exists must be a small regular file.

#![no_main]

use std::path::Path;

use klais::config::Config;
use libfuzzer_sys::fuzz_target;

fn safe_to_read(p: &Path) -> bool {
    match std::fs::metadata(p) {
        Ok(m) => m.is_file() && m.len() <= 1 << 20,
        Err(_) => true, // missing: validate() reports it
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = toml::from_str::<Config>(text) {
        let paths = [
            cfg.auth.keys.as_deref(),
            cfg.admin.token_file.as_deref(),
            cfg.model.classifier.as_deref(),
            Some(cfg.model.window.as_path()),
        ];
        if !paths.into_iter().flatten().all(safe_to_read) {
            return;
        }
    }
    let _ = Config::from_toml(text, "fuzz");
});
