#!/usr/bin/env bash
# Installs the Debian packages tunneler's demo and tests use, when they are missing and this
# runs as root on a machine with apt-get (elsewhere it only says what is missing).
set -euo pipefail

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v dig >/dev/null || need+=(dnsutils)
command -v curl >/dev/null || need+=(curl)
command -v ping >/dev/null || need+=(iputils-ping)
command -v systemd-analyze >/dev/null || need+=(systemd)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
# the real-host tests (issue 12): a container engine, Debian roots, a booted systemd
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v newuidmap >/dev/null || need+=(uidmap)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
[ "${#need[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "system-deps: missing ${need[*]}; install them (tests that need them are skipped)" >&2
    exit 0
fi
echo "system-deps: installing ${need[*]}"
apt-get update -qq >/dev/null 2>&1 || echo "system-deps: apt-get update failed; trying anyway"
DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes \
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
