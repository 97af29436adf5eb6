# Shared by the perf/ scripts (sourced): root check, perf installed, release
# build, and `bench ARGS...` running `klais bench run` with the --on-load hook
# the calling script set in $HOOK. Results land in the bench's stamped folder
# under perf/results/ (not committed), beside result.json and the plots.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
[[ $(id -u) -eq 0 ]] || { echo "$(basename "$0"): needs root (network namespace, XDP, perf on other processes)" >&2; exit 1; }
scripts/setup.sh
ensure_perf() {
  if ! command -v perf >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf >/dev/null
  fi
}
cargo build --locked --release --quiet --bins
out=perf/results
mkdir -p "$out"
# Default scenario when no bench arguments are given: klais (af_xdp), 100,000 msg/s, 10 s.
bench() {
  local args=("$@")
  ((${#args[@]})) || args=(--rate 100000 --duration 10)
  target/release/klais bench run --out "$out" --quiet --on-load "$HOOK" "${args[@]}" | tee "$out/last-summary.txt"
}
# The folder the last bench wrote.
last_dir() { ls -dt "$out"/*-run* | head -1; }
