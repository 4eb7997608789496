#!/usr/bin/env bash
# Instructions per proxied request of the full chain (API-key auth, rate limit, metrics,
# access log: the bench route of load-tests/bench/portcullis.yaml), counted by callgrind —
# the steady measure on a noisy machine. Two runs under valgrind: one serving REQUESTS
# requests over 16 keep-alive connections, one only starting and stopping; the difference
# divided by the requests served is the per-request cost.
#
# Usage: load-tests/callgrind.sh [BIN]   (default target/release/portcullis)
#        TARGET=portcullis (default) | bare | nginx: the same requests through the floor
#          (BIN default load-tests/bare-pingora/target/release/bare-pingora, the passthrough
#          against the unpatched crates.io Pingora that bench.sh builds; a bare build of
#          vendor/ is target/release/bare-pingora) or through nginx proxy_pass with an access
#          log (load-tests/bench/nginx-proxy.conf.tmpl, one process: master_process off)
#        REQUESTS (default 20000)
#        PLUGINS: plugins added to the bench route, comma-separated (default none):
#          header-rules  one request rule (${identity.key}) and one response rule (${route})
#          forward-auth  an auth call to the demo upstream, decisions cached (hits only)
#          body-guard    content-type and size checks (the GETs have no body)
#        WASM=NAME adds the proxy-wasm filter tests/wasm/NAME.wasm to the bench route
#        (WASM=noop: a filter whose callbacks all return Continue; what is left is the host's
#        cost); make bench measures the route with and without it.
#        KEEP=DIR keeps the two callgrind outputs there (cg.busy, cg.idle) for
#        `callgrind_annotate --inclusive=yes DIR/cg.busy`.
#        UPSTREAM=nginx (default: load-tests/bench/nginx-upstream.conf.tmpl, keep-alive, as in
#          bench.sh) | demo (target/release/demo-upstream, which ends each body by closing the
#          connection, so every request connects anew: the figures of 2026-12-02 and before)
# Needs valgrind and curl (and nginx for the default upstream).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TARGET=${TARGET:-portcullis}
case $TARGET in
  portcullis) BIN=$(realpath "${1:-$ROOT/target/release/portcullis}") ;;
  bare) BIN=$(realpath "${1:-$HERE/bare-pingora/target/release/bare-pingora}") ;;
  nginx) BIN=$(realpath "${1:-$(command -v nginx || echo /usr/sbin/nginx)}") ;;
  *) echo "callgrind.sh: TARGET must be portcullis, bare or nginx" >&2; exit 2 ;;
esac
UP=${UP:-$ROOT/target/release/demo-upstream}
REQUESTS=${REQUESTS:-20000}
KEY=NAvz8yGIEtGSVannK-sGhqwzhk44juUUxtK82MR900I
for t in valgrind curl callgrind_annotate; do command -v $t >/dev/null || { echo "callgrind.sh: needs $t" >&2; exit 2; }; done
[ -x "$BIN" ] || { echo "callgrind.sh: build first (cargo build --release --bins)" >&2; exit 2; }
TMP=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UPORT=$(free_port); PPORT=$(free_port); APORT=$(free_port)
chmod 755 "$TMP" # nginx workers may run as nobody
if [ "${UPSTREAM:-nginx}" = demo ]; then
  "$UP" "bench=127.0.0.1:$UPORT" >"$TMP/up.log" 2>&1 & pids+=($!)
else
  NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
  sed -e "s|@DIR@|$TMP|g" -e "s|@UPSTREAM_PORT@|$UPORT|g" "$HERE/bench/nginx-upstream.conf.tmpl" >"$TMP/up.conf"
  "$NGINX_BIN" -p "$TMP" -e "$TMP/up.error.log" -c "$TMP/up.conf" >"$TMP/up.log" 2>&1 & pids+=($!)
fi
sed -e "s/127.0.0.1:18083/127.0.0.1:$PPORT/" -e "s/127.0.0.1:18081/127.0.0.1:$UPORT/" \
    -e "s/127.0.0.1:19090/127.0.0.1:$APORT/" -e "s#/tmp/portcullis-bench/access.log#$TMP/access.log#" \
    "$HERE/bench/portcullis.yaml" >"$TMP/portcullis.yaml"
