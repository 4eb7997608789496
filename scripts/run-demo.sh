#!/usr/bin/env bash
# `make run`: the demo upstreams and the gateway, in the foreground. Ctrl-C, or SIGTERM or
# SIGINT to this script (or to make, which passes SIGTERM on), stops all of them: the gateway
# drains (at most its grace period, 3 s by default) and the upstreams exit at once.
#
# Usage: scripts/run-demo.sh [BIN_DIR [CONFIG]]   (default target/release, conf/portcullis.yaml)
# DEMO_UPSTREAMS replaces the demo upstreams' NAME=ADDR list.
set -u
BIN=${1:-target/release}
CONFIG=${2:-conf/portcullis.yaml}
UPSTREAMS=${DEMO_UPSTREAMS:-users-1=127.0.0.1:3001 users-2=127.0.0.1:3002 orders-1=127.0.0.1:3003 orders-2=127.0.0.1:3004}
export PORTCULLIS_DEMO_JWT_SECRET=${PORTCULLIS_DEMO_JWT_SECRET:-demo-jwt-secret-change-me}

"$BIN/portcullis" -t -c "$CONFIG" || exit 1

pids=()
stop() {
  trap - INT TERM EXIT
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null
  wait
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap stop EXIT

# The children run in the background and the script waits with `wait`: a trapped signal
# interrupts `wait` at once, whereas it would be held until a foreground child exited (which
# is how a signalled `make run` used to leave the gateway running).
# shellcheck disable=SC2086
"$BIN/demo-upstream" $UPSTREAMS &
pids+=($!)
# give the upstreams a moment to listen, so the gateway's first health checks pass
sleep 0.5
echo "gateway on http://127.0.0.1:8080, admin on http://127.0.0.1:9090"
"$BIN/portcullis" -c "$CONFIG" &
pids+=($!)
# either one exiting ends the demo (stop() ends the other)
wait -n
