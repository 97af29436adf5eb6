#!/usr/bin/env bash
# Quick start, first command (README): sets up the machine, builds klais in
# release mode, starts the local Kafka-compatible test broker (tansu, built once
# into /var/cache/klais: ~16 minutes the first time), creates the topic, and runs
# klais's main job against it on the embedded default configuration with
# generated device traffic on loopback and live figures; then reads the topic
# back (count, per-device order, a few records). Arguments pass to `klais demo`
# (see `klais demo --help`), e.g. --rate 100000 --duration 30.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh
echo "building klais (release; the first build takes a few minutes)..."
cargo build --locked --release --quiet
scripts/broker.sh install
port=${KLAIS_DEMO_BROKER_PORT:-19092}
topic=klais-demo
pid=$(scripts/broker.sh start "$port")
trap 'scripts/broker.sh stop "$pid"' EXIT
"$(scripts/broker.sh path)" topic create --broker "tcp://127.0.0.1:$port" --partitions 3 "$topic" >/dev/null
echo "broker: tansu on 127.0.0.1:$port (pid $pid), topic $topic with 3 partitions"
target/release/klais demo --brokers "127.0.0.1:$port" --topic "$topic" "$@"
