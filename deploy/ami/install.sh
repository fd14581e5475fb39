#!/bin/bash
# Install Cloud Spectra Gateway on this Debian 12/13 system (run as root): the Debian
# packages of packages.txt, the Python environment in /opt/spectra/venv, the systemd
# units, kernel settings and networking. Runs on a Packer builder instance (the official
# Debian AMI) or inside a root filesystem (build-rootfs.sh runs it in systemd-nspawn).
#
#   SPECTRA_SRC     the source tree [default: the tree this script is in]
#   SPECTRA_WHEELS  a directory of wheels to install from, offline [default: the index]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=${SPECTRA_SRC:-$(cd "$here/../.." && pwd)}
venv=/opt/spectra/venv
export DEBIAN_FRONTEND=noninteractive

packages=$(grep -v '^#' "$here/packages.txt" | tr -s ' \n' ' ')
# kernel headers for bcc, for the kernel flavour installed here (none in a bare rootfs)
for image in /boot/vmlinuz-*; do
    [ -e "$image" ] || continue
    flavour=${image##*/vmlinuz-*-}
    packages+=" linux-headers-$flavour"
done
missing=$(for p in $packages; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
done)
if [ -n "$missing" ]; then
    echo "install.sh: installing Debian packages: $(echo $missing)"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# Suricata 7 (inspection.engine: suricata), pinned from bookworm-backports on Debian 12
bash "$here/../suricata/install-suricata.sh"

# Python environment: the project and its dependencies; bcc is Debian's (python3-bpfcc)
test -x "$venv/bin/python" || python3 -m venv "$venv"
purelib=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn /usr/lib/python3/dist-packages/bcc "$purelib/bcc"
if [ -n "${SPECTRA_WHEELS:-}" ]; then
    "$venv/bin/pip" install -q --no-index --find-links "$SPECTRA_WHEELS" cloud-spectra-gateway
else
    "$venv/bin/pip" install -q "$src"
fi
ln -sfn "$venv/bin/spectra" /usr/local/bin/spectra
# the config API serves the dashboard from the installed package: a wheel built
# without `make dashboard` would serve only a "not built" page
"$venv/bin/python" -c 'import pathlib, sys, control
p = pathlib.Path(control.__file__).parent / "dashboard" / "dist" / "index.html"
sys.exit(0 if p.is_file() else "install.sh: no dashboard in the package: run make dashboard first")'

# systemd units, kernel settings, modules, networking (DHCP on the ENIs)
install -m 0644 "$here"/systemd/*.service /etc/systemd/system/
install -D -m 0644 "$here/etc/60-spectra.conf" /etc/sysctl.d/60-spectra.conf
install -D -m 0644 "$here/etc/spectra-modules.conf" /etc/modules-load.d/spectra.conf
install -D -m 0644 "$here/etc/80-spectra-primary.network" \
    /etc/systemd/network/80-spectra-primary.network
install -d -m 0755 /etc/spectra
systemctl enable -q systemd-networkd.service systemd-networkd-wait-online.service
systemctl enable -q spectra-firstboot.service spectra-agent.service spectra-ai-gateway.service
# the agent runs its own conntrackd (ha.conntrack_sync); the package's default unit is off
systemctl disable -q conntrackd.service 2>/dev/null || true
# the agent runs Squid (proxy) and HAProxy (tls) itself; the packages' units are off
systemctl disable -q squid.service haproxy.service 2>/dev/null || true
echo "install.sh: installed $("$venv/bin/spectra" --help >/dev/null && echo spectra) in $venv"
