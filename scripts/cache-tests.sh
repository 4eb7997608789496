#!/usr/bin/env bash
# `make cache-tests`: run the HTTP caching conformance suite (github.com/http-tests/cache-tests)
# through the gateway and print its score (required / optimal / total, docs/cache.md).
#
# Usage: scripts/cache-tests.sh SUITE_DIR [BIN]     (BIN default target/debug/portcullis)
#
# Starts the suite's origin and a gateway with one catch-all caching route to it (retries and
# the breaker off: the origin answers 5xx on purpose), runs the suite's command-line client,
# and prints the score. SUITE_CONFIG=defaults runs the route with `cache: {}` alone instead of
# the suite's opt-ins (see below). FAILS=1 lists the tests that did not pass. RESULTS=FILE
# keeps the raw results. Needs node >= 20 and npm (`npm install` runs in SUITE_DIR if needed).
set -euo pipefail

die() { echo "cache-tests: $*" >&2; exit 1; }

SUITE=${1:-}
[ -n "$SUITE" ] || die "usage: $0 SUITE_DIR [BIN] (a clone of github.com/http-tests/cache-tests)"
[ -f "$SUITE/tests/index.mjs" ] || die "$SUITE is not a cache-tests checkout (no tests/index.mjs)"
SUITE=$(cd "$SUITE" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=$(realpath "${2:-$HERE/../target/debug/portcullis}")
[ -x "$BIN" ] || die "no gateway binary at $BIN (cargo build --bins)"
command -v node >/dev/null || die "node is not installed"
command -v npm >/dev/null || die "npm is not installed"

if [ ! -d "$SUITE/node_modules" ]; then
  (cd "$SUITE" && npm install --silent --no-audit --no-fund) || die "npm install failed in $SUITE"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ORIGIN_PORT=${ORIGIN_PORT:-$(free_port)}
GATEWAY_PORT=${GATEWAY_PORT:-$(free_port)}
TMP=$(mktemp -d /tmp/portcullis-cache-tests.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The suite's opt-ins: it expects a stored Set-Cookie to be served again
# (headers-store-Set-Cookie) and checks that CDN-Cache-Control reaches the client on the
# responses it sends (cdn-private, cdn-no-cache). Both are off by default.
OPT_INS="set_cookie: serve, targeted: { forward: true }"
[ "${SUITE_CONFIG:-}" = defaults ] && OPT_INS=""
cat >"$TMP/gateway.yaml" <<YAML
server:
  listen: ["127.0.0.1:$GATEWAY_PORT"]
upstreams:
  origin:
    backends: [{ addr: "127.0.0.1:$ORIGIN_PORT" }]
    retry: { attempts: 0 }
    circuit_breaker: { enabled: false }
routes:
  - match: { path: "/**" }
    upstream: origin
    cache: { $OPT_INS }
YAML
"$BIN" -t -c "$TMP/gateway.yaml" >/dev/null || die "the generated gateway config is invalid"

# the suite's `npm run server`, without npm in between (so the pid is the server's and the
# cleanup stops it)
(cd "$SUITE" && npm_config_protocol=http npm_config_port="$ORIGIN_PORT" \
  npm_config_pidfile="$TMP/origin.pid" exec node test-engine/server/server.mjs) \
  >"$TMP/origin.log" 2>&1 &
PIDS+=($!)
"$BIN" -c "$TMP/gateway.yaml" >"$TMP/gateway.log" 2>&1 &
PIDS+=($!)

wait_http() { # wait_http URL: until it answers, at most 30 s
  local deadline=$((SECONDS + 30))
  until curl -s -o /dev/null "$1"; do
    [ $SECONDS -lt $deadline ] || die "$1 did not answer within 30 s (logs in $TMP)"
    sleep 0.2
  done
}
wait_http "http://127.0.0.1:$ORIGIN_PORT/"
wait_http "http://127.0.0.1:$GATEWAY_PORT/"

echo "cache-tests: origin :$ORIGIN_PORT, gateway :$GATEWAY_PORT ($(date -u +%Y-%m-%d))" >&2
(cd "$SUITE" && npm run --silent cli --base="http://127.0.0.1:$GATEWAY_PORT") >"$TMP/results.json" \
  || die "the suite's client failed"
[ -n "${RESULTS:-}" ] && cp "$TMP/results.json" "$RESULTS"
if [ "${FAILS:-0}" = 1 ]; then
  node "$HERE/cache-tests-score.mjs" "$SUITE" "$TMP/results.json" --fails
else
  node "$HERE/cache-tests-score.mjs" "$SUITE" "$TMP/results.json"
fi
