#!/usr/bin/env bash
# The whole suite RUNS times in a row (default 3), as `make test` runs it (scripts/test.sh),
# while two CPU-bound processes keep both cores busy: the proof that no test depends on
# timing luck (issue 9). Extra arguments go to pytest. The two burners are this script's own
# children, stopped by PID on any exit; the first failing run stops the loop.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
shift || true
burners=()
stop_burners() { for pid in "${burners[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop_burners EXIT
for _ in 1 2; do
    yes > /dev/null &
    burners+=("$!")
done
for run in $(seq "$runs"); do
    echo "== run $run of $runs (load: yes x2, PIDs ${burners[*]})"
    bash scripts/test.sh -p no:cacheprovider "$@"
done
