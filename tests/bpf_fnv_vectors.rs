//! The C hash the XDP program uses (bpf/klais_wire.h) agrees with the shared
//! vectors the Rust hash is tested against (src/wire/fnv.rs), so kernel buckets
//! and user-space shards key devices identically.

use std::path::Path;
use std::process::Command;

/// The one way a test skips (tests/common/skip.rs), without the rest of
/// tests/common, so this test needs nothing of klais.
#[path = "common/skip.rs"]
mod skip;

#[test]
fn the_c_device_hash_matches_the_shared_vectors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    if Command::new(&cc).arg("--version").output().is_err() {
        skip::skip(&format!(
            "no C compiler ({cc}); scripts/setup.sh installs build-essential"
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("fnv1a64_test");
    let out = Command::new(&cc)
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(root.join("bpf/fnv1a64_test.c"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compiling bpf/fnv1a64_test.c failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe)
        .arg(root.join("bpf/fnv1a64_vectors.txt"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "C hash disagrees with the vectors:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("vectors ok"));
}