case $TARGET in
  bare)
    printf 'version: 1\nthreads: 1\ndaemon: false\npid_file: %s/bare.pid\nupgrade_sock: %s/bare.sock\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\nupstream_keepalive_pool_size: 128\n' \
      "$TMP" "$TMP" >"$TMP/bare.yaml"
    START=("$BIN" "127.0.0.1:$PPORT" "127.0.0.1:$UPORT" "$TMP/bare.yaml"); PORTS="$PPORT" ;;
  nginx)
    chmod 755 "$TMP"
    sed -e "s|@DIR@|$TMP|g" -e "s|@UPSTREAM_PORT@|$UPORT|g" -e "s|@PORT@|$PPORT|g" -e "s|@NAME@|nginx|g" \
      -e "s|@ACCESS_LOG@|$TMP/access.log|g" -e "s|^daemon off;.*|daemon off;\nmaster_process off;|" \
      "$HERE/bench/nginx-proxy.conf.tmpl" >"$TMP/nginx.conf"
    START=("$BIN" -p "$TMP" -e "$TMP/nginx.error.log" -c "$TMP/nginx.conf"); PORTS="$PPORT" ;;
  *) START=("$BIN" -c "$TMP/portcullis.yaml"); PORTS="$PPORT $APORT" ;;
esac
if [ -n "${PLUGINS:-}" ]; then
  python3 - "$TMP/portcullis.yaml" "$PLUGINS" "$UPORT" <<'PY'
import sys
path, wanted, uport = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
known = {
    "header-rules": '{ name: header-rules, config: { request: { set: { x-client: "${identity.key}" } }, response: { set: { x-route: "${route}" } } } }',
    "forward-auth": '{ name: forward-auth, config: { url: "http://127.0.0.1:%s/auth", cache: { ttl: 1h } } }' % uport,
    "body-guard": '{ name: body-guard, config: { max_bytes: 16KiB, content_types: [application/json] } }',
}
lines = ["    plugins:"] + ["      - " + known[w] for w in wanted]
text = open(path).read()
anchor = "    rate_limit: [per_client]\n"
i = text.index(anchor) + len(anchor)   # the first route: the benchmarked one
open(path, "w").write(text[:i] + "\n".join(lines) + "\n" + text[i:])
PY
fi
if [ -n "${WASM:-}" ]; then
  [ -f "$ROOT/tests/wasm/$WASM.wasm" ] || { echo "callgrind.sh: no tests/wasm/$WASM.wasm" >&2; exit 2; }
  python3 - "$TMP/portcullis.yaml" "$ROOT/tests/wasm/$WASM.wasm" <<'PY'
import sys
path, wasm = sys.argv[1], sys.argv[2]
text = open(path).read()
anchor = "    rate_limit: [per_client]\n"
at = text.index("- name: bench-api-key")
at = text.index(anchor, at) + len(anchor)
text = text[:at] + f'    wasm: [{{ file: "{wasm}" }}]\n' + text[at:]
open(path, "w").write(text)
PY
fi
export PORTCULLIS_DEMO_JWT_SECRET=callgrind-secret
wait_port() { for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
# total Ir of one callgrind run; $1: label, $2: requests to send (0: start and stop only)
run() {
  wait_port "$UPORT"
  : >"$TMP/access.log"
  valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.$1" "${START[@]}" \
    >"$TMP/gw.$1.log" 2>&1 & local gw=$!
  for p in $PORTS; do wait_port "$p"; done
  if [ "$2" -gt 0 ]; then
    # warm one connection, then the measured requests over 16 connections
    curl -s -o /dev/null -H "x-api-key: $KEY" "http://127.0.0.1:$PPORT/bench/ping"
    local per=$(( $2 / 16 )) clients=()
    for _ in $(seq 1 "$per"); do echo "url = \"http://127.0.0.1:$PPORT/bench/ping\""; echo "output = /dev/null"; done >"$TMP/urls"
    for _ in $(seq 1 16); do
      curl -s -H "x-api-key: $KEY" -K "$TMP/urls" & clients+=($!)
    done
    wait "${clients[@]}"
  fi
  # SIGINT until it exits: one sent before Pingora has installed its handler is lost (seen
  # on a loaded machine: the start-up-only run then idled on and counted its ticks)
  for i in $(seq 0 599); do
    case $(ps -o stat= -p "$gw" 2>/dev/null) in ""|Z*) break ;; esac
    [ $((i % 50)) -eq 0 ] && kill -INT "$gw" 2>/dev/null
    sleep 0.1
  done
  wait "$gw" 2>/dev/null || true
  callgrind_annotate "$TMP/cg.$1" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",","",$1); print $1; done=1}'
}
served=$(( (REQUESTS / 16) * 16 + 1 ))
busy=$(run busy "$REQUESTS")
lines=$(wc -l <"$TMP/access.log")
idle=$(run idle 0)
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$TMP/cg.busy" "$TMP/cg.idle" "$KEEP/"; fi
python3 - "$busy" "$idle" "$served" "$lines" "$BIN ($TARGET)" <<'PY'
import sys
busy, idle, served, lines, b = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
import os
plugins = os.environ.get("PLUGINS") or "none"
wasm = os.environ.get("WASM") or "none"
print(f"{b} (plugins: {plugins}, wasm: {wasm}): {(busy-idle)/served/1000:.1f}k instructions per request ({served} requests, {lines} access-log lines; busy {busy:,}, start-up only {idle:,})")
PY
