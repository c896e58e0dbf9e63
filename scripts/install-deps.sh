#!/bin/bash
# Installs what walfs needs to build, test and demo on Debian 12, as root.
# Idempotent: installs only missing packages.
set -euo pipefail
PACKAGES=(
    build-essential pkg-config
    libfuse3-dev fuse3 libcurl4-openssl-dev libssl-dev liblzo2-dev libisal-dev libarchive-dev
    libxml2-dev libjson-c-dev
    lzop curl python3 util-linux procps rsync openssl
    postgresql-15
    ceph-mon ceph-osd radosgw
    daemontools
    clang-14 libclang-rt-14-dev
)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-deps: run as root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts a cluster when postgresql-15 is installed on a machine with
# systemd; the tests run their own servers and need none.
