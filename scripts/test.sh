#!/usr/bin/env bash
# The test command (README): sets up the machine, then format check, clippy with
# warnings as errors, every test tier (DESIGN.md §8), each benchmark run once in
# test mode (it must run; its speed is measured by `cargo bench`), the Debian
# package built, installed with dpkg -i, checked and purged
# (scripts/package-check.sh), and bounded fuzzing. Runs as root, so every tier
# runs here: KLAIS_NO_SKIP=1 turns any skip (tests/common/skip.rs) into a
# failure.
#
# Tiers, visible in test names and `#[ignore = "..."]` (tests/common/mod.rs):
#   plain        cargo test --all-targets           needs nothing
#   root         -- --ignored root::                 #[ignore = "root"]
#   broker       -- --ignored broker:: --skip root_broker::   #[ignore = "broker"]
#   root_broker  -- --ignored root_broker::          #[ignore = "root, broker"]
# Every ignored test must be in exactly one tier (checked below); the last line
# is `tests: N passed, M failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export KLAIS_NO_SKIP=1

scripts/setup.sh
# The broker tier's Kafka-compatible broker (tansu), built once and cached in
# /var/cache/klais (about 10-16 minutes the first time on 2 cores).
scripts/broker.sh install
# The Python baseline's venv (aiokafka) for the bench tests, cached beside it.
scripts/baselines.sh >/dev/null

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings

logs=$(mktemp -d /tmp/klais-test.XXXXXX)
trap 'rm -rf "$logs"' EXIT

# "passed failed ignored" summed over the libtest result lines of a log.
counts() {
  awk '/^test result:/ {
         for (i = 2; i <= NF; i++) {
           if ($i ~ /^passed;?$/) p += $(i - 1)
           if ($i ~ /^failed;?$/) f += $(i - 1)
           if ($i ~ /^ignored;?$/) g += $(i - 1)
         }
       }
       END { print p + 0, f + 0, g + 0 }' "$1"
}

# The ignored tests a filter selects, one "<test binary> <test name>" a line.
ignored_list() {
  cargo test --locked --tests -- --ignored --list "$@" 2>&1 |
    awk '/^ *Running / { bin = $NF } /: test$/ { sub(/: test$/, ""); print bin, $0 }' | sort
}

TIERS=(plain root broker root_broker)
declare -A ARGS=(
  [plain]="--all-targets"
  [root]="--tests -- --ignored root::"
  [broker]="--tests -- --ignored broker:: --skip root_broker::"
  [root_broker]="--tests -- --ignored root_broker::"
)
declare -A PASSED FAILED NOTE
total_passed=0
total_failed=0

# Runs one tier (all of it, --no-fail-fast) and records its counts.
run_tier() {
  local t=$1 rc=0 p f g
  echo "== tier $t: cargo test ${ARGS[$t]}"
  # shellcheck disable=SC2086 # ARGS holds several words
  cargo test --locked --no-fail-fast ${ARGS[$t]} 2>&1 | tee "$logs/$t.log" || rc=$?
  read -r p f g < <(counts "$logs/$t.log")
  NOTE[$t]=""
  if [[ $rc -ne 0 && $f -eq 0 ]]; then
    f=1
    NOTE[$t]=" (cargo test exited with status $rc)"
  fi
  if [[ $t != plain ]]; then
    local want
    want=$(grep -c . "$logs/$t.list" || true)
    if ((p + f != want)); then
      NOTE[$t]+=" ($want tests listed, $((p + f)) ran)"
      ((f > 0)) || f=1
    fi
  fi
  PASSED[$t]=$p
  FAILED[$t]=$f
  ((total_passed += p)) || true
  ((total_failed += f)) || true
}

# Fails the run with a reason (counted as a failure in the last line).
fail() {
  echo "scripts/test.sh: $*" >&2
  ((total_failed += 1))
  summary
  exit 1
}

summary() {
  local t
  echo "== tests"
  for t in "${TIERS[@]}"; do
    if [[ -n ${PASSED[$t]:-} ]]; then
      local line="tier $t: ${PASSED[$t]} passed"
      ((FAILED[$t] == 0)) || line+=" (${FAILED[$t]} FAILED)"
      [[ $t != plain ]] || line+=" (and $benches benchmarks once in test mode)"
      echo "$line${NOTE[$t]}"
    fi
  done
  echo "tests: $total_passed passed, $total_failed failed"
}

run_tier plain
benches=$(grep -c '^ *Running benches/' "$logs/plain.log" || true)

# Every ignored test is in exactly one tier, and its ignore reason names it.
echo "== every ignored test in exactly one tier"
ignored_list >"$logs/all.list" || fail "cargo test -- --ignored --list failed"
for t in root broker root_broker; do
  # shellcheck disable=SC2086 # the filter arguments after `--ignored`
  ignored_list ${ARGS[$t]#*--ignored} >"$logs/$t.list" || fail "listing tier $t failed"
done
if ! sort "$logs/root.list" "$logs/broker.list" "$logs/root_broker.list" |
  diff -u --label 'ignored tests' --label 'in the tiers' "$logs/all.list" -; then
  fail "an ignored test is in no tier (-) or in two (+): put it in a module" \
    "root, broker or root_broker (tests/common/mod.rs)"
fi
# libtest prints "test <name> ... ignored, <reason>"; reason "root, broker"
# belongs in a module root_broker.
if ! awk '/ \.\.\. ignored/ {
         reason = $0; sub(/.* \.\.\. ignored(, )?/, "", reason)
         tier = reason; gsub(/, /, "_", tier)
         if (tier == "" || $2 !~ ("(^|::)" tier "::")) {
           print "  " $2 ": #[ignore = \"" reason "\"] is not in a module " (tier == "" ? "of a tier" : tier); bad = 1
         }
       }
       END { exit bad }' "$logs/plain.log" >&2; then
  fail "an ignore reason does not match the test's tier module (above)"
fi
read -r _ _ ignored < <(counts "$logs/plain.log")
listed=$(grep -c . "$logs/all.list" || true)
((ignored == listed)) || fail "the plain tier ignored $ignored tests, but $listed are listed as ignored"

for t in root broker root_broker; do
  run_tier "$t"
done

if ((total_failed)); then
  summary
  exit 1
fi

echo "== the Debian package (scripts/package.sh, then scripts/package-check.sh: dpkg -i, checks, purge)"
deb=$(scripts/package.sh | grep '\.deb$' | tail -1) || fail "building the Debian package failed"
scripts/package-check.sh "$deb" || fail "the Debian package check failed (above)"

echo "== bounded fuzzing (scripts/fuzz.sh: every cargo-fuzz target, ${KLAIS_FUZZ_SECONDS:-60} s each)"
scripts/fuzz.sh "${KLAIS_FUZZ_SECONDS:-60}"

summary
