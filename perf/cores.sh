#!/usr/bin/env bash
# Per-core utilisation each second of the load, and where the target's
# threads ran (thread, core, CPU share).
#   perf/cores.sh [klais bench run ARGS...]   (default: --rate 100000 --duration 10)
# Writes cores-TRIAL.txt into the bench's results folder (result.json also
# holds each trial's per-core busy share over the whole load).
source "$(dirname "$0")/lib.sh"
HOOK='
f="$KLAIS_BENCH_DIR/cores-$KLAIS_BENCH_TRIAL.txt"
snap() { grep "^cpu[0-9]" /proc/stat; }
end=$(awk "BEGIN{print int($KLAIS_BENCH_SECONDS)}")
prev=$(snap)
for s in $(seq 1 "$end"); do
  sleep 1; cur=$(snap)
  paste <(echo "$prev") <(echo "$cur") | awk -v s="$s" "{n=(NF/2); b0=\$2+\$3+\$4+\$7+\$8+\$9; t0=b0+\$5+\$6; b1=\$(n+2)+\$(n+3)+\$(n+4)+\$(n+7)+\$(n+8)+\$(n+9); t1=b1+\$(n+5)+\$(n+6); printf \"t=%2ds %s busy %5.1f%%\\n\", s, \$1, 100*(b1-b0)/((t1-t0)>0?(t1-t0):1)}" >>"$f"
  prev=$cur
done
echo "threads of the target (pid $KLAIS_BENCH_TARGET_PID):" >>"$f"
ps -L -o tid,comm,psr,pcpu -p "$KLAIS_BENCH_TARGET_PID" >>"$f" 2>/dev/null || true'
bench "$@" || true
dir=$(last_dir)
cat "$dir"/cores-*.txt
