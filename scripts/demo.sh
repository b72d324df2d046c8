#!/usr/bin/env bash
# The private-LLM demo (`make demo`): as root, installs the system tools it needs if missing,
# then runs `python -m tunneler.demo` with the project's venv (created by `make deps`).
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
if [ "${#missing[@]}" -gt 0 ]; then
    echo "demo: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -e /dev/net/tun ] || modprobe tun 2>/dev/null || true

if [ ! -x .venv/bin/python ]; then
    echo "demo: no .venv here: run \`make demo\` (it creates the venv first)" >&2
    exit 1
fi
exec .venv/bin/python -m tunneler.demo "$@"
