#!/usr/bin/env bash
# `make serve`: the model and the gateway side by side until Ctrl-C. They stop together: when
# either exits, the other is stopped and this script fails, saying which one and its status, so
# the gateway never runs alone answering 503s. SIGINT (Ctrl-C) or SIGTERM stops both and ends
# it with 0. The Python (PY) and the SERVE_*_PORT numbers come from `make serve`.
set -uo pipefail
# `wait -n -p` (which service exited) is bash 5.1's; macOS's /bin/bash is 3.2.
if (( BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 501 )); then
  echo "make serve: needs bash 5.1 or newer (this is $BASH_VERSION); on macOS: brew install bash" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
export MLSTACK_API_KEY="${MLSTACK_API_KEY:-dev-key}"
store="embedded SQLite"; [ -z "${DATABASE_URL:-}" ] || store="PostgreSQL from DATABASE_URL"

declare -A pids=()  # service name -> pid
# run SERVICE VAR=VALUE...: `python -m mlstack_SERVICE` in the background, on the import path
# its image has: its own folder and the code both services share.
run() {
  local service=$1; shift
  env "$@" PYTHONPATH="services/$service:services/common" "$PY" -m "mlstack_$service" &
  pids[$service]=$!
}
stop() {  # stop [SIGNAL]: send SIGNAL to the services still running, then wait for them all
  trap '' INT TERM
  [ -z "${1:-}" ] || kill "-$1" "${pids[@]}" 2>/dev/null
  wait
  pids=()
}
# Ctrl-C: the terminal sends SIGINT to the whole foreground group. The services get it too (they
# catch it though started in the background) and drain; a second signal would make them skip
# the drain, so only wait. A second Ctrl-C, which this script then ignores, does skip it.
trap 'stop; exit 0' INT
# SIGTERM reaches this script alone (make passes on the one it gets): pass it on.
trap 'stop TERM; exit 0' TERM
trap 'stop TERM' EXIT

echo "mlstack: model on http://127.0.0.1:$SERVE_MODEL_PORT (gRPC 127.0.0.1:$SERVE_MODEL_GRPC_PORT)," \
  "gateway on http://127.0.0.1:$SERVE_GATEWAY_PORT ($store)," \
  "its metrics on http://127.0.0.1:$SERVE_GATEWAY_METRICS_PORT/metrics;" \
  "X-API-Key is MLSTACK_API_KEY (default dev-key). Ctrl-C stops both."
run model HOST=127.0.0.1 PORT="$SERVE_MODEL_PORT" GRPC_PORT="$SERVE_MODEL_GRPC_PORT"
run gateway HOST=127.0.0.1 PORT="$SERVE_GATEWAY_PORT" METRICS_PORT="$SERVE_GATEWAY_METRICS_PORT" \
  MODEL_URL="http://127.0.0.1:$SERVE_MODEL_PORT"

# Until a service exits (a signal runs its trap above, which ends the script).
wait -n -p exited "${pids[@]}"; status=$?
for service in "${!pids[@]}"; do [ "${pids[$service]}" != "$exited" ] || break; done
unset "pids[$service]"
others=${!pids[*]}
echo "mlstack: the $service exited with status $status; stopping the ${others// / and }." >&2
exit $(( status == 0 ? 1 : status ))
