#!/usr/bin/env bash
# Installs the second real OpenZiti peer, libziti 1.18.3 with the openziti 1.7.1 binding, into
# its own virtual environment (.venv/peers/libziti-1.18.3): it is the same `openziti` package
# name as the openziti==0.6.0 (libziti 0.29.3) that .venv holds. The kit is not on PyPI; it is
# looked for in $LIBZITI_KIT, then ../shared/peers/libziti-1.18.3 next to this checkout, then
# /work/shared/peers/libziti-1.18.3. Without it the tests that need it skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
target=.venv/peers/libziti-1.18.3
kit=""
for candidate in "${LIBZITI_KIT:-}" ../shared/peers/libziti-1.18.3 /work/shared/peers/libziti-1.18.3; do
    if [ -n "$candidate" ] && [ -x "$candidate/install.sh" ]; then kit=$candidate; break; fi
done
if [ -z "$kit" ]; then
    echo "peers: libziti 1.18.3 kit not found (set LIBZITI_KIT); its tests will be skipped" >&2
    exit 0
fi
if [ -f "$target/.installed" ] && [ "$target/.installed" -nt "$kit/install.sh" ]; then exit 0; fi
rm -rf "$target"
"${PYTHON:-python3}" -m venv "$target"
bash "$kit/install.sh" "$target"
touch "$target/.installed"
