#!/usr/bin/env bash
# perf record of the target during the load, folded into a flamegraph (inferno).
#   perf/flamegraph.sh [klais bench run ARGS...]   (default: --rate 100000 --duration 10)
# Writes perf-TRIAL.data and flamegraph-TRIAL.svg into the bench's results
# folder. inferno is built once into the cache ($KLAIS_CACHE, /var/cache/klais).
source "$(dirname "$0")/lib.sh"
ensure_perf
cache=${KLAIS_CACHE:-/var/cache/klais}
inferno="$cache/inferno/bin"
if [[ ! -x "$inferno/inferno-flamegraph" ]]; then
  echo "building inferno (flamegraphs) into $cache/inferno, once..." >&2
  cargo install inferno --locked --root "$cache/inferno" --quiet
fi
event=cycles
perf stat -e cycles true >/dev/null 2>&1 || { event=cpu-clock; echo "note: no hardware cycle counter here; sampling cpu-clock" >&2; }
HOOK="perf record -e $event -F 999 -g -p \"\$KLAIS_BENCH_TARGET_PID\" -o \"\$KLAIS_BENCH_DIR/perf-\$KLAIS_BENCH_TRIAL.data\" -- sleep \"\$KLAIS_BENCH_SECONDS\" 2>/dev/null"
bench "$@" || true
dir=$(last_dir)
for data in "$dir"/perf-*.data; do
  [[ -e "$data" ]] || continue
  n=$(basename "$data" .data); n=${n#perf-}
  perf script -i "$data" 2>/dev/null | "$inferno/inferno-collapse-perf" | "$inferno/inferno-flamegraph" --title "klais bench trial $n" >"$dir/flamegraph-$n.svg"
  perf report -i "$data" --stdio --no-children -g none --percent-limit 1 --sort comm,symbol 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25 >"$dir/top-$n.txt"
  echo "flamegraph: $dir/flamegraph-$n.svg (top symbols: $dir/top-$n.txt)"
done
