#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup runs from a trap
# Chaos run (issue 18 item 3): mixed traffic through one gateway in front of two real
# backends and a real redis-server while backends are killed and frozen, Redis is killed,
# the config is reloaded ten times (some invalid), the binary is upgraded twice, slow clients
# trickle headers and one IP floods connections. Prints a report and exits non-zero when a
# target is missed. Details: load-tests/README.md ("chaos.sh").
#
#   ./load-tests/chaos.sh                    # CHAOS_SECONDS=180
#   CHAOS_SECONDS=60 ./load-tests/chaos.sh   # the shortest run
#   SOAK=10m ./load-tests/chaos.sh           # steady rate, no faults, RSS growth < 10% after warm-up
#   make chaos                               # the same, through make
#
# Env: CHAOS_SECONDS [180], SOAK [unset], RATE [80], WORKERS [12], SLOW_CLIENTS [50],
#      FLOOD_CONNS [1000], STALL_MS [2000], BACKEND_KEEPALIVE [2], PER_IP_CAP [64],
#      SHUTDOWN_PROBE [1], KEEP_TMP [0], PORTCULLIS_BIN [target/release/portcullis if present,
#      else target/debug/portcullis, built with `cargo build --bins` if missing].
# Uses python3 (3.9+; 3.11 here; stdlib only) and redis-server. 127.0.0.1 only; bounded by `timeout`;
# every process is stopped on exit, Ctrl-C or failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

die() { echo "chaos: $*" >&2; exit 2; }

command -v python3 >/dev/null 2>&1 || die "python3 is missing"
command -v redis-server >/dev/null 2>&1 || die "redis-server is missing (make deps installs it)"

if [ -z "${PORTCULLIS_BIN:-}" ]; then
  if [ -x "$ROOT/target/release/portcullis" ]; then
    PORTCULLIS_BIN=$ROOT/target/release/portcullis
  else
    if [ ! -x "$ROOT/target/debug/portcullis" ]; then
      (cd "$ROOT" && cargo build --bins)
    fi
    PORTCULLIS_BIN=$ROOT/target/debug/portcullis
  fi
fi
[ -x "$PORTCULLIS_BIN" ] || die "no gateway binary at $PORTCULLIS_BIN"
export PORTCULLIS_BIN

secs=${SOAK:-${CHAOS_SECONDS:-180}}
case $secs in
  *h) secs=$(( ${secs%h} * 3600 )) ;;
  *m) secs=$(( ${secs%m} * 60 )) ;;
  *s) secs=${secs%s} ;;
esac
[[ $secs =~ ^[0-9]+$ ]] || die "CHAOS_SECONDS/SOAK must look like 60, 90s or 10m"

PY_PID=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$PY_PID" ] && kill -0 "$PY_PID" 2>/dev/null; then
    kill -TERM "$PY_PID" 2>/dev/null || true   # chaos.py stops everything it started
    for _ in $(seq 1 100); do kill -0 "$PY_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PY_PID" 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The driver has its own watchdog (run length + 150 s); `timeout` is the outer bound.
timeout -k 10 $((secs + 240)) python3 "$HERE/chaos.py" &
PY_PID=$!
set +e
wait "$PY_PID"
rc=$?
set -e
PY_PID=
exit "$rc"
