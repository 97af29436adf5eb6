//! Build script: compiles the XDP programs in `bpf/` into libbpf-rs skeletons
//! in `OUT_DIR` (never committed), and stamps the binary with the commit and
//! build profile that `klais version` prints and benchmark results record.

use std::path::PathBuf;
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

/// (source, skeleton file) pairs.
const PROGRAMS: [(&str, &str); 2] = [
    ("bpf/klais.bpf.c", "klais.skel.rs"),
    ("bpf/empty.bpf.c", "empty.skel.rs"),
];

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let arch_include = format!(
        "-I/usr/include/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    for (src, skel) in PROGRAMS {
        if let Err(e) = SkeletonBuilder::new()
            .source(src)
            // -mcpu=v3: BPF atomics (compare-and-swap) for the device buckets.
            .clang_args([
                arch_include.as_str(),
                "-Ibpf",
                "-mcpu=v3",
                "-Wall",
                "-Werror",
            ])
            .build_and_generate(out.join(skel))
        {
            panic!(
                "compiling {src} failed: {e:#}\n\
                 The XDP program needs clang, llvm and libbpf headers: run scripts/setup.sh (as root)."
            );
        }
        println!("cargo:rerun-if-changed={src}");
    }
    for h in ["bpf/klais.h", "bpf/klais_wire.h"] {
        println!("cargo:rerun-if-changed={h}");
    }

    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".to_string());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_string());
    println!(
        "cargo:rustc-env=KLAIS_COMMIT={commit}{}",
        if dirty { "-dirty" } else { "" }
    );
    println!("cargo:rustc-env=KLAIS_PROFILE={profile}");
    println!("cargo:rustc-env=KLAIS_TARGET={target}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
    println!("cargo:rerun-if-changed=build.rs");
}
