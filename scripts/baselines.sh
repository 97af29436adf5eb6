#!/usr/bin/env bash
# The Python baseline of `klais bench compare` (benches/baselines/asyncio_aiokafka.py)
# needs aiokafka, and the broker tier's Python readers (tests/fixtures/read_topic.py)
# aiokafka and confluent-kafka (whose wheel bundles librdkafka 2.12 with zstd,
# TLS and SASL): this makes a virtualenv with both in the cache, once.
#   scripts/baselines.sh          prints the interpreter's path (installs if missing)
# The cache ($KLAIS_CACHE, default /var/cache/klais) lives outside the clone,
# so CI runs and later sessions reuse it. The tokio baseline is a cargo binary
# (klais-baseline-tokio) and needs nothing here.
set -euo pipefail
cache=${KLAIS_CACHE:-/var/cache/klais}
venv="$cache/venv-aiokafka-0.14.0"
py="$venv/bin/python3"
if [[ ! -x "$py" ]] || ! "$py" -c 'import aiokafka, confluent_kafka' 2>/dev/null; then
  mkdir -p "$cache"
  log=$(mktemp /tmp/klais-baselines.XXXXXX.log)
  if ! { python3 -m venv --clear "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check "aiokafka[lz4]==0.14.0" "confluent-kafka==2.12.0"; } >"$log" 2>&1; then
    echo "baselines: making the Python venv in $venv failed (needs python3 with venv: apt-get install python3-venv); it said:" >&2
    tail -n 20 "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
fi
echo "$py"
