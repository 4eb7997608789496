#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup runs from a trap
# Run one k6 script against the demo: starts the demo upstreams and the gateway
# (conf/portcullis.yaml), waits for it, runs k6, stops everything, exits with k6's code.
#
#   ./load-tests/run-k6.sh smoke.js
#   RATE=2000 DURATION=20s ./load-tests/run-k6.sh load.js [extra k6 args...]
#
# Env: RATE, DURATION, BASE_URL and the script's own variables pass through to k6.
#      API_KEY / JWT_SECRET default to the demo config's key and HS256 secret.
#      NO_START=1: do not start anything, run k6 against an already running gateway.
#      CONFIG [conf/portcullis.yaml], SERVER_CONF (optional Pingora server conf).
#      K6_CPU (optional): pin k6 to these CPUs with taskset (e.g. 0).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RELEASE=${RELEASE_DIR:-$ROOT/target/release}
CONFIG=${CONFIG:-$ROOT/conf/portcullis.yaml}
NO_START=${NO_START:-0}

die() { echo "run-k6.sh: $*" >&2; exit 2; }

[ $# -ge 1 ] || die "usage: $0 SCRIPT.js [k6 args...]   (scripts: $(cd "$HERE" && echo *.js))"
SCRIPT=$1
shift
if [ ! -f "$SCRIPT" ]; then
  [ -f "$HERE/$SCRIPT" ] || die "no such script: $SCRIPT (looked in . and $HERE)"
  SCRIPT=$HERE/$SCRIPT
fi

# The demo config's credentials (conf/portcullis.yaml holds the key's sha256 and reads the
# JWT secret from PORTCULLIS_DEMO_JWT_SECRET).
export API_KEY=${API_KEY:-demo-key-1234567890abcdefghijklmnopqrstuv}
export JWT_SECRET=${JWT_SECRET:-demo-jwt-secret-change-me}
export PORTCULLIS_DEMO_JWT_SECRET=${PORTCULLIS_DEMO_JWT_SECRET:-$JWT_SECRET}
export BASE_URL=${BASE_URL:-http://127.0.0.1:8080}
export K6_NO_USAGE_REPORT=true

# shellcheck source=load-tests/lib.sh
. "$HERE/lib.sh" # running, port_busy, ensure_k6, lib_cleanup
ensure_k6

TMP=$(mktemp -d /tmp/portcullis-k6.XXXXXX)
PIDS=()
on_cleanup() {
  if [ "$1" != 0 ] && [ "${K6_RAN:-0}" = 0 ]; then
    for f in "$TMP"/*.log; do
      [ -s "$f" ] && { echo "--- $f (last lines)"; tail -n 20 "$f"; }
    done >&2
  fi
}
lib_traps

if [ "$NO_START" != 1 ]; then
  if [ ! -x "$RELEASE/portcullis" ] || [ ! -x "$RELEASE/demo-upstream" ]; then
    echo "run-k6.sh: cargo build --release --bins"
    (cd "$ROOT" && cargo build --release --bins)
  fi
  for p in 8080 9090 3001 3002 3003 3004; do
    ! port_busy "$p" || die "port $p is in use (is \`make run\` up? then use NO_START=1)"
  done
  "$RELEASE/portcullis" -t -c "$CONFIG" || die "$CONFIG does not validate"

  "$RELEASE/demo-upstream" users-1=127.0.0.1:3001 users-2=127.0.0.1:3002 \
    orders-1=127.0.0.1:3003 orders-2=127.0.0.1:3004 >"$TMP/demo-upstream.log" 2>&1 &
  PIDS+=($!)
  gw=("$RELEASE/portcullis" -c "$CONFIG")
  [ -n "${SERVER_CONF:-}" ] && gw+=(--server-conf "$SERVER_CONF")
  "${gw[@]}" >"$TMP/portcullis.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")

  # Up when 127.0.0.1:8080 answers HTTP at all (any status), within 20 s.
  up=0
  for _ in $(seq 1 200); do
    running "$GW_PID" || die "the gateway exited during start-up"
    code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$BASE_URL/" 2>/dev/null || true)
    if [ -n "$code" ] && [ "$code" != 000 ]; then up=1; break; fi
    sleep 0.1
  done
  [ "$up" = 1 ] || die "the gateway did not answer on $BASE_URL within 20 s"
  # Then, best effort, until a proxied route answers 200 (upstream health checks settle).
  for _ in $(seq 1 50); do
    [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$BASE_URL/api/users/1" || true)" = 200 ] && break
    sleep 0.1
  done
  echo "run-k6.sh: gateway up on $BASE_URL (pid $GW_PID), logs in $TMP"
fi

k6cmd=(k6 run --address "" "$SCRIPT" "$@")
[ -n "${K6_CPU:-}" ] && k6cmd=(taskset -c "$K6_CPU" "${k6cmd[@]}")
K6_RAN=1
set +e
"${k6cmd[@]}"
rc=$?
set -e
echo "run-k6.sh: k6 exited with $rc"
exit "$rc"
