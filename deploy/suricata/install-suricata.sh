#!/usr/bin/env bash
# Install Suricata 7 on the AMI being baked (see README.md for the choices).
# Usage: install-suricata.sh [ppa|backports|source]   (default: by OS)
set -euo pipefail
VERSION="${SURICATA_VERSION:-7.0.7}"
. /etc/os-release
method="${1:-}"
if [[ -z "$method" ]]; then
  case "$ID" in
    ubuntu) method=ppa ;;
    debian) method=backports ;;
    *) method=source ;;
  esac
fi

case "$method" in
  ppa)
    apt-get update -qq
    apt-get install -y -qq software-properties-common
    add-apt-repository -y ppa:oisf/suricata-stable
    apt-get update -qq
    apt-get install -y -qq suricata
    ;;
  backports)
    echo "deb http://deb.debian.org/debian ${VERSION_CODENAME}-backports main" \
      > /etc/apt/sources.list.d/backports.list
    apt-get update -qq
    apt-get install -y -qq -t "${VERSION_CODENAME}-backports" suricata
    ;;
  source)
    apt-get update -qq
    apt-get install -y -qq build-essential pkg-config libpcre2-dev libyaml-dev libjansson-dev \
      libnetfilter-queue-dev libnfnetlink-dev libcap-ng-dev libmagic-dev liblz4-dev zlib1g-dev \
      libhyperscan-dev rustc cargo curl
    tmp=$(mktemp -d)
    curl -fsSL "https://www.openinfosecfoundation.org/download/suricata-${VERSION}.tar.gz" \
      -o "$tmp/s.tgz"
    tar -C "$tmp" -xzf "$tmp/s.tgz"
    (cd "$tmp/suricata-${VERSION}" && ./configure --prefix=/usr/local --sysconfdir=/etc \
      --localstatedir=/var --enable-nfqueue --with-libhs && make -j"$(nproc)" && make install)
    rm -rf "$tmp"
    ;;
  *) echo "unknown method $method" >&2; exit 2 ;;
esac

# The distribution's unit would bind the same queues as the product's engine: keep it off.
systemctl disable --now suricata.service 2>/dev/null || true
suricata --build-info | grep -Eq 'NFQueue support:\s+yes' \
  || { echo "this Suricata build has no NFQUEUE support" >&2; exit 1; }
suricata -V
