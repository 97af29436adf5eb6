#!/usr/bin/env bash
# A perf profiling run of klais under generated load on loopback:
#   perf/record.sh [SECONDS] [RATE_PPS]      (defaults: 10 s, as fast as possible)
# Builds the release binary (with symbols: profile.release debug = 1), runs
# `klais demo` with perf recording call graphs on every CPU, and writes
# perf/results/<stamp>/{perf.data,report.txt,demo.txt,machine.txt}. Needs root
# (or kernel.perf_event_paranoid <= 1) and Debian's linux-perf, installed here
# if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
secs=${1:-10}
rate=${2:-0}

scripts/setup.sh
if ! command -v perf >/dev/null 2>&1; then
  [[ $(id -u) -eq 0 ]] || { echo "perf not installed: apt-get install linux-perf (as root)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf >/dev/null
fi
if ! perf stat -e cycles true >/dev/null 2>&1; then
  echo "note: this machine exposes no hardware cycle counter to perf; sampling falls back to cpu-clock" >&2
  event=cpu-clock
else
  event=cycles
fi

cargo build --locked --release --quiet
out=perf/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
{
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "kernel: $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "cpus: $(nproc)"
  echo "event: $event; run: klais demo --duration $secs --rate $rate"
} >"$out/machine.txt"

perf record -e "$event" -g -a -o "$out/perf.data" -- \
  target/release/klais demo --duration "$secs" --rate "$rate" 2>"$out/demo.txt"
# Flat: where the cycles go, by thread, object and symbol. Full: with call graphs.
perf report -i "$out/perf.data" --stdio --no-children -g none --percent-limit 0.5 \
  --sort comm,dso,symbol >"$out/report.txt" 2>/dev/null
perf report -i "$out/perf.data" --stdio --no-children --sort comm,dso,symbol >"$out/report-full.txt" 2>/dev/null
tail -n 4 "$out/demo.txt"
echo "profile: $out/report.txt (perf report -i $out/perf.data for the interactive view)"
