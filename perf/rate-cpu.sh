#!/usr/bin/env bash
# CPU per message of a running klais at fixed rates, per Kafka client: for each
# rate and client, `klais run` (UDP on loopback, Kafka to a fresh test broker
# with a 3-partition topic) takes `klais gen --rate R` for SECONDS; the script
# reads the klais process's CPU time (utime + stime, /proc/PID/stat) around the
# load, and the output core's own CPU per message from klais's summary.
#
#   perf/rate-cpu.sh [SECONDS] [RATES] [CLIENTS]
#     defaults: 10 "10000 50000 150000" "native librdkafka"
#   KLAIS_BIN=path  compare another build (e.g. one made in a git worktree)
#
# Prints one line per run. The generator shares the machine: compare the
# clients' figures of one run, not figures across machines.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rates=${2:-10000 50000 150000}
clients=${3:-native librdkafka}
bin=${KLAIS_BIN:-target/release/klais}
[[ -x "$bin" ]] || cargo build --locked --release --quiet
tansu=$(scripts/broker.sh path)
hz=$(getconf CLK_TCK)
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

printf '%-11s %8s %10s %12s %16s %s\n' client rate messages "cpu us/msg" "output ns/msg" delivered
for rate in $rates; do
  for client in $clients; do
    port=$(free_port)
    udp=$(free_port)
    bpid=$(scripts/broker.sh start "$port")
    "$tansu" topic create --broker "tcp://127.0.0.1:$port" --partitions 3 rate-cpu >/dev/null
    dir=$(mktemp -d /tmp/klais-rate-cpu.XXXXXX)
    cat >"$dir/klais.toml" <<EOF
[ingest]
listen = "127.0.0.1:$udp"
[admin]
listen = "127.0.0.1:0"
[output]
sink = "kafka"
[output.kafka]
client = "$client"
brokers = "127.0.0.1:$port"
topic = "rate-cpu"
[output.kafka.journal]
dir = "$dir/journal"
EOF
    "$bin" run --config "$dir/klais.toml" 2>"$dir/klais.log" &
    kpid=$!
    sleep 2
    t0=$(cpu_ticks "$kpid")
    n=$((rate * secs))
    "$bin" gen --to "127.0.0.1:$udp" --rate "$rate" --count "$n" >/dev/null 2>&1
    sleep 0.5
    t1=$(cpu_ticks "$kpid")
    kill -TERM "$kpid"
    wait "$kpid" || true
    scripts/broker.sh stop "$bpid"
    out=$(grep -oE '(output core|batcher) CPU [0-9]+ ns per message' "$dir/klais.log" | grep -oE '[0-9]+' | head -1 || true)
    delivered=$(grep -oE 'delivered [0-9]+, buffered' "$dir/klais.log" | grep -oE '[0-9]+' | head -1 || true)
    us=$(python3 -c "print(f'{($t1 - $t0) / $hz * 1e6 / $n:.2f}')")
    printf '%-11s %8s %10s %12s %16s %s\n' "$client" "$rate" "$n" "$us" "${out:-?}" "${delivered:-?}"
    rm -rf "$dir"
  done
done
