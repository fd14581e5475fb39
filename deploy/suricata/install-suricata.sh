#!/usr/bin/env bash
# Install Suricata 7 (NFQUEUE, Hyperscan) from Debian packages, as root; idempotent.
# Used by `make deps` and by the AMI recipe (deploy/ami/install.sh).
#
# bookworm: Suricata 7.0.x is in bookworm-backports. The suite is added with an apt pin
# (/etc/apt/preferences.d/spectra-suricata) that gives priority 500 to `suricata` and
# `libhtp2` (the one library it needs at a newer version) and -1 to everything else in
# backports, so nothing else on the machine is ever installed or upgraded from it.
# trixie and later: Suricata 7 is in the release itself; no extra suite.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
. /etc/os-release
apt_get() { apt-get -o DPkg::Lock::Timeout=300 "$@"; }

if [[ "${VERSION_CODENAME:-}" == bookworm ]]; then
    cat > /etc/apt/sources.list.d/spectra-backports.sources <<SRC
# Cloud Spectra Gateway: bookworm-backports, pinned to Suricata only (preferences.d/spectra-suricata)
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    cat > /etc/apt/preferences.d/spectra-suricata <<PIN
# Cloud Spectra Gateway: Suricata 7 from bookworm-backports, and only what it needs.
Package: suricata libhtp2
Pin: release n=bookworm-backports
Pin-Priority: 500

Package: *
Pin: release n=bookworm-backports
Pin-Priority: -1
PIN
fi

if ! dpkg-query -W -f='${Status} ${Version}\n' suricata 2>/dev/null | grep -q '^install ok installed 1:7\.'; then
    apt_get update -qq
    apt_get install -y -qq --no-install-recommends suricata >/dev/null
fi

# The distribution's unit would bind NFQUEUE itself: the agent runs Suricata, not systemd.
if [[ -d /run/systemd/system ]]; then
    systemctl disable -q --now suricata.service 2>/dev/null || true
else
    systemctl disable -q suricata.service 2>/dev/null || true
fi
# (read whole first: `grep -q` in a pipe may close it early, and with pipefail the
# writer's SIGPIPE failed this check at random)
build_info=$(suricata --build-info)
grep -Eq 'NFQueue support:\s+yes' <<<"$build_info" \
    || { echo "install-suricata.sh: this Suricata has no NFQUEUE support" >&2; exit 1; }
echo "install-suricata.sh: $(suricata -V 2>&1 | head -1)"
