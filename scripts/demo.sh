#!/usr/bin/env bash
# Quick start, first command (README): sets up the machine, builds klais in
# release mode and runs its main job on the embedded default configuration with
# generated device traffic on loopback and live figures. Arguments pass to
# `klais demo` (see `klais demo --help`), e.g. --rate 100000 --duration 30.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh
echo "building klais (release; the first build takes a few minutes)..."
cargo build --locked --release --quiet
exec target/release/klais demo "$@"
