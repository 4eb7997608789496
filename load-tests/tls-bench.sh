#!/usr/bin/env bash
# TLS cost on one box: the same Portcullis process serves one route on a plain and a TLS
# listener (rustls, ECDSA P-256 certificate); wrk measures both with keep-alive (record
# layer cost) and with `Connection: close` (one full handshake per request). Layout as in
# bench.sh: nginx upstream + wrk on the load core, Portcullis (1 worker thread) alone on the
# proxy core. Rounds interleave plain/TLS; only the ratios of one run mean anything.
#
#   ./load-tests/tls-bench.sh            # ROUNDS=3 DURATION=5s CONNECTIONS=64
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RELEASE=${RELEASE_DIR:-$ROOT/target/release}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-64}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
for t in wrk nginx openssl taskset; do command -v $t >/dev/null || { echo "tls-bench: needs $t" >&2; exit 1; }; done
[ -x "$RELEASE/portcullis" ] || { echo "tls-bench: build first: cargo build --release --bins" >&2; exit 1; }

die() { echo "tls-bench: $*" >&2; exit 1; }
# shellcheck source=load-tests/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh" # lib_cleanup, running
TMP=$(mktemp -d)
PIDS=()
lib_traps

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null

cat > "$TMP/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:18091; keepalive_requests 1000000; location / { return 200 "ok"; } }
}
EOF
taskset -c "$LOAD_CPU" nginx -c "$TMP/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

cat > "$TMP/pingora.yaml" <<EOF
---
version: 1
threads: 1
pid_file: $TMP/portcullis.pid
upgrade_sock: $TMP/upgrade.sock
EOF
cat > "$TMP/portcullis.yaml" <<EOF
server:
  listen: ["127.0.0.1:18090"]
  tls: { listen: "127.0.0.1:18443", cert: "$TMP/cert.pem", key: "$TMP/key.pem" }
access_log: { enabled: false }
upstreams:
  up: { backends: [{ addr: "127.0.0.1:18091" }] }
routes:
  - { match: { path: "/**" }, upstream: up }
EOF
RUST_LOG=warn taskset -c "$PROXY_CPU" "$RELEASE/portcullis" -c "$TMP/portcullis.yaml" \
  --server-conf "$TMP/pingora.yaml" > "$TMP/portcullis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:18090/x && break; sleep 0.1; done
curl -sfk -o /dev/null --resolve bench.test:18443:127.0.0.1 https://bench.test:18443/x \
  || { echo "tls-bench: TLS listener not answering" >&2; cat "$TMP/portcullis.log" >&2; exit 1; }

run() { # name url [extra wrk args]
  local name=$1 url=$2; shift 2
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "$@" "$url" 2>&1 \
    | awk -v n="$name" '/Requests\/sec/ {printf "%-16s %10.0f req/s\n", n, $2}'
}
# warm-up
run warmup http://127.0.0.1:18090/x >/dev/null
run warmup https://127.0.0.1:18443/x >/dev/null
for r in $(seq "$ROUNDS"); do
  echo "round $r"
  run plain-keepalive http://127.0.0.1:18090/x
  run tls-keepalive https://127.0.0.1:18443/x
  run plain-close http://127.0.0.1:18090/x -H "Connection: close"
  run tls-close https://127.0.0.1:18443/x -H "Connection: close"
done
