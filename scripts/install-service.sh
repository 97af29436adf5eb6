#!/usr/bin/env bash
# Installs klais on this machine as an operator would: builds the Debian
# package (scripts/package.sh) and installs it with dpkg -i. The package
# brings /usr/bin/klais, /etc/klais/config.toml (a conffile), the systemd
# unit (not enabled), the `klais` system user, /var/lib/klais and an admin
# token (/etc/klais/admin-token, mode 600). Does not start the service:
# review /etc/klais/config.toml first, then
#   systemctl enable --now klais
# As root on Debian 12. Idempotent (a reinstall keeps an edited configuration).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "install-service: run as root" >&2; exit 1; }

scripts/setup.sh
deb=$(scripts/package.sh | grep '\.deb$' | tail -1)
dpkg -i "$deb"
/usr/bin/klais config check /etc/klais/config.toml >/dev/null
echo "install-service: installed $deb"
echo "Edit /etc/klais/config.toml (xdp.iface, output.kafka.brokers, ...; uncomment admin.token_file to allow writes),"
echo "set CPUAffinity= (systemctl edit klais) to the core map's CPUs, then: systemctl enable --now klais; klais top"
