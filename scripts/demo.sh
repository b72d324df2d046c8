#!/usr/bin/env bash
# The private-LLM demo (`make demo`): as root, installs the system packages it needs if missing
# (iproute2, nftables, dnsutils, curl, python3-venv), creates the project's venv (`make deps`),
# then runs `python -m tunneler.demo` with it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "demo: run as root (it creates network namespaces and a TUN device): sudo make demo" >&2
    exit 1
fi

missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v nft >/dev/null || missing+=(nftables)
command -v dig >/dev/null || missing+=(dnsutils)
command -v curl >/dev/null || missing+=(curl)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "demo: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -e /dev/net/tun ] || modprobe tun 2>/dev/null || true

make --no-print-directory deps
exec .venv/bin/python -m tunneler.demo "$@"
