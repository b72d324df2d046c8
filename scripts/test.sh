#!/usr/bin/env bash
# The whole suite as `make test` runs it: tests/privileged in one pytest process and
# tests/unit + tests/integration in another, at the same time. Most of the long tests wait
# (outages, certificate lifetimes, package downloads, image builds, a booting systemd), so two
# streams halve the wall time on two cores; every test must pass under that load anyway. The
# privileged stream's output follows the other's; the exit code is non-zero if either failed.
# Extra arguments go to both pytest runs.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
.venv/bin/python -m pytest tests/privileged "$@" > "$log" 2>&1 &
privileged=$!
.venv/bin/python -m pytest tests/unit tests/integration "$@"
others=$?
wait "$privileged"
root=$?
echo "=================== tests/privileged (ran at the same time) ==================="
cat "$log"
echo "unit+integration: exit $others; privileged: exit $root"
[ "$others" -eq 0 ] && [ "$root" -eq 0 ]
