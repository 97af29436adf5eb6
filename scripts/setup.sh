#!/usr/bin/env bash
# Installs every system package klais's build, tests and demo use, on Debian 12
# as root. Idempotent: installs only what is missing, prints nothing when all is
# there, and on failure prints what failed with the package manager's log.
#
# The list grows with the project (clang/libbpf for bpf/, the Kafka broker for
# the broker tests); each entry says who needs it.
set -euo pipefail

PACKAGES=(
  build-essential   # cc: glommio/ring's C parts, tests/bpf_fnv_vectors.rs builds bpf/fnv1a64_test.c
  pkg-config        # -sys crates locate system libraries
  git               # build.rs stamps the commit into `klais version`
  ca-certificates   # cargo fetches crates over TLS
  iproute2          # `ip` for operators and the network tests
  procps            # `sysctl` for receive-buffer tuning (net.core.rmem_max)
  clang llvm        # build.rs compiles bpf/*.bpf.c to BPF (libbpf-cargo)
  libbpf-dev        # bpf/bpf_helpers.h and friends for the XDP program
  libelf-dev zlib1g-dev  # libbpf-sys builds its vendored libbpf against them
  linux-libc-dev    # linux/bpf.h, linux/if_ether.h ... for the XDP program
  libhwloc-dev      # hwloc2: CPU / NUMA topology discovery for `klais cores`
  fonts-dejavu-core # axis labels and legends in the PNG plots of `klais simulate` and `klais bench`
  python3 python3-venv  # the Python asyncio + aiokafka baseline of `klais bench compare` (scripts/baselines.sh)
  stunnel4 openssl  # the broker tier's TLS listener (a terminator in front of tansu) and its throwaway CA
  libssl-dev        # librdkafka's TLS (rdkafka feature ssl: Debian's OpenSSL)
  libsasl2-dev libsasl2-modules-gssapi-mit  # librdkafka's SASL GSSAPI (Cyrus SASL; PLAIN/SCRAM/OAUTHBEARER are built in)
  libcurl4-openssl-dev  # librdkafka's OAUTHBEARER OIDC token fetch (rdkafka feature curl)
  prometheus        # promtool and a real Prometheus scraping klais in tests/observe.rs
  adduser systemd   # the Debian package: its postinst (adduser), systemd-analyze verify in scripts/package-check.sh
)

log=$(mktemp /tmp/klais-setup.XXXXXX.log)
trap 'rm -f "$log"' EXIT

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing packages: ${missing[*]}; run this script as root (apt-get install)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    echo "setup: installing ${missing[*]} failed; apt-get said:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
fi

# The Rust toolchain comes with the machine (rustup); say so clearly if not.
for tool in cargo rustfmt cargo-clippy; do
  if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x "$HOME/.cargo/bin/$tool" ]]; then
    echo "setup: '$tool' not found. klais needs a Rust toolchain (stable, 1.80 or newer) with rustfmt and clippy, e.g. from rustup: 'rustup component add rustfmt clippy'" >&2
    exit 1
  fi
done
