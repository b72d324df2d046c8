#!/usr/bin/env bash
# The private-LLM demo (`make demo`): as root, installs the system packages it needs if missing
# (scripts/system-deps.sh), creates the project's venv (`make deps`),
# then runs `python -m tunneler.demo` with it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "demo: run as root (it creates network namespaces and a TUN device): sudo make demo" >&2
    exit 1
fi

bash scripts/system-deps.sh
[ -e /dev/net/tun ] || modprobe tun 2>/dev/null || true

make --no-print-directory deps
exec .venv/bin/python -m tunneler.demo "$@"
