#!/usr/bin/env bash
# af_xdp vs udp receive on a veth pair between two network namespaces:
#   perf/veth-ingest.sh [SECONDS] [SHARDS]        (defaults: 5 s, 1 shard)
# For each backend: klais runs in namespace A (sink null, XDP filter on the
# veth end; the af_xdp backend receives through AF_XDP sockets, the udp
# backend through SO_REUSEPORT sockets behind the same filter), `klais gen`
# sends from namespace B as fast as one sending thread can, and the script
# prints what was sent, what the veth link dropped (its ring toward the XDP
# side was full), what klais received and accepted, what the kernel dropped at
# the shard's queue (AF_XDP ring full), and the receive rate per shard.
# Needs root. Removes the namespaces on exit, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
shards=${2:-1}
bin=target/release/klais
[[ $(id -u) -eq 0 ]] || { echo "needs root (network namespaces, XDP)" >&2; exit 1; }
cargo build --locked --release --quiet
a=klais-perf-a-$$ b=klais-perf-b-$$ ia=kpa$$ ib=kpb$$
work=$(mktemp -d)
cleanup() { ip netns del "$a" 2>/dev/null || true; ip netns del "$b" 2>/dev/null || true; if [[ -n "${KEEP:-}" ]]; then echo "logs kept in $work" >&2; else rm -rf "$work"; fi; }
trap cleanup EXIT
ip netns add "$a"; ip netns add "$b"
ip link add "$ia" netns "$a" numrxqueues "$shards" numtxqueues "$shards" type veth \
  peer name "$ib" netns "$b" numrxqueues "$shards" numtxqueues "$shards"
ip -n "$a" addr add 10.213.9.1/30 dev "$ia"; ip -n "$b" addr add 10.213.9.2/30 dev "$ib"
ip -n "$a" link set "$ia" up; ip -n "$b" link set "$ib" up

printf '%-8s %7s %12s %12s %12s %12s %12s %14s %s\n' backend shards sent "link drops" received accepted "lost at socket" "rx pps/shard" "gen pps"
for backend in udp af_xdp; do
  cat >"$work/$backend.toml" <<TOML
[ingest]
backend = "$backend"
shards = $shards
listen = "10.213.9.1:7700"
[output]
sink = "null"
[xdp]
iface = "$ia"
mode = "native"
TOML
  ip netns exec "$a" "$bin" run --config "$work/$backend.toml" --duration $((secs + 3)) 2>"$work/$backend.klais" &
  pid=$!
  sleep 1.5
  # veth counts frames its peer's ring had no room for as tx_dropped on the sender's side.
  drops0=$(ip netns exec "$b" cat "/sys/class/net/$ib/statistics/tx_dropped")
  ip netns exec "$b" "$bin" gen --to 10.213.9.1:7700 --rate 0 --duration "$secs" --devices 10000 2>"$work/$backend.gen"
  drops1=$(ip netns exec "$b" cat "/sys/class/net/$ib/statistics/tx_dropped")
  wait "$pid"
  sent=$(grep -o 'sent [0-9]*' "$work/$backend.gen" | awk '{print $2}')
  genpps=$(grep -o '[0-9]*/s$' "$work/$backend.gen" | tr -d '/s')
  received=$(awk '/^  received/{print $2; exit}' "$work/$backend.klais")
  accepted=$(awk '/^  accepted/{print $2; exit}' "$work/$backend.klais")
  qdrops=$(awk '/^  dropped at the queue/{print $5; exit}' "$work/$backend.klais")
  lost=$(grep -o 'LOST between the XDP redirect and the shards: [0-9]*' "$work/$backend.klais" | awk '{print $NF}' || true)
  qdrops=$(( ${qdrops:-0} + ${lost:-0} ))
  printf '%-8s %7s %12s %12s %12s %12s %12s %14s %s\n' "$backend" "$shards" "$sent" "$((drops1 - drops0))" "$received" "$accepted" "${qdrops:-0}" \
    "$(awk -v r="$received" -v s="$secs" -v n="$shards" 'BEGIN { printf "%.0f", r / s / n }')" "$genpps"
done
