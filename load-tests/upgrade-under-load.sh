#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup runs from a trap
# Zero-downtime binary upgrade under load: k6 sends a constant rate at the gateway while this
# script performs two graceful upgrades the way systemd's ExecReload does (conf/portcullis.service):
# start `portcullis -u` (it waits on the upgrade socket for the listening sockets), then SIGQUIT
# the old process (it hands its listeners over, keeps serving its open connections for a few
# seconds, then drains and exits).
#
# Passes when k6 saw no failed request at all (threshold http_req_failed rate==0), both old
# processes exited, and the newest process is the one listening.
#
#   ./load-tests/upgrade-under-load.sh
#   RATE=1000 DURATION=30s UPGRADE_AT="8 18" ./load-tests/upgrade-under-load.sh
#
# Env: RATE [500], DURATION [20s], UPGRADE_AT ["5 12"] seconds after k6 starts,
#      PORT [18180] gateway, ADMIN_PORT [19180], UPSTREAM_PORT [18181] demo upstream,
#      THREADS [1] Pingora worker threads, GRACE [2] grace_period_seconds.
# Everything it starts is stopped on exit; the whole run is bounded (k6 under `timeout`).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RELEASE=${RELEASE_DIR:-$ROOT/target/release}
RATE=${RATE:-500}
DURATION=${DURATION:-20s}
UPGRADE_AT=${UPGRADE_AT:-"5 12"}
PORT=${PORT:-18180}
ADMIN_PORT=${ADMIN_PORT:-19180}
UPSTREAM_PORT=${UPSTREAM_PORT:-18181}
THREADS=${THREADS:-1}
GRACE=${GRACE:-2}

die() { echo "upgrade-under-load: $*" >&2; exit 2; }
say() { echo "upgrade-under-load: $*"; }

case $DURATION in
  *s) DUR_S=${DURATION%s} ;;
  *m) DUR_S=$(( ${DURATION%m} * 60 )) ;;
  *) DUR_S=$DURATION ;;
esac
[[ $DUR_S =~ ^[0-9]+$ ]] || die "DURATION must look like 20s or 1m"
for t in $UPGRADE_AT; do
  [[ $t =~ ^[0-9]+$ ]] && [ "$t" -lt "$DUR_S" ] || die "UPGRADE_AT times must be whole seconds below DURATION"
done

# shellcheck source=load-tests/lib.sh
. "$HERE/lib.sh" # running, port_busy, ensure_k6, lib_cleanup
ensure_k6
if [ ! -x "$RELEASE/portcullis" ] || [ ! -x "$RELEASE/demo-upstream" ]; then
  (cd "$ROOT" && cargo build --release --bins)
fi
for p in "$PORT" "$ADMIN_PORT" "$UPSTREAM_PORT"; do
  ! port_busy "$p" || die "port $p is in use (set PORT/ADMIN_PORT/UPSTREAM_PORT)"
done

TMP=$(mktemp -d /tmp/portcullis-upgrade.XXXXXX)
PIDS=()
on_cleanup() {
  if [ "$1" != 0 ]; then
    for f in "$TMP"/gen-*.log; do
      [ -s "$f" ] && { echo "--- $f (last lines)"; tail -n 15 "$f"; }
    done >&2
  fi
}
lib_traps

# Drop a reaped child from PIDS so cleanup never signals a recycled pid.
forget() {
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

cat >"$TMP/pingora.yaml" <<EOF
---
version: 1
threads: $THREADS
daemon: false
pid_file: $TMP/portcullis.pid
upgrade_sock: $TMP/upgrade.sock
grace_period_seconds: $GRACE
graceful_shutdown_timeout_seconds: 5
EOF

cat >"$TMP/portcullis.yaml" <<EOF
server:
  listen: ["127.0.0.1:$PORT"]
  admin: { listen: "127.0.0.1:$ADMIN_PORT" }
upstreams:
  demo:
    backends: [ { addr: "127.0.0.1:$UPSTREAM_PORT" } ]
routes:
  - name: demo
    match: { path: "/**" }
    upstream: demo
EOF
"$RELEASE/portcullis" -t -c "$TMP/portcullis.yaml" >/dev/null

cat >"$TMP/upgrade.js" <<'EOF'
import http from 'k6/http';
import { check } from 'k6';
export const options = {
  discardResponseBodies: true,
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: parseInt(__ENV.RATE, 10),
      timeUnit: '1s',
      duration: __ENV.DURATION,
      preAllocatedVUs: 50,
      maxVUs: 500,
    },
  },
  thresholds: {
    http_req_failed: ['rate==0'], // not one failed request across both upgrades
    checks: ['rate==1'],
  },
};
export default function () {
  const res = http.get(`${__ENV.BASE_URL}/upgrade/${__ITER}`);
  check(res, { 'status 200': (r) => r.status === 200 });
}
EOF

