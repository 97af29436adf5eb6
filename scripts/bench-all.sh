#!/usr/bin/env bash
# Every micro-benchmark in benches/ in one go, then one summary table:
#   scripts/bench-all.sh            (all; about 10 minutes on 2 cores)
#   scripts/bench-all.sh wire xdp   (some)
# Criterion benches (wire: protocol, shard pipeline, cross-shard forward; auth:
# the v2 MAC against HMAC-SHA256 and the authenticated shard step;
# control: Dam, control tick; models: int8 and GGML inference; xdp: the XDP
# verdict paths through BPF_PROG_TEST_RUN, root) report the mean time per
# iteration; the custom-harness ones (batcher: the Kafka core against the
# broker; udp_recv: receive paths, root) print their own figures, copied in.
# Output: bench-results/micro-<UTC stamp>/{summary.md,<bench>.txt}.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh
benches=("$@")
((${#benches[@]})) || benches=(wire auth control models xdp batcher udp_recv)
out=bench-results/micro-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
for b in "${benches[@]}"; do
  echo "== cargo bench --bench $b" >&2
  cargo bench --locked --bench "$b" 2>&1 | tee "$out/$b.txt" >&2
done
python3 - "$out" "${benches[@]}" <<'PY'
import json, pathlib, re, sys
out = pathlib.Path(sys.argv[1]); benches = sys.argv[2:]
crit = pathlib.Path("target/criterion")
def fmt(ns):
    for unit, f in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= f:
            return f"{ns / f:.2f} {unit}"
    return f"{ns:.1f} ns"
lines = [f"# klais micro-benchmarks ({out.name})", "", "| bench | case | mean per iteration | 95% CI |", "|---|---|---|---|"]
for b in benches:
    text = (out / f"{b}.txt").read_text(errors="replace")
    # Criterion prints "Benchmarking <id>: Analyzing" for every case it measured.
    ids = re.findall(r"^Benchmarking (.+?): Analyzing$", text, re.M)
    if ids:
        for i in ids:
            safe = re.sub(r'[?"<>|:*/\\]', "_", i)
            est = None
            for cand in crit.glob("**/new/estimates.json"):
                bench_json = cand.parent / "benchmark.json"
                if bench_json.exists() and json.loads(bench_json.read_text()).get("full_id") == i:
                    est = json.loads(cand.read_text())
                    break
            if est is None:
                lines.append(f"| {b} | {i} | (no estimate found) | |")
                continue
            m = est["mean"]
            ci = m["confidence_interval"]
            lines.append(f"| {b} | {i} | {fmt(m['point_estimate'])} | {fmt(ci['lower_bound'])} – {fmt(ci['upper_bound'])} |")
    else:
        body = [l for l in text.splitlines() if l.strip() and not l.startswith(("   Compiling", "    Finished", "     Running", "warning"))]
        lines.append(f"| {b} | (own harness, figures below) | | |")
        lines.append("")
        lines.append(f"```\n{b}:\n" + "\n".join(body[-25:]) + "\n```")
        lines.append("")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "summary: $out/summary.md" >&2
