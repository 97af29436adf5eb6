#!/usr/bin/env bash
# perf stat of the target during the load: cycles, instructions, IPC, cache
# references and misses, per message.
#   perf/stat.sh [klais bench run ARGS...]   (default: --rate 100000 --duration 10)
# Writes perf-stat-TRIAL.csv into the bench's results folder and prints the
# counts per message delivered. Machines without hardware counters (some VMs)
# say "<not supported>" for cycles and friends; task-clock is always there.
source "$(dirname "$0")/lib.sh"
ensure_perf
HOOK='perf stat -x, -e task-clock,cycles,instructions,cache-references,cache-misses,context-switches -p "$KLAIS_BENCH_TARGET_PID" -o "$KLAIS_BENCH_DIR/perf-stat-$KLAIS_BENCH_TRIAL.csv" -- sleep "$KLAIS_BENCH_SECONDS"'
bench "$@" || true
dir=$(last_dir)
python3 - "$dir" <<'PY'
import csv, json, sys, pathlib
d = pathlib.Path(sys.argv[1])
r = json.loads((d / "result.json").read_text())
trials = [t for tr in r["targets"] for t in tr["trials"]]
for i, t in enumerate(trials, 1):
    f = d / f"perf-stat-{i:02d}.csv"
    if not f.exists():
        continue
    msgs = max(t["measured"]["unique"], 1)
    counts = {}
    for row in csv.reader(l for l in f.read_text().splitlines() if l and not l.startswith("#")):
        if len(row) > 2:
            counts[row[2]] = row[0]
    print(f"trial {i}: {t['target']} at {t['rate']}, {msgs} messages delivered; target process during the load:")
    for ev, v in counts.items():
        try:
            x = float(v)
            if ev == "task-clock":
                print(f"  {ev:<18} {x:>16,.0f} ms {x * 1e6 / msgs:>12.1f} ns CPU per message")
            else:
                print(f"  {ev:<18} {x:>16,.0f}    {x / msgs:>12.3f} per message")
        except ValueError:
            print(f"  {ev:<18} {v:>16}")
    try:
        print(f"  IPC {float(counts['instructions']) / float(counts['cycles']):.2f}")
    except (KeyError, ValueError, ZeroDivisionError):
        pass
PY
echo "perf stat output: $dir/perf-stat-*.csv"
