#!/usr/bin/env bash
# Run time of klais's XDP program during the load, from the kernel's own BPF
# statistics (kernel.bpf_stats_enabled, restored afterwards): runs and
# nanoseconds per run, read from the target's program fd in /proc/PID/fdinfo
# (no bpftool needed).
#   perf/bpf-stats.sh [klais bench run ARGS...]   (default: --rate 100000 --duration 10)
# Writes bpf-stats-TRIAL.txt into the bench's results folder. Only the
# klais-af_xdp target attaches an XDP program.
source "$(dirname "$0")/lib.sh"
was=$(sysctl -n kernel.bpf_stats_enabled)
sysctl -q -w kernel.bpf_stats_enabled=1
trap 'sysctl -q -w kernel.bpf_stats_enabled=$was' EXIT
HOOK='
read_stats() { for f in /proc/$KLAIS_BENCH_TARGET_PID/fdinfo/*; do
  awk "/^prog_type:/{t=\$2} /^run_time_ns:/{ns=\$2} /^run_cnt:/{n=\$2} END{if (t==6) print ns, n}" "$f" 2>/dev/null; done | head -1; }
a=$(read_stats); sleep "$KLAIS_BENCH_SECONDS"; b=$(read_stats)
echo "$a $b" | awk "{ns=\$3-\$1; n=\$4-\$2; if (n>0) printf \"XDP program: %d runs, %.1f ns per run (run_time_ns %d)\\n\", n, ns/n, ns; else print \"XDP program: no runs seen (is the target klais-af_xdp?)\"}" >"$KLAIS_BENCH_DIR/bpf-stats-$KLAIS_BENCH_TRIAL.txt"'
bench "$@" || true
dir=$(last_dir)
cat "$dir"/bpf-stats-*.txt 2>/dev/null || echo "no BPF statistics were written" >&2
