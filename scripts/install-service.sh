#!/usr/bin/env bash
# Installs klais as a systemd service run by the dedicated user `klais`
# (deploy/klais.service): builds the release binary, creates the user, the
# configuration and state directories, an admin token (mode 600) and the unit.
# Does not start it: review /etc/klais/config.toml first, then
#   systemctl enable --now klais
# Idempotent; as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
[[ $(id -u) -eq 0 ]] || { echo "install-service: run as root" >&2; exit 1; }

scripts/setup.sh
cargo build --locked --release --quiet
install -m 0755 target/release/klais /usr/local/bin/klais

if ! id klais >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir /var/lib/klais --shell /usr/sbin/nologin klais
  echo "install-service: created system user klais"
fi
install -d -o root -g klais -m 0750 /etc/klais
install -d -o klais -g klais -m 0700 /var/lib/klais
if [[ ! -e /etc/klais/config.toml ]]; then
  # The shipped defaults, with the admin token wired in.
  sed 's|^# token_file = "/etc/klais/admin-token"|token_file = "/etc/klais/admin-token"|' config.toml \
    > /etc/klais/config.toml
  chown root:klais /etc/klais/config.toml
  chmod 0640 /etc/klais/config.toml
  echo "install-service: wrote /etc/klais/config.toml (edit xdp.iface, output.kafka.brokers, ...)"
fi
if [[ ! -e /etc/klais/admin-token ]]; then
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > /etc/klais/admin-token
  echo >> /etc/klais/admin-token
  chown klais:klais /etc/klais/admin-token
  chmod 0600 /etc/klais/admin-token
  echo "install-service: wrote /etc/klais/admin-token (mode 600, owner klais)"
fi
install -m 0644 deploy/klais.service /etc/systemd/system/klais.service
systemctl daemon-reload 2>/dev/null || true
/usr/local/bin/klais config check /etc/klais/config.toml || true
echo "install-service: done. Set CPUAffinity= in /etc/systemd/system/klais.service to the core map's CPUs,"
echo "then: systemctl enable --now klais; klais top; curl -s 127.0.0.1:9464/ready"
