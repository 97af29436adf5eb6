#!/usr/bin/env bash
# Bounded fuzzing of klais (cargo-fuzz / libFuzzer, fuzz/README.md) for CI and
# for developers: every fuzz target runs for a fixed time, seeded by the
# committed corpus in fuzz/corpus/<target>/, which it never modifies.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to $KLAIS_FUZZ_SECONDS, else 60. Without TARGET
# every target in fuzz/Cargo.toml runs, one after the other.
#
# Works on a fresh Debian 12 machine as root with rustup: installs the system
# packages (scripts/setup.sh), the nightly toolchain if missing, and cargo-fuzz
# (pinned) into /var/cache/klais/cargo-fuzz-<version> if missing. Build output
# is cached in /var/cache/klais/fuzz-target ($KLAIS_FUZZ_TARGET_DIR); CARGO_BUILD_JOBS
# is honoured.
#
# Exit status: 0 when no target found anything; 1 when one crashed, leaked,
# timed out or ran out of memory (the artifact path and the command to
# reproduce it are printed); 2 on a usage or setup error.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# 0.13.2: the current release (0.13.x superseded 0.12.x); it builds with the
# stable and nightly toolchains of 2026 and knows the sanitizer flags current
# nightlies take.
CARGO_FUZZ_VERSION=0.13.2
CARGO_FUZZ_ROOT="${KLAIS_FUZZ_CACHE:-/var/cache/klais}/cargo-fuzz-$CARGO_FUZZ_VERSION"
ALL_TARGETS=(wire_parse wire_v2_roundtrip config_toml journal_reader kafka_response batch_encoder)

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

secs="${KLAIS_FUZZ_SECONDS:-60}"
if (($#)); then
  case "$1" in
    -h | --help) usage ;;
  esac
  secs="$1"
  shift
fi
[[ "$secs" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz: SECONDS_PER_TARGET must be a positive integer, got '$secs'" >&2; usage; }
targets=("$@")
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
  [[ -f "fuzz/fuzz_targets/$t.rs" ]] || { echo "fuzz: no target '$t' (have: ${ALL_TARGETS[*]})" >&2; exit 2; }
done

# --- tools ---------------------------------------------------------------
bash scripts/setup.sh
if ! command -v rustup >/dev/null 2>&1; then
  [[ -x "$HOME/.cargo/bin/rustup" ]] || { echo "fuzz: rustup not found; cargo-fuzz needs the nightly toolchain through rustup" >&2; exit 2; }
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: installing the nightly toolchain (cargo-fuzz needs -Zsanitizer)"
  rustup toolchain install nightly --profile minimal
fi
if ! "$CARGO_FUZZ_ROOT/bin/cargo-fuzz" --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into $CARGO_FUZZ_ROOT"
  mkdir -p "$CARGO_FUZZ_ROOT"
  cargo +nightly install cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --locked --root "$CARGO_FUZZ_ROOT"
fi
export PATH="$CARGO_FUZZ_ROOT/bin:$PATH"
# The build output is cached beside the other slow installs, so a fresh clone
# on the same machine (CI) rebuilds only the klais crate, not the dependencies
# under the sanitizer.
export CARGO_TARGET_DIR="${KLAIS_FUZZ_TARGET_DIR:-/var/cache/klais/fuzz-target}"

# --- build ---------------------------------------------------------------
# One build of every target (release, debug assertions, ASan, coverage
# instrumentation); `cargo fuzz run` below finds it up to date.
echo "fuzz: building the fuzz targets (cargo +nightly fuzz build; cached in $CARGO_TARGET_DIR)"
build_start=$(date +%s)
cargo +nightly fuzz build --target-dir "$CARGO_TARGET_DIR"
echo "fuzz: built in $(($(date +%s) - build_start)) s"

# --- run -----------------------------------------------------------------
work=$(mktemp -d /tmp/klais-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
failures=()
for t in "${targets[@]}"; do
  # libFuzzer adds new inputs to the FIRST corpus directory: a scratch one, so
  # the committed seeds (second, read only by libFuzzer) stay as they are.
  scratch="$work/corpus-$t"
  log="$work/$t.log"
  mkdir -p "$scratch" "fuzz/artifacts/$t"
  echo "fuzz: $t for ${secs} s (log: $log)"
  start=$(date +%s)
  set +e
  cargo +nightly fuzz run --target-dir "$CARGO_TARGET_DIR" "$t" "$scratch" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  elapsed=$(($(date +%s) - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
  # libFuzzer's own time ("Done N runs in S second(s)"); the wall time adds
  # start-up and any rebuild `cargo fuzz run` did after a source change.
  fuzzed=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1 || true)
  new=$(find "$scratch" -type f | wc -l)
  if ((rc == 0)); then
    passed=$((passed + 1))
    printf 'fuzz: %-18s ok      %10s execs in %3s s (wall %3d s; %s; %d new inputs)\n' \
      "$t" "${execs:-?}" "${fuzzed:-?}" "$elapsed" "${cov:-cov: ?}" "$new"
  else
    failed=$((failed + 1))
    failures+=("$t")
    printf 'fuzz: %-18s FAILED  %10s execs, wall %3d s (exit %d)\n' "$t" "${execs:-?}" "$elapsed" "$rc"
    echo "---- last lines of $t's log ----"
    tail -n 80 "$log"
    echo "--------------------------------"
    # The cause, which a long stack trace may push out of the tail above.
    grep -m 1 -A 1 'panicked at' "$log" | sed "s/^/fuzz: $t: /" || true
    grep -m 1 -E '^(==[0-9]+==ERROR|SUMMARY):' "$log" | sed "s/^/fuzz: $t: /" || true
    cp "$log" "fuzz/artifacts/$t/last-run.log" 2>/dev/null || true
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    if [[ -n "$artifact" ]]; then
      echo "fuzz: $t: crashing input saved as $artifact"
      echo "fuzz: reproduce with: cargo +nightly fuzz run $t $artifact"
      echo "fuzz: keep it as a regression: cp $artifact fuzz/regressions/$t-<short>.bin"
    else
      echo "fuzz: $t failed without an artifact (build error, or see fuzz/artifacts/$t/last-run.log)"
    fi
  fi
done

echo "fuzz: $passed passed, $failed failed"
if ((failed)); then
  echo "fuzz: failing targets: ${failures[*]}" >&2
  exit 1
fi
