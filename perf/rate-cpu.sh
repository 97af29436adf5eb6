#!/usr/bin/env bash
# CPU per message of a running klais at fixed rates, per Kafka client: for each
# rate and client, `klais run` (UDP on loopback, Kafka to a fresh test broker
# with a 3-partition topic) takes `klais gen --rate R` for SECONDS; the script
# reads the klais process's CPU time (utime + stime, /proc/PID/stat) around the
# load, and the output core's own CPU per message from klais's summary.
#
#   perf/rate-cpu.sh [SECONDS] [RATES] [CLIENTS]
#     defaults: 10 "10000 50000 150000" "native librdkafka"
#     CLIENTS may also name "native-tls": the native client over TLS to
#     stunnel4 in front of the broker (a CA and certificate made with openssl;
#     stunnel's own CPU is not klais's and is not counted)
#   KLAIS_BIN=path  compare another build (e.g. one made in a git worktree)
#
# Prints one line per run. The generator shares the machine: compare the
# clients' figures of one run, not figures across machines.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rates=${2:-10000 50000 150000}
clients=${3:-native librdkafka}
bin=${KLAIS_BIN:-target/release/klais}
[[ -x "$bin" ]] || cargo build --locked --release --quiet
tansu=$(scripts/broker.sh path)
hz=$(getconf CLK_TCK)
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

printf '%-11s %8s %10s %10s %12s %16s %s\n' client rate sent accepted "cpu us/msg" "output ns/msg" delivered
for rate in $rates; do
  for client in $clients; do
    port=$(free_port)
    udp=$(free_port)
    dir=$(mktemp -d /tmp/klais-rate-cpu.XXXXXX)
    security=""
    spid=""
    if [[ $client == native-tls ]]; then
      tls=$(free_port)
      "$tansu" broker --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$tls" --storage-engine memory://tansu/ \
        >"$dir/broker.log" 2>&1 &
      bpid=$!
      until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.1; done
      (cd "$dir" &&
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
          -subj /CN=rate-cpu-ca -keyout ca.key -out ca.pem &&
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
          -subj /CN=localhost -keyout server.key -out server.csr &&
        echo "subjectAltName=IP:127.0.0.1" >ext &&
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
          -extfile ext -out server.pem) >/dev/null 2>&1
      printf 'foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\ncert = %s\nkey = %s\n' \
        "$tls" "$port" "$dir/server.pem" "$dir/server.key" >"$dir/stunnel.conf"
      stunnel4 "$dir/stunnel.conf" >/dev/null 2>&1 &
      spid=$!
      until (exec 3<>"/dev/tcp/127.0.0.1/$tls") 2>/dev/null; do sleep 0.1; done
      security=$(printf '[output.kafka.security]\nprotocol = "ssl"\nca_file = "%s"\n' "$dir/ca.pem")
      kport=$tls
      kclient=native
    else
      bpid=$(scripts/broker.sh start "$port")
      kport=$port
      kclient=$client
    fi
    "$tansu" topic create --broker "tcp://127.0.0.1:$port" --partitions 3 rate-cpu >/dev/null
    cat >"$dir/klais.toml" <<EOF
[ingest]
listen = "127.0.0.1:$udp"
[admin]
listen = "127.0.0.1:0"
[output]
sink = "kafka"
[output.kafka]
client = "$kclient"
brokers = "127.0.0.1:$kport"
topic = "rate-cpu"
[output.kafka.journal]
dir = "$dir/journal"
$security
EOF
    "$bin" run --config "$dir/klais.toml" 2>"$dir/klais.log" &
    kpid=$!
    sleep 2
    t0=$(cpu_ticks "$kpid")
    n=$((rate * secs))
    "$bin" gen --to "127.0.0.1:$udp" --rate "$rate" --count "$n" >/dev/null 2>&1
    sleep 0.5
    t1=$(cpu_ticks "$kpid")
    kill -TERM "$kpid"
    wait "$kpid" || true
    [[ -n $spid ]] && kill "$spid" 2>/dev/null
    scripts/broker.sh stop "$bpid"
    out=$(grep -oE '(output core|batcher) CPU [0-9]+ ns per message' "$dir/klais.log" | grep -oE '[0-9]+' | head -1 || true)
    accepted=$(grep -oE '^  accepted +[0-9]+' "$dir/klais.log" | grep -oE '[0-9]+' | head -1 || true)
    delivered=$(grep -oE 'delivered [0-9]+, buffered' "$dir/klais.log" | grep -oE '[0-9]+' | head -1 || true)
    us=$(python3 -c "print(f'{($t1 - $t0) / $hz * 1e6 / $n:.2f}')")
    printf '%-11s %8s %10s %10s %12s %16s %s\n' "$client" "$rate" "$n" "${accepted:-?}" "$us" "${out:-?}" "${delivered:-?}"
    rm -rf "$dir"
  done
done
