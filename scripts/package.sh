#!/usr/bin/env bash
# Builds klais's Debian package with cargo-deb (Cargo.toml,
# [package.metadata.deb]): target/debian/klais_<version>_amd64.deb. Installs
# cargo-deb (pinned) into /var/cache/klais/cargo-deb-<version> if missing
# (about a minute the first time). Prints the package's path last.
# Install it with `dpkg -i` (docs/operating.md); scripts/package-check.sh
# installs, checks and purges it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

CARGO_DEB_VERSION=3.8.0
root="${KLAIS_CACHE:-/var/cache/klais}/cargo-deb-$CARGO_DEB_VERSION"
if ! "$root/bin/cargo-deb" --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
  echo "package: installing cargo-deb $CARGO_DEB_VERSION into $root" >&2
  log=$(mktemp /tmp/klais-cargo-deb.XXXXXX.log)
  if ! cargo install cargo-deb --version "=$CARGO_DEB_VERSION" --locked --root "$root" >"$log" 2>&1; then
    echo "package: installing cargo-deb failed:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  rm -f "$log"
fi
# cargo-deb builds the release binary (cargo build --release --locked) and
# strips it; dpkg-shlibdeps (dpkg-dev) computes the shared-library depends.
# --dbgsym: the debug symbols (release builds keep them for perf) go into
# klais-dbgsym_<version>_amd64.ddeb beside it; install that too to profile.
"$root/bin/cargo-deb" --locked --dbgsym "$@"