"$RELEASE/demo-upstream" "demo=127.0.0.1:$UPSTREAM_PORT" >"$TMP/demo-upstream.log" 2>&1 &
PIDS+=($!)

GEN=0
start_gen() { # start_gen [-u]: start the next generation of the gateway
  GEN=$((GEN + 1))
  "$RELEASE/portcullis" "$@" -c "$TMP/portcullis.yaml" --server-conf "$TMP/pingora.yaml" \
    >"$TMP/gen-$GEN.log" 2>&1 &
  GEN_PID[$GEN]=$!
  PIDS+=($!)
}
declare -a GEN_PID

start_gen
up=0
for _ in $(seq 1 100); do
  running "${GEN_PID[1]}" || die "the gateway exited during start-up"
  [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$PORT/up" || true)" = 200 ] && { up=1; break; }
  sleep 0.1
done
[ "$up" = 1 ] || die "the gateway did not answer 200 on 127.0.0.1:$PORT within 10 s"
say "generation 1 up (pid ${GEN_PID[1]}); k6 at $RATE rps for $DURATION, upgrades at ${UPGRADE_AT// /s, }s"

K6_NO_USAGE_REPORT=true timeout $((DUR_S + 60)) k6 run --quiet --address "" \
  -e BASE_URL="http://127.0.0.1:$PORT" -e RATE="$RATE" -e DURATION="$DURATION" \
  "$TMP/upgrade.js" >"$TMP/k6.out" 2>&1 &
K6_PID=$!
PIDS+=("$K6_PID")
T0=$(date +%s)

for at in $UPGRADE_AT; do
  while [ $(($(date +%s) - T0)) -lt "$at" ]; do sleep 0.2; done
  old=${GEN_PID[$GEN]}
  start_gen -u
  # The new process listens on the upgrade socket and waits (about 5 s) for the sockets; the
  # old one retries for as long if it is first. A short pause keeps the order of the docs.
  sleep 1
  running "${GEN_PID[$GEN]}" || die "generation $GEN (pid ${GEN_PID[$GEN]}) exited before the handover"
  kill -QUIT "$old"
  say "t=$(($(date +%s) - T0))s: generation $GEN (pid ${GEN_PID[$GEN]}) started with -u, SIGQUIT to pid $old"
done

set +e
wait "$K6_PID"
K6_RC=$?
set -e
forget "$K6_PID"
sed -n '/checks\|http_req_failed\|http_reqs\|http_req_duration\|dropped_iterations\|level=error\|✓\|✗/p' "$TMP/k6.out"

# Old generations: handover + 5 s close timeout + grace period + drain must be over by now,
# give them a little more at most.
deadline=$(($(date +%s) + 15 + GRACE))
fail=0
for g in $(seq 1 $((GEN - 1))); do
  while running "${GEN_PID[$g]}" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
  if running "${GEN_PID[$g]}"; then
    say "FAIL: generation $g (pid ${GEN_PID[$g]}) is still running"
    fail=1
  else
    set +e; wait "${GEN_PID[$g]}"; rc=$?; set -e
    forget "${GEN_PID[$g]}"
    say "generation $g (pid ${GEN_PID[$g]}) exited with $rc"
  fi
done
NEWEST=${GEN_PID[$GEN]}
if ! running "$NEWEST"; then
  say "FAIL: the newest generation $GEN (pid $NEWEST) is not running"
  fail=1
elif ! ss -Hltnp "sport = :$PORT" 2>/dev/null | grep -q "pid=$NEWEST,"; then
  say "FAIL: 127.0.0.1:$PORT is not served by the newest generation (pid $NEWEST):"
  ss -Hltnp "sport = :$PORT" || true
  fail=1
elif [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$PORT/after" || true)" != 200 ]; then
  say "FAIL: the newest generation does not answer 200"
  fail=1
else
  say "the newest generation $GEN (pid $NEWEST) owns 127.0.0.1:$PORT and answers 200"
fi
if [ "$K6_RC" != 0 ]; then
  say "FAIL: k6 exited with $K6_RC (failed requests or checks during the upgrades; see above)"
  fail=1
else
  say "k6: zero failed requests across $((GEN - 1)) upgrades"
fi
[ "$fail" = 0 ] && say "PASS" || say "FAILED"
exit "$fail"
