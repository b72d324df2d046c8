#!/bin/sh
# tunneler container entrypoint (sidecar): enroll if asked to, then run the daemon.
#
# Environment:
#   TUNNELER_MODE              run (intercept, default) or run-host
#   TUNNELER_IDENTITY_DIR      identity volume (default /var/lib/tunneler); every NAME.json in it
#                              is loaded and every NAME.jwt enrolled at start
#   TUNNELER_IDENTITY_NAME     file name for a token given below (default: sidecar)
#   TUNNELER_ENROLL_TOKEN_FILE a mounted enrollment JWT (preferred: secrets stay out of env)
#   TUNNELER_ENROLL_TOKEN      the enrollment JWT itself
#   TUNNELER_RUNTIME_DIR       control socket and journal (default /run/tunneler)
#   TUNNELER_BIN               the tunneler executable (default: tunneler on PATH)
# Arguments starting with "-" are passed to the daemon; anything else is run as a command
# (for example `tunneler status`).
#
# In intercept mode the daemon writes this network namespace's /etc/resolv.conf in place
# (our DNS first, the original resolvers kept below it and used as upstreams): an app container
# sharing the namespace (network_mode: service:tunneler) resolves service names through it.
set -eu

mode="${TUNNELER_MODE:-run}"
identity_dir="${TUNNELER_IDENTITY_DIR:-/var/lib/tunneler}"
name="${TUNNELER_IDENTITY_NAME:-sidecar}"
runtime_dir="${TUNNELER_RUNTIME_DIR:-/run/tunneler}"
bin="${TUNNELER_BIN:-tunneler}"

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

if [ "$mode" = run ] && [ "$(id -u)" != 0 ]; then
    echo "tunneler: intercept mode needs NET_ADMIN, which container runtimes give only" \
         "to uid 0: run as user 0 with cap_drop ALL + cap_add NET_ADMIN" \
         "(docs/operations.md), or set TUNNELER_MODE=run-host" >&2
    exit 1
fi

umask 077
mkdir -p "$identity_dir" "$runtime_dir"
token="$identity_dir/$name.jwt"
if [ -e "$identity_dir/$name.json" ]; then
    : # already enrolled: a token given again is ignored (it was single-use)
elif [ -n "${TUNNELER_ENROLL_TOKEN_FILE:-}" ]; then
    cp "$TUNNELER_ENROLL_TOKEN_FILE" "$token"
elif [ -n "${TUNNELER_ENROLL_TOKEN:-}" ]; then
    printf '%s\n' "$TUNNELER_ENROLL_TOKEN" > "$token"
fi
unset TUNNELER_ENROLL_TOKEN

case "$mode" in
    run)
        exec "$bin" run --identity-dir "$identity_dir" --runtime-dir "$runtime_dir" \
            --control-socket "$runtime_dir/tunneler.sock" "$@"
        ;;
    run-host)
        exec "$bin" run-host --identity-dir "$identity_dir" \
            --control-socket "$runtime_dir/tunneler.sock" "$@"
        ;;
    *)
        echo "tunneler: TUNNELER_MODE must be run or run-host, not '$mode'" >&2
        exit 1
        ;;
esac
