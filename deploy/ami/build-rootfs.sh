#!/bin/bash
# Build the appliance's root filesystem on a Debian 12/13 builder (root): debootstrap a
# Debian base from Debian's packages (the mirror this machine's apt uses), then run
# install.sh inside it with systemd-nspawn. The result boots with `systemd-nspawn --boot`
# (tests/e2e/test_ami.py) and is what an AMI's root volume holds (deploy/ami/README.md).
#
#   build-rootfs.sh TARGET [SUITE]      SUITE: bookworm (default) or trixie
#
#   SPECTRA_MIRROR        Debian mirror [default: the first deb.debian.org-style URI in
#                         /etc/apt/sources.list*]
#   SPECTRA_AMI_CACHE     cache of the downloaded packages, the installed base system and
#                         the wheels [default: <repo>/.state/ami]; a re-run takes seconds
#                         for the base and the time of `pip install` for the rest
#   SPECTRA_BUILD_PYTHON  a Python (with pip) of the target's version that builds the
#                         wheels [default: <repo>/.venv/bin/python, else python3]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${1:?usage: build-rootfs.sh TARGET [SUITE]}
suite=${2:-bookworm}
cache=${SPECTRA_AMI_CACHE:-$repo/.state/ami}
python=${SPECTRA_BUILD_PYTHON:-$repo/.venv/bin/python}
[ -x "$python" ] || python=python3
[ "$(id -u)" = 0 ] || { echo "build-rootfs.sh: needs root" >&2; exit 1; }

mirror_from_apt() {
    # one-line (deb URI suite) and deb822 (URIs: URI) sources; the first Debian archive
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null | awk '
        /^deb / { for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) { print $i; next } }
        /^URIs:/ { print $2 }' | grep -E '/debian/?$' | head -1 || true
}
mirror=${SPECTRA_MIRROR:-$(mirror_from_apt)}
mirror=${mirror:-http://deb.debian.org/debian}
packages=$(grep -v '^#' "$here/packages.txt" | paste -sd, -)
key=$(printf '%s\n' "$suite" "$mirror" "$packages" | sha256sum | cut -c1-16)
debs=$cache/debootstrap-$suite-$key.tgz
base=$cache/base-$suite-$key.tar
mkdir -p "$cache"

if [ ! -f "$base" ]; then
    if [ ! -f "$debs" ]; then
        echo "build-rootfs: downloading $suite from $mirror"
        rm -rf "$cache/download"
        debootstrap --variant=minbase --include="$packages" --make-tarball="$debs.tmp" \
            "$suite" "$cache/download" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
            { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
        mv "$debs.tmp" "$debs"
    fi
    echo "build-rootfs: installing the $suite base system"
    rm -rf "$cache/unpack"
    debootstrap --variant=minbase --include="$packages" --unpack-tarball="$debs" \
        "$suite" "$cache/unpack" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
        { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    rm -rf "$cache/unpack/var/cache/apt/archives/"*.deb
    tar -C "$cache/unpack" -cf "$base.tmp" . && mv "$base.tmp" "$base"
    rm -rf "$cache/unpack"
fi

echo "build-rootfs: $target from the cached base"
rm -rf "$target"
mkdir -p "$target"
tar -C "$target" -xf "$base"

# The source as git tracks it (plus uncommitted changes), without caches and states
mkdir -p "$target/opt/spectra/src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | \
    xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' | \
    tar --null -T - -cf -) | tar -C "$target/opt/spectra/src" -xf -

# The dashboard's built assets (untracked: `make dashboard` builds them from the
# committed lockfile) go into the wheel with the rest of the control package
make -C "$repo" --no-print-directory dashboard
mkdir -p "$target/opt/spectra/src/control/dashboard"
cp -a "$repo/control/dashboard/dist" "$target/opt/spectra/src/control/dashboard/"

# Wheels built here (the image has no compiler); the target's Python must match
want=$(chroot "$target" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
have=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$want" != "$have" ]; then
    echo "build-rootfs: $python is Python $have, $suite has $want: set SPECTRA_BUILD_PYTHON" >&2
    exit 1
fi
wheels=$cache/wheels-$want
mkdir -p "$wheels"
rm -f "$wheels"/cloud_spectra_gateway-*.whl
"$python" -m pip wheel -q --wheel-dir "$wheels" --find-links "$wheels" \
    "$target/opt/spectra/src" 2>&1 | grep -v "is ignored" >&2 || true
ls "$wheels"/cloud_spectra_gateway-*.whl >/dev/null

systemd-nspawn --quiet --register=no --keep-unit -D "$target" \
    --bind-ro="$wheels:/opt/spectra/wheels" \
    --setenv=SPECTRA_WHEELS=/opt/spectra/wheels --setenv=SPECTRA_SRC=/opt/spectra/src \
    --resolv-conf=copy-host /opt/spectra/src/deploy/ami/install.sh

# Image identity: hostname, DNS (the VPC resolver's link-local address), machine-id
# empty so every instance gets its own on first boot
echo spectra >"$target/etc/hostname"
rm -f "$target/etc/resolv.conf"
echo "nameserver 169.254.169.253" >"$target/etc/resolv.conf"
: >"$target/etc/machine-id"
echo "build-rootfs: $target is ready"
