#!/bin/bash
# Host preparation the data plane needs, idempotent: kernel headers for bcc (links the
# Debian headers when the running kernel ships none), bpffs, and the nft/iptables modules.
set -euo pipefail
kver=$(uname -r)
if [ ! -e "/lib/modules/$kver/build/include" ]; then
    amd64=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
    if [ -z "$amd64" ] || [ -z "$common" ]; then
        echo "kernel-setup: no kernel headers for $kver and no Debian linux-headers-amd64" >&2
        exit 1
    fi
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$amd64" "/lib/modules/$kver/build"
    ln -sfn "$common" "/lib/modules/$kver/source"
fi
if ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf
fi
