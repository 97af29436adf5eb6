#!/usr/bin/env bash
# The Kafka-compatible broker for klais's broker test tier and demo: tansu
# (Apache Kafka compatible, in-memory storage; see MACHINE-NOTES).
#
#   scripts/broker.sh install       build it once into the cache (about 16 minutes
#                                   on 2 cores); later calls return at once
#   scripts/broker.sh path          print the binary's path (installs if missing)
#   scripts/broker.sh start PORT    start it on 127.0.0.1:PORT, wait until it accepts
#                                   connections, print its pid
#   scripts/broker.sh stop PID      stop it
#
# The cache ($KLAIS_CACHE, default /var/cache/klais) lives outside the clone,
# so CI runs and later sessions on the same machine reuse the build.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
version=0.6.0
cache=${KLAIS_CACHE:-/var/cache/klais}
root="$cache/tansu-$version"
bin="$root/bin/tansu"

install() {
  [[ -x "$bin" ]] && return 0
  mkdir -p "$root"
  local log
  log=$(mktemp /tmp/klais-broker-build.XXXXXX.log)
  echo "building the test broker (tansu $version, dynostore) into $root; about 16 minutes the first time..." >&2
  if ! cargo install tansu --version "$version" --locked --features dynostore --root "$root" >"$log" 2>&1; then
    echo "broker build failed; cargo said:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  rm -f "$log"
}

case "${1:-}" in
  install) install ;;
  path) install; echo "$bin" ;;
  start)
    port=${2:?usage: scripts/broker.sh start PORT}
    install
    "$bin" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "memory://tansu/" >"/tmp/klais-broker-$port.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "$pid"
        exit 0
      fi
      kill -0 "$pid" 2>/dev/null || { echo "broker exited; its log:" >&2; cat "/tmp/klais-broker-$port.log" >&2; exit 1; }
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    echo "broker did not accept connections on 127.0.0.1:$port within 10 s" >&2
    exit 1
    ;;
  stop)
    pid=${2:?usage: scripts/broker.sh stop PID}
    kill "$pid" 2>/dev/null || exit 0
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || exit 0
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    ;;
  *)
    echo "usage: scripts/broker.sh install|path|start PORT|stop PID" >&2
    exit 2
    ;;
esac
