#!/usr/bin/env bash
# The test command (README): sets up the machine, then format check, clippy with
# warnings as errors, and every test tier available here, plus each benchmark
# run once in test mode (it must run; its speed is measured by `cargo bench`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh
# The broker tier's Kafka-compatible broker (tansu), built once and cached in
# /var/cache/klais (about 10-16 minutes the first time on 2 cores).
scripts/broker.sh install
# The Python baseline's venv (aiokafka) for the bench tests, cached beside it.
scripts/baselines.sh >/dev/null

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test (unit, property, integration, CLI; benches once in test mode)"
cargo test --locked --all-targets
echo "== bounded fuzzing (scripts/fuzz.sh: every cargo-fuzz target, ${KLAIS_FUZZ_SECONDS:-60} s each)"
scripts/fuzz.sh "${KLAIS_FUZZ_SECONDS:-60}"
