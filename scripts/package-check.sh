#!/usr/bin/env bash
# Installs klais's Debian package with dpkg -i, checks it as an operator
# would, then removes and purges it and checks that nothing is left. As root;
# the machine must not have klais installed from elsewhere (it is purged first
# if it is a package). Argument: the .deb (default: the newest in
# target/debian/). Exits non-zero with the failed check.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "package-check: run as root (it installs a package)" >&2; exit 1; }
deb=${1:-$(ls -t target/debian/klais_*_amd64.deb 2>/dev/null | head -1)}
[[ -f $deb ]] || { echo "package-check: no package; build one with scripts/package.sh" >&2; exit 1; }

fail() { echo "package-check: FAILED: $*" >&2; exit 1; }
check() { local what=$1; shift; "$@" >/dev/null 2>&1 || fail "$what ($*)"; echo "  ok: $what"; }
mode_owner() { [[ $(stat -c '%a %U:%G' "$1") == "$2" ]] || fail "$1 is $(stat -c '%a %U:%G' "$1"), not $2"; echo "  ok: $1 $2"; }

dpkg -s klais >/dev/null 2>&1 && dpkg -P klais >/dev/null
echo "package-check: dpkg -i $deb"
dpkg -i "$deb"
check "klais version from /usr/bin" /usr/bin/klais version
check "klais config check /etc/klais/config.toml, as root" /usr/bin/klais config check /etc/klais/config.toml
check "the klais system user" id klais
check "klais config check, as the klais user" runuser -u klais -- /usr/bin/klais config check /etc/klais/config.toml
mode_owner /etc/klais "750 root:klais"
mode_owner /etc/klais/config.toml "640 root:klais"
mode_owner /etc/klais/admin-token "600 klais:klais"
mode_owner /var/lib/klais "700 klais:klais"
check "the configuration is a conffile" grep -qx /etc/klais/config.toml /var/lib/dpkg/info/klais.conffiles
check "the systemd unit verifies" systemd-analyze verify /usr/lib/systemd/system/klais.service
check "the unit is installed but not enabled" test ! -e /etc/systemd/system/multi-user.target.wants/klais.service
check "the dashboard" test -s /usr/share/klais/grafana/klais.json

echo "package-check: dpkg -r klais"
dpkg -r klais >/dev/null
check "the binary is gone" test ! -e /usr/bin/klais
check "the unit is gone" test ! -e /usr/lib/systemd/system/klais.service
check "the configuration stays until purge" test -e /etc/klais/config.toml
echo "package-check: dpkg -P klais"
dpkg -P klais >/dev/null
check "nothing of klais is left in /etc" test ! -e /etc/klais
check "nothing of klais is left in /var/lib" test ! -e /var/lib/klais
check "no ownership override is left" bash -c '! dpkg-statoverride --list | grep -q klais'
check "dpkg no longer knows klais" bash -c '! dpkg -s klais'
echo "package-check: ok (the klais user stays, as Debian's policy advises for system users)"
