#!/usr/bin/env bash
# shellcheck disable=SC2086,SC2317  # number lists are word-split on purpose; cleanup runs from a trap
# Side-by-side proxy benchmark on one box (DESIGN.md, "Measuring speed").
#
#   ./load-tests/bench.sh                      # throughput: nginx vs bare Pingora vs Portcullis
#   ROUNDS=3 DURATION=5s ./load-tests/bench.sh
#   MODE=latency ./load-tests/bench.sh         # p99 at a constant rate = 50% of nginx's max
#   MODE=flat ./load-tests/bench.sh            # 10 vs 10k routes, 1 vs 1M keys, RSS idle/peak
#
# Layout (2 cores): the upstream (nginx, 1 worker, `return 200`) and the load generator
# (wrk, 1 thread, 64 connections) share the load core; every proxy under test runs alone on
# the proxy core with one worker thread. The three proxies run side by side on their own
# ports (an idle proxy costs nothing), each gets a warm-up, then the rounds interleave
# A B C A B C ... so slow drifts of the machine hit every proxy alike. Only ratios measured
# in one run mean anything; the absolute numbers depend on the box.
#
# Env (defaults in brackets):
#   MODE [throughput]        throughput | latency | flat
#   ROUNDS [5; latency: 1; flat: 3]  interleaved rounds
#   DURATION [10s; latency: 20s]  length of each measured run (wrk/k6 duration syntax)
#   JWT_MIX [1]              throughput/latency: every other request goes to the JWT route
#                            (/bench-jwt/ping, a cached HS256 token) instead of the API-key
#                            route; every proxy gets the same requests
#   IDLE_CONNS [10000]       flat mode: idle keep-alive connections held for the RSS reading
#   WARMUP [3s]              warm-up run per proxy, discarded
#   CONNECTIONS [64]         wrk connections
#   PROXIES [nginx nginx-nolog bare-pingora portcullis; latency: nginx portcullis]
#                            nginx: proxy_pass with an access log (NGINX_ACCESS_LOG);
#                            nginx-nolog: the same without one; bare-pingora: the
#                            passthrough built against the unpatched crates.io Pingora 0.9.1
#                            (load-tests/bare-pingora, its own target dir); bare-vendored: the
#                            same source built against the Pingora patches in vendor/
#   DIRECT [1]               also measure the upstream without a proxy once (sanity check)
#   LOAD_CPU / PROXY_CPU     cores for load+upstream / proxy [first two CPUs we may use]
#   WORK_STEALING [true]     Pingora's work_stealing for the 1-thread server conf
#   NGINX_ACCESS_LOG [1]     1: the nginx reference writes an access log, as Portcullis'
#                            bench route does for every request; 0: it does not
#   LOAD_PCT [50]            latency mode: offered rate as % of nginx's measured max
#   RATE                     latency mode: fixed offered rate instead of LOAD_PCT
#   RATE_TOOL                latency mode: hey or oha to use that generator; by default
#                            wrk2 if installable, else k6
#   BUILD [0]                1: build the binaries (cargo build --release) even if they exist
#   KEEP_TMP [0]             1: keep the temp dir (confs, logs) after the run
#
# Output: a summary table (one line per proxy: median RPS, median p99, RPS ratio to nginx)
# and the raw wrk/k6 output in load-tests/results/bench-<date>.txt.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BENCH_DIR=$HERE/bench
RELEASE=${RELEASE_DIR:-$ROOT/target/release}
STOCK_DIR=$HERE/bare-pingora
STOCK_BIN=$STOCK_DIR/target/release/bare-pingora

MODE=${MODE:-throughput}
case $MODE in
  throughput)
    ROUNDS=${ROUNDS:-5}
    DURATION=${DURATION:-10s}
    PROXIES=${PROXIES:-"nginx nginx-nolog bare-pingora portcullis"}
    ;;
  latency)
    ROUNDS=${ROUNDS:-1}
    DURATION=${DURATION:-20s}
    PROXIES=${PROXIES:-"nginx portcullis"}
    ;;
  flat)
    ROUNDS=${ROUNDS:-3}
    DURATION=${DURATION:-10s}
    # Portcullis only: the same bench route with 10 vs 10,000 routes configured, and a
    # rate limit keyed by a header that takes 1 vs 1,000,000 distinct values.
    PROXIES="routes-10 routes-10k keys-1 keys-1m"
    ;;
  *) echo "bench.sh: MODE must be throughput, latency or flat (got '$MODE')" >&2; exit 2 ;;
esac
WARMUP=${WARMUP:-3s}
CONNECTIONS=${CONNECTIONS:-64}
DIRECT=${DIRECT:-1}
WORK_STEALING=${WORK_STEALING:-true}
NGINX_ACCESS_LOG=${NGINX_ACCESS_LOG:-1}
LOAD_PCT=${LOAD_PCT:-50}
RATE=${RATE:-}
JWT_MIX=${JWT_MIX:-1}
[ "$MODE" = flat ] && JWT_MIX=0
IDLE_CONNS=${IDLE_CONNS:-10000}
BUILD=${BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
REQ_PATH=${REQ_PATH:-/bench/ping}
# The bench's own API key; its sha256 is in bench/portcullis.yaml. Sent to every proxy so
# that all of them see byte-identical requests.
API_KEY=${BENCH_API_KEY:-NAvz8yGIEtGSVannK-sGhqwzhk44juUUxtK82MR900I}
export PORTCULLIS_DEMO_JWT_SECRET=${PORTCULLIS_DEMO_JWT_SECRET:-bench-jwt-secret-not-for-production}

die() { echo "bench.sh: $*" >&2; exit 1; }
warn() { echo "bench.sh: warning: $*" >&2; }
# shellcheck source=load-tests/lib.sh
. "$HERE/lib.sh" # running, port_busy, ensure_k6, lib_cleanup

# Thousands of client connections (flat mode) need descriptors: take the hard limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------------------------------
# Durations and numbers

# Seconds in a wrk/k6 duration (10, 10s, 2m, 1h); sub-second values round up to 1.
dur_secs() {
  local d=$1
  case $d in
    *ms) echo 1 ;;
    *s) echo "${d%s}" ;;
    *m) echo $(( ${d%m} * 60 )) ;;
    *h) echo $(( ${d%h} * 3600 )) ;;
    *) echo "$d" ;;
  esac
}
for v in DURATION WARMUP; do
  [[ $(dur_secs "${!v}") =~ ^[0-9]+$ ]] || die "$v='${!v}' is not a duration like 10s or 1m"
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer"
[[ $LOAD_PCT =~ ^[1-9][0-9]*$ ]] || die "LOAD_PCT must be a positive integer"
[[ $IDLE_CONNS =~ ^[1-9][0-9]*$ ]] || die "IDLE_CONNS must be a positive integer"
[[ -z $RATE || $RATE =~ ^[1-9][0-9]*$ ]] || die "RATE must be a positive integer"
DUR_S=$(dur_secs "$DURATION")
WARM_S=$(dur_secs "$WARMUP")

median() {
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
    END { if (NR == 0) { print "nan"; exit }
          if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# ---------------------------------------------------------------------------------------
# Tools: nginx, wrk, taskset, ss, curl (apt), the release binaries (cargo)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

ensure_apt_tools() {
  local missing=()
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
  command -v ss >/dev/null 2>&1 || missing+=(iproute2)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "bench.sh: installing ${missing[*]} with apt-get"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}
ensure_apt_tools
NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)

ensure_bins() {
  local need=() b
  for p in $PROXIES; do
    case $p in
      bare-pingora)
        if [ ! -x "$STOCK_BIN" ] || [ "$BUILD" = 1 ]; then
          echo "bench.sh: cargo build --release --manifest-path $STOCK_DIR/Cargo.toml (unpatched Pingora)"
          (cd "$STOCK_DIR" && cargo build --release) || warn "the unpatched bare-pingora did not build"
        fi
        ;;
      bare-vendored) need+=(bare-pingora) ;;
      portcullis) need+=(portcullis) ;;
    esac
  done
  [ ${#need[@]} -gt 0 ] || return 0
  local absent=0
  for b in "${need[@]}"; do [ -x "$RELEASE/$b" ] || absent=1; done
  if [ "$absent" = 1 ] || [ "$BUILD" = 1 ]; then
    echo "bench.sh: cargo build --release --bins"
    if ! (cd "$ROOT" && cargo build --release --bins); then
      warn "cargo build failed; using whatever binaries exist in $RELEASE"
    fi
  fi
}
ensure_bins

# ---------------------------------------------------------------------------------------
# CPUs: the first two CPUs this process may run on (the container's cpuset may not be 0,1)

allowed_cpus() {
  local list part i out=()
  list=$(taskset -pc $$ | sed 's/.*: *//')
  IFS=, read -ra parts <<<"$list"
  for part in "${parts[@]}"; do
    part=${part%%:*}
    if [[ $part == *-* ]]; then
      for ((i = ${part%-*}; i <= ${part#*-}; i++)); do out+=("$i"); done
    else
      out+=("$part")
    fi
  done
  echo "${out[@]}"
}
read -ra CPUS <<<"$(allowed_cpus)"
LOAD_CPU=${LOAD_CPU:-${CPUS[0]}}
if [ ${#CPUS[@]} -ge 2 ]; then
  PROXY_CPU=${PROXY_CPU:-${CPUS[1]}}
else
  PROXY_CPU=${PROXY_CPU:-${CPUS[0]}}
  warn "only one CPU available: proxy and load share it, the numbers say little"
fi

# "idle total" jiffies of one CPU, from /proc/stat
cpu_times() {
  awk -v c="cpu$1" '$1 == c { idle = $5 + $6; t = 0; for (i = 2; i <= NF; i++) t += $i; print idle, t }' /proc/stat
}
# CPU ticks (user + system) used so far by every process in process group $1: what the
# proxy itself burned, whatever else the box was doing (nginx's master + worker together).
pgrp_ticks() {
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v pg="$1" '{ sub(/^.*\) /, ""); if ($3 == pg) s += $12 + $13 } END { print s + 0 }'
}
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
now_ms() { date +%s%3N; }
# busy % between two cpu_times snapshots
cpu_busy() {
  echo "$1 $2" | awk '{ dt = $4 - $2; di = $3 - $1; if (dt <= 0) print 0; else printf "%.0f", 100 * (1 - di / dt) }'
}

# ---------------------------------------------------------------------------------------
# Ports: start from the defaults, skip any that something already listens on

TAKEN=" "
pick_port() {
  local p=$1 limit=$(($1 + 200))
  while port_busy "$p" || [[ $TAKEN == *" $p "* ]]; do
    p=$((p + 1))
    [ "$p" -le "$limit" ] || die "no free port in $1..$limit"
  done
  echo "$p"
}
UPSTREAM_PORT=$(pick_port 18081); TAKEN+="$UPSTREAM_PORT "
NGINX_PORT=$(pick_port 18080); TAKEN+="$NGINX_PORT "
NOLOG_PORT=$(pick_port 18084); TAKEN+="$NOLOG_PORT "
BARE_PORT=$(pick_port 18082); TAKEN+="$BARE_PORT "
VENDORED_PORT=$(pick_port 18085); TAKEN+="$VENDORED_PORT "
PC_PORT=$(pick_port 18083); TAKEN+="$PC_PORT "
ADMIN_PORT=$(pick_port 19090); TAKEN+="$ADMIN_PORT "

# ---------------------------------------------------------------------------------------
# Process bookkeeping: everything started here dies on exit

TMP=$(mktemp -d /tmp/portcullis-bench.XXXXXX)
chmod 755 "$TMP" # nginx workers may run as nobody
PIDS=()

# Each server runs in its own process group (setsid): signalling the group reaches nginx's
# workers too. lib_cleanup (lib.sh) does it, keeps $TMP with KEEP_TMP=1.
LIB_KILL_GROUPS=1
lib_traps

# start_bg LOGFILE CPU CMD...: run CMD pinned to CPU in its own session; prints its pid.
# (A background child of a script is not a group leader, so setsid does not fork and the
# pid we get is the server's, and also its process group id.)
start_bg() {
  local log=$1 cpu=$2
  shift 2
  setsid taskset -c "$cpu" "$@" >"$log" 2>&1 </dev/null &
  local pid=$!
  PIDS+=("$pid")
  LAST_PID=$pid
}

# http_code URL [curl args...]: the status code, 000 when nothing answers
http_code() {
  local url=$1
  shift
  curl -s -o /dev/null -m 2 -w '%{http_code}' "$@" "$url" 2>/dev/null || true
}

# wait_200 PID URL SECONDS: 0 once URL answers 200 with the bench key, 1 on timeout or death
wait_200() {
  local pid=$1 url=$2 secs=$3 code i
  for i in $(seq 1 $((secs * 10))); do
    running "$pid" || { LAST_CODE="process exited"; return 1; }
    code=$(http_code "$url" -H "x-api-key: $API_KEY")
    LAST_CODE=$code
    [ "$code" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------------------------------
# Results file

mkdir -p "$ROOT/load-tests/results"
STAMP=$(date +%Y%m%d-%H%M%S)
case $MODE in
  latency) RESULTS=$ROOT/load-tests/results/bench-latency-$STAMP.txt ;;
  flat) RESULTS=$ROOT/load-tests/results/bench-flat-$STAMP.txt ;;
  *) RESULTS=$ROOT/load-tests/results/bench-$STAMP.txt ;;
esac
: >"$RESULTS"
say() { printf '%s\n' "$*" | tee -a "$RESULTS"; }
raw() { printf '%s\n' "$*" >>"$RESULTS"; }

say "# Portcullis side-by-side benchmark ($MODE)"
say "date:      $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
say "host:      $(uname -srm), nproc $(nproc), $(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo 'cpu unknown')"
say "nginx:     $("$NGINX" -v 2>&1 | head -n1)"
say "wrk:       $( (wrk -v 2>&1 || true) | head -n1)"
if [ -x "$RELEASE/portcullis" ]; then
  say "portcullis: $("$RELEASE/portcullis" --version 2>/dev/null || echo '?') (git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '-dirty'))"
fi
say "layout:    upstream nginx + load generator on cpu $LOAD_CPU; proxies on cpu $PROXY_CPU, 1 worker each"
if [ "$JWT_MIX" = 1 ]; then
  say "load:      wrk -t1 -c$CONNECTIONS --latency, GET $REQ_PATH with x-api-key and GET /bench-jwt/ping with a bearer JWT, alternating; warm-up $WARMUP per proxy; $ROUNDS round(s) x $DURATION"
else
  say "load:      wrk -t1 -c$CONNECTIONS --latency, GET $REQ_PATH with x-api-key; warm-up $WARMUP per proxy; $ROUNDS round(s) x $DURATION"
fi
say "ports:     upstream $UPSTREAM_PORT, nginx $NGINX_PORT, nginx-nolog $NOLOG_PORT, bare-pingora $BARE_PORT, bare-vendored $VENDORED_PORT, portcullis $PC_PORT (admin $ADMIN_PORT)"
say "results:   $RESULTS"
say ""

# ---------------------------------------------------------------------------------------
# Servers

declare -A URL PID STATUS ADMIN WENV
RUNNING=()

# The JWT of the mixed load: HS256 with the bench secret, valid for a day, no scope needed.
BENCH_JWT=$(python3 - "$PORTCULLIS_DEMO_JWT_SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
now = int(time.time())
body = b64(json.dumps({"iss": "https://demo.portcullis.local/", "aud": "api", "sub": "bench",
                       "iat": now, "exp": now + 86400}).encode())
sig = hmac.new(sys.argv[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{b64(sig)}")
PY
) || die "python3 is needed to mint the bench JWT"

fill() { # fill TEMPLATE OUT [NAME PORT LOG]: replace the @...@ placeholders
  local name=${3:-nginx-proxy} port=${4:-$NGINX_PORT} access_log=${5:-off}
  sed -e "s|@DIR@|$TMP|g" -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" -e "s|@PORT@|$port|g" \
    -e "s|@NAME@|$name|g" -e "s|@ACCESS_LOG@|$access_log|g" "$1" >"$2"
}

pingora_conf() { # pingora_conf NAME: a 1-thread Pingora server conf in the temp dir
  cat >"$TMP/$1.pingora.yaml" <<EOF
---
version: 1
threads: 1
work_stealing: $WORK_STEALING
daemon: false
pid_file: $TMP/$1.pid
upgrade_sock: $TMP/$1.upgrade.sock
grace_period_seconds: 0
graceful_shutdown_timeout_seconds: 1
upstream_keepalive_pool_size: 128
EOF
  echo "$TMP/$1.pingora.yaml"
}

fail_proxy() { # fail_proxy NAME REASON [LOG]
  STATUS[$1]="FAILED: $2"
  say "  $1: FAILED: $2"
  if [ -n "${3:-}" ] && [ -s "$3" ]; then
    tail -n 15 "$3" | sed 's/^/    | /' | tee -a "$RESULTS"
  fi
  if [ -n "${PID[$1]:-}" ]; then
    kill -INT -- "-${PID[$1]}" 2>/dev/null || true
  fi
}

start_upstream() {
  fill "$BENCH_DIR/nginx-upstream.conf.tmpl" "$TMP/nginx-upstream.conf"
  start_bg "$TMP/nginx-upstream.out" "$LOAD_CPU" \
    "$NGINX" -p "$TMP" -e "$TMP/nginx-upstream.error.log" -c "$TMP/nginx-upstream.conf"
  URL[direct]="http://127.0.0.1:$UPSTREAM_PORT$REQ_PATH"
  if ! wait_200 "$LAST_PID" "${URL[direct]}" 10; then
    cat "$TMP/nginx-upstream.out" "$TMP/nginx-upstream.error.log" 2>/dev/null | tail -n 20 >&2 || true
    die "the nginx upstream did not start on 127.0.0.1:$UPSTREAM_PORT ($LAST_CODE)"
  fi
  say "  upstream: nginx on 127.0.0.1:$UPSTREAM_PORT (cpu $LOAD_CPU)"
}

# start_nginx_proxy NAME PORT LOG: nginx (the reference) with LOG as its access_log
start_nginx_proxy() {
  local name=$1 port=$2 log=$3 conf="$TMP/$1.conf"
  fill "$BENCH_DIR/nginx-proxy.conf.tmpl" "$conf" "$name" "$port" "$log"
  start_bg "$TMP/$name.out" "$PROXY_CPU" "$NGINX" -p "$TMP" -e "$TMP/$name.error.log" -c "$conf"
  PID[$name]=$LAST_PID
  URL[$name]="http://127.0.0.1:$port$REQ_PATH"
  if wait_200 "${PID[$name]}" "${URL[$name]}" 10; then
    RUNNING+=("$name")
    say "  $name: proxy_pass + keepalive, access_log $log, on 127.0.0.1:$port (cpu $PROXY_CPU)"
  else
    cat "$TMP/$name.error.log" >>"$TMP/$name.out" 2>/dev/null || true
    fail_proxy "$name" "did not answer 200 on $port ($LAST_CODE)" "$TMP/$name.out"
  fi
}

# start_bare NAME BINARY PORT WHAT: a bare Pingora passthrough
start_bare() {
  local name=$1 bin=$2 port=$3 what=$4 conf
  if [ ! -x "$bin" ]; then
    fail_proxy "$name" "$bin is missing (BUILD=1 builds it)"
    return 0
  fi
  conf=$(pingora_conf "$name")
  start_bg "$TMP/$name.log" "$PROXY_CPU" "$bin" "127.0.0.1:$port" "127.0.0.1:$UPSTREAM_PORT" "$conf"
  PID[$name]=$LAST_PID
  URL[$name]="http://127.0.0.1:$port$REQ_PATH"
  if wait_200 "${PID[$name]}" "${URL[$name]}" 10; then
    RUNNING+=("$name")
    say "  $name: passthrough, $what, on 127.0.0.1:$port (cpu $PROXY_CPU, threads: 1)"
  else
    fail_proxy "$name" "did not answer 200 on $port ($LAST_CODE)" "$TMP/$name.log"
  fi
}

# add_routes FILE N: append N routes that never match the bench path (a mix of literal,
# param and wildcard patterns, like a real API surface) to the bench config's route list.
add_routes() {
  awk -v n="$2" 'BEGIN {
    for (i = 0; i < n; i++) {
      m = i % 4
      if (m == 0) p = "/api/svc" i "/items/:id"
      else if (m == 1) p = "/api/svc" i "/items/:id/details"
      else if (m == 2) p = "/api/svc" i "/static/**"
      else p = "/api/svc" i "/*/list"
      printf "  - { name: fill-%d, match: { path: \"%s\" }, upstream: bench }\n", i, p
    }
  }' >>"$1"
}

# start_portcullis [NAME]: one Portcullis instance on the proxy core. NAME is portcullis
# (the bench config as it is), routes-10 / routes-10k (8 / 9,998 extra routes: 10 / 10,000
# in all), keys (the rate limit keyed by the x-bench-client header) or idle (as routes-10).
start_portcullis() {
  local name=${1:-portcullis} port admin cfg conf out
  if [ ! -x "$RELEASE/portcullis" ]; then
    fail_proxy "$name" "$RELEASE/portcullis is missing (cargo build --release --bins)"
    return 0
  fi
  if [ "$name" = portcullis ]; then
    port=$PC_PORT admin=$ADMIN_PORT
  else
    port=$(pick_port $((PC_PORT + 10))); TAKEN+="$port "
    admin=$(pick_port $((ADMIN_PORT + 10))); TAKEN+="$admin "
  fi
  cfg=$TMP/$name.yaml
  sed -e "s|127\.0\.0\.1:18083|127.0.0.1:$port|g" \
    -e "s|127\.0\.0\.1:18081|127.0.0.1:$UPSTREAM_PORT|g" \
    -e "s|127\.0\.0\.1:19090|127.0.0.1:$admin|g" \
    -e "s|/tmp/portcullis-bench/access\.log|$TMP/$name.access.log|g" \
    "$BENCH_DIR/portcullis.yaml" >"$cfg"
  case $name in
    routes-10 | idle) add_routes "$cfg" 8 ;;
    routes-10k) add_routes "$cfg" 9998 ;;
    keys) sed -i 's|per_client: { key: client,|per_client: { key: "header:x-bench-client",|' "$cfg" ;;
  esac
  if ! out=$("$RELEASE/portcullis" -t -c "$cfg" 2>&1); then
    printf '%s\n' "$out" >"$TMP/$name-validate.log"
    fail_proxy "$name" "config validation (portcullis -t -c $cfg) failed" "$TMP/$name-validate.log"
    return 0
  fi
  conf=$(pingora_conf "$name")
  start_bg "$TMP/$name.log" "$PROXY_CPU" \
    "$RELEASE/portcullis" -c "$cfg" --server-conf "$conf"
  PID[$name]=$LAST_PID
  URL[$name]="http://127.0.0.1:$port$REQ_PATH"
  ADMIN[$name]=$admin
  if ! wait_200 "${PID[$name]}" "${URL[$name]}" 30; then
    fail_proxy "$name" "did not answer 200 on $port ($LAST_CODE)" "$TMP/$name.log"
    return 0
  fi
  RUNNING+=("$name")
  say "  $name: api-key auth + rate limit + access log + metrics on 127.0.0.1:$port (cpu $PROXY_CPU, threads: 1)"
  check_portcullis_chain "$name"
}

# Make sure the route really runs the chain it claims to: a warning, not a failure.
check_portcullis_chain() {
  local name=$1 url=${URL[$1]} ok=() bad=() code hdrs
  code=$(http_code "$url")
  if [ "$code" = 401 ]; then ok+=("no key -> 401"); else bad+=("no key -> $code (want 401)"); fi
  hdrs=$(curl -s -m 2 -D - -o /dev/null -H "x-api-key: $API_KEY" -H "x-bench-client: check" "$url" 2>/dev/null | tr -d '\r' || true)
  if grep -qi '^x-ratelimit-limit:' <<<"$hdrs"; then ok+=("X-RateLimit-Limit"); else bad+=("no X-RateLimit-Limit"); fi
  if grep -qi '^x-request-id:' <<<"$hdrs"; then ok+=("X-Request-Id"); else bad+=("no X-Request-Id"); fi
  if [ "$JWT_MIX" = 1 ]; then
    code=$(http_code "${url%"$REQ_PATH"}/bench-jwt/ping" -H "Authorization: Bearer $BENCH_JWT")
    if [ "$code" = 200 ]; then ok+=("JWT route 200"); else bad+=("JWT route -> $code"); fi
  fi
  code=$(http_code "http://127.0.0.1:${ADMIN[$name]}/metrics")
  if [ "$code" = 200 ]; then ok+=("/metrics 200"); else bad+=("/metrics -> $code"); fi
  if [ -s "$TMP/$name.access.log" ]; then ok+=("access log written"); else bad+=("access log empty"); fi
  say "    chain check: ok: ${ok[*]:-none}"
  if [ ${#bad[@]} -gt 0 ]; then
    say "    chain check: NOT OK: ${bad[*]} (the portcullis numbers may not include the full chain)"
  fi
}

# ---------------------------------------------------------------------------------------
# Load generators

# run_wrk NAME DURATION LABEL: one wrk run; sets R_RPS R_P99 (ms) R_ERR R_CPU_PROXY R_CPU_LOAD
# (whole-core busy %) and R_OWN (the proxy's own CPU %, from its process group).
run_wrk() {
  local name=$1 dur=$2 label=$3 secs out a0 a1 b0 b1 line t0 t1 p0=0 p1=0
  secs=$(dur_secs "$dur")
  a0=$(cpu_times "$PROXY_CPU"); b0=$(cpu_times "$LOAD_CPU")
  [ -n "${PID[$name]:-}" ] && p0=$(pgrp_ticks "${PID[$name]}")
  t0=$(now_ms)
  out=$(env ${WENV[$name]:-} timeout $((secs + 30)) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$dur" --latency \
    -s "$BENCH_DIR/wrk-report.lua" -H "x-api-key: $API_KEY" "${URL[$name]}" 2>&1) || true
  t1=$(now_ms)
  [ -n "${PID[$name]:-}" ] && p1=$(pgrp_ticks "${PID[$name]}")
  a1=$(cpu_times "$PROXY_CPU"); b1=$(cpu_times "$LOAD_CPU")
  R_CPU_PROXY=$(cpu_busy "$a0" "$a1")
  R_CPU_LOAD=$(cpu_busy "$b0" "$b1")
  R_OWN=$(awk -v d=$((p1 - p0)) -v hz="$CLK_TCK" -v ms=$((t1 - t0)) 'BEGIN { if (ms <= 0) print 0; else printf "%.0f", 100 * d / hz / (ms / 1000) }')
  raw "=== $label: $name (${URL[$name]}) cpu$PROXY_CPU busy ${R_CPU_PROXY}% cpu$LOAD_CPU busy ${R_CPU_LOAD}% proxy process ${R_OWN}%"
  raw "$out"
  line=$(grep '^BENCH_RESULT' <<<"$out" | tail -n1 || true)
  if [ -z "$line" ]; then
    R_RPS=0; R_P99=nan; R_ERR=all
    warn "$label $name: wrk produced no result (see $RESULTS)"
    return 0
  fi
  R_RPS=$(sed -n 's/.* rps=\([0-9.]*\).*/\1/p' <<<"$line")
  R_P99=$(sed -n 's/.* p99_us=\([0-9]*\).*/\1/p' <<<"$line" | awk '{ printf "%.3f", $1 / 1000 }')
  R_ERR=$(awk '{ s = 0; for (i = 1; i <= NF; i++) if ($i ~ /^(non2xx|connect_err|read_err|write_err|timeouts)=/) { split($i, kv, "="); s += kv[2] } print s }' <<<"$line")
}

# ---------------------------------------------------------------------------------------
# Start everything

say "## servers"
start_upstream
if [ "$MODE" = flat ]; then
  start_portcullis routes-10
  start_portcullis routes-10k
  start_portcullis keys
  RUNNING=()
  for p in routes-10 routes-10k; do [ -n "${URL[$p]:-}" ] && ! [[ ${STATUS[$p]:-} == FAILED* ]] && RUNNING+=("$p"); done
  if [ -n "${URL[keys]:-}" ] && ! [[ ${STATUS[keys]:-} == FAILED* ]]; then
    # One instance, two loads: the header takes 1 value or cycles over a million.
    for p in keys-1 keys-1m; do URL[$p]=${URL[keys]}; PID[$p]=${PID[keys]}; RUNNING+=("$p"); done
    WENV[keys-1]="BENCH_KEYS=1"
    WENV[keys-1m]="BENCH_KEYS=1000000"
  fi
else
  for p in $PROXIES; do
    case $p in
      nginx)
        log=off
        [ "$NGINX_ACCESS_LOG" = 1 ] && log="$TMP/nginx-access.log"
        start_nginx_proxy nginx "$NGINX_PORT" "$log"
        ;;
      nginx-nolog) start_nginx_proxy nginx-nolog "$NOLOG_PORT" off ;;
      bare-pingora) start_bare bare-pingora "$STOCK_BIN" "$BARE_PORT" "unpatched crates.io Pingora 0.9.1" ;;
      bare-vendored) start_bare bare-vendored "$RELEASE/bare-pingora" "$VENDORED_PORT" "Pingora with vendor/ patches" ;;
      portcullis) start_portcullis ;;
      *) warn "unknown proxy '$p' in PROXIES (nginx nginx-nolog bare-pingora bare-vendored portcullis)" ;;
    esac
  done
  if [ "$JWT_MIX" = 1 ]; then
    for p in direct $PROXIES; do WENV[$p]="BENCH_JWT=$BENCH_JWT"; done
  fi
fi
say ""
[ ${#RUNNING[@]} -gt 0 ] || die "no proxy started; nothing to measure"

# ---------------------------------------------------------------------------------------
# Throughput mode

throughput() {
  local n=${#RUNNING[@]} est p r
  est=$(( n * WARM_S + (DIRECT == 1 ? DUR_S : 0) + ROUNDS * n * DUR_S ))
  say "## runs (about ${est}s)"
  for p in "${RUNNING[@]}"; do
    run_wrk "$p" "$WARMUP" "warm-up"
    say "  warm-up $p: $(printf '%.0f' "$R_RPS") rps"
  done
  if [ "$DIRECT" = 1 ]; then
    run_wrk direct "$DURATION" "direct"
    DIRECT_RPS=$R_RPS
    say "  direct (no proxy, sanity): $(printf '%.0f' "$R_RPS") rps, p99 ${R_P99}ms - must be well above every proxy"
  fi
  declare -gA RPS P99 ERR CPUP CPUL OWN EFF
  for r in $(seq 1 "$ROUNDS"); do
    for p in "${RUNNING[@]}"; do
      run_wrk "$p" "$DURATION" "round $r/$ROUNDS"
      RPS[$p]+=" $R_RPS"; P99[$p]+=" $R_P99"; ERR[$p]+=" $R_ERR"
      CPUP[$p]+=" $R_CPU_PROXY"; CPUL[$p]+=" $R_CPU_LOAD"; OWN[$p]+=" $R_OWN"
      EFF[$p]+=" $(awk -v r="$R_RPS" -v o="$R_OWN" 'BEGIN { if (o > 0) printf "%.0f", r * 100 / o; else print 0 }')"
      say "  round $r/$ROUNDS $(printf '%-13s' "$p") $(printf '%9.0f' "$R_RPS") rps  p99 $(printf '%8s' "$R_P99")ms  errors $R_ERR  proxy ${R_OWN}% of a core  cpu$PROXY_CPU ${R_CPU_PROXY}% cpu$LOAD_CPU ${R_CPU_LOAD}%"
    done
  done
  say ""

  local nginx_rps="" nginx_eff="" bare_rps="" med_rps med_p99 errs ratio bratio cpup cpul own eff eratio
  [ -n "${RPS[nginx]:-}" ] && nginx_rps=$(median ${RPS[nginx]}) && nginx_eff=$(median ${EFF[nginx]})
  [ -n "${RPS[bare-pingora]:-}" ] && bare_rps=$(median ${RPS[bare-pingora]})
  say "## summary: median of $ROUNDS round(s), $DURATION each, wrk -t1 -c$CONNECTIONS"
  say "$(printf '%-14s %10s %9s %9s %8s %7s %8s %11s %9s %6s %6s' proxy rps p99_ms vs_nginx vs_bare errors proxy% "req/cpu-s" eff_ratio "cpu$PROXY_CPU%" "cpu$LOAD_CPU%")"
  for p in $PROXIES; do
    if [ -n "${RPS[$p]:-}" ]; then
      med_rps=$(median ${RPS[$p]})
      med_p99=$(median ${P99[$p]})
      errs=$(printf '%s\n' ${ERR[$p]} | awk '{ s += $1 } END { print s + 0 }')
      cpup=$(median ${CPUP[$p]}); cpul=$(median ${CPUL[$p]})
      own=$(median ${OWN[$p]}); eff=$(median ${EFF[$p]})
      ratio=n/a; eratio=n/a; bratio=n/a
      if [ -n "$nginx_rps" ] && awk -v n="$nginx_rps" 'BEGIN { exit !(n > 0) }'; then
        ratio=$(awk -v a="$med_rps" -v n="$nginx_rps" 'BEGIN { printf "%.3f", a / n }')
      fi
      if [ -n "$bare_rps" ] && awk -v n="$bare_rps" 'BEGIN { exit !(n > 0) }'; then
        bratio=$(awk -v a="$med_rps" -v n="$bare_rps" 'BEGIN { printf "%.3f", a / n }')
      fi
      if [ -n "$nginx_eff" ] && awk -v n="$nginx_eff" 'BEGIN { exit !(n > 0) }'; then
        eratio=$(awk -v a="$eff" -v n="$nginx_eff" 'BEGIN { printf "%.3f", a / n }')
      fi
      say "$(printf '%-14s %10.0f %9.3f %9s %8s %7s %8.0f %11.0f %9s %6.0f %6.0f' "$p" "$med_rps" "$med_p99" "$ratio" "$bratio" "$errs" "$own" "$eff" "$eratio" "$cpup" "$cpul")"
      if [ "$errs" != 0 ]; then
        say "  ^ $p had $errs non-2xx/socket errors: its rps counts answers that were not 200"
      fi
      if awk -v c="$own" 'BEGIN { exit !(c < 95) }'; then
        say "  ^ $p used ${own}% of its core (<95%): the load side (or a noisy neighbour on cpu$PROXY_CPU), not the proxy, may be the ceiling; compare req/cpu-s"
      fi
    else
      say "$(printf '%-14s %s' "$p" "${STATUS[$p]:-not run}")"
    fi
  done
  if [ -n "${DIRECT_RPS:-}" ]; then
    say "$(printf '%-14s %10.0f' "(direct)" "$DIRECT_RPS")  upstream without a proxy"
  fi
  say ""
  say "  rps, p99_ms: medians; vs_nginx: rps / nginx rps (nginx: with an access log when"
  say "  NGINX_ACCESS_LOG=1); vs_bare: rps / bare-pingora rps (unpatched Pingora); errors: non-2xx + socket errors, all rounds;"
  say "  proxy%: CPU the proxy's own processes used (100 = one core); req/cpu-s: rps per core-second"
  say "  of proxy CPU (robust when the proxy core is shared); eff_ratio: req/cpu-s / nginx's;"
  say "  cpuN%: whole-core busy (includes anything else running there)"
}

# ---------------------------------------------------------------------------------------
# Latency mode: open loop at a fixed rate, same rate for every proxy

ensure_rate_tool() {
  # RATE_TOOL=hey: Debian's hey, `-c N -q R/N` (a per-worker rate: each worker waits for its
  # answer before the next request, so a slow answer delays the next send instead of queueing)
  # RATE_TOOL=oha (`cargo install oha`): `-q R` over -c connections, with
  # --latency-correction (a late send is timed from when it was due)
  case "${RATE_TOOL:-}" in
    hey | oha) command -v "$RATE_TOOL" >/dev/null 2>&1 || die "RATE_TOOL=$RATE_TOOL: $RATE_TOOL is not installed"; return ;;
    "") ;;
    *) die "RATE_TOOL must be hey or oha (or unset for wrk2/k6), got '$RATE_TOOL'" ;;
  esac
  if command -v wrk2 >/dev/null 2>&1; then RATE_TOOL=wrk2; return; fi
  if apt-cache policy wrk2 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk2 && { RATE_TOOL=wrk2; return; }
  fi
  ensure_k6
  RATE_TOOL=k6
}

# run_rate NAME RATE LABEL: sets L_LINE (the generator's result line)
run_rate() {
  local name=$1 rate=$2 label=$3 out
  if [ "$RATE_TOOL" = wrk2 ]; then
    out=$(env ${WENV[$name]:-} timeout $((DUR_S + 30)) taskset -c "$LOAD_CPU" wrk2 -t1 -c"$CONNECTIONS" -d"$DURATION" -R"$rate" \
      --latency -s "$BENCH_DIR/wrk-report.lua" -H "x-api-key: $API_KEY" "${URL[$name]}" 2>&1) || true
    L_LINE=$(grep '^BENCH_RESULT' <<<"$out" | tail -n1 | awk -v r="$rate" '{
      for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      printf "BENCH_LATENCY rate_target=%d rate_achieved=%.1f requests=%d dropped=n/a failed=%d p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f",
        r, v["rps"], v["requests"], v["non2xx"] + v["connect_err"] + v["read_err"] + v["write_err"] + v["timeouts"],
        v["p50_us"] / 1000, v["p90_us"] / 1000, v["p99_us"] / 1000, v["p999_us"] / 1000, v["max_us"] / 1000 }' || true)
  elif [ "$RATE_TOOL" = oha ]; then
    out=$(timeout $((DUR_S + 30)) taskset -c "$LOAD_CPU" oha -z "$DURATION" -c "$CONNECTIONS" -q "$rate" \
      --latency-correction --no-tui --output-format json -H "x-api-key: $API_KEY" "${URL[$name]}" 2>&1) || true
    L_LINE=$(python3 -c '
import json, sys
d = json.loads(sys.stdin.read()); s = d["summary"]; p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {}); ok = int(codes.get("200", 0))
bad = sum(int(v) for k, v in codes.items() if k != "200") + sum(int(v) for v in d.get("errorDistribution", {}).values())
ms = lambda k: (p.get(k) or 0) * 1000
print("BENCH_LATENCY rate_target=%s rate_achieved=%.1f requests=%d dropped=n/a failed=%d p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f" % (
    sys.argv[1], s["requestsPerSec"], ok + bad, bad, ms("p50"), ms("p90"), ms("p99"), ms("p99.9"), (s.get("slowest") or 0) * 1000))
' "$rate" <<<"$out" 2>/dev/null || true)
  elif [ "$RATE_TOOL" = hey ]; then
    local q
    q=$(awk -v r="$rate" -v c="$CONNECTIONS" 'BEGIN { printf "%.3f", r / c }')
    out=$(timeout $((DUR_S + 30)) taskset -c "$LOAD_CPU" hey -z "$DURATION" -c "$CONNECTIONS" -q "$q" \
      -H "x-api-key: $API_KEY" "${URL[$name]}" 2>&1) || true
    L_LINE=$(awk -v r="$rate" '
      /Requests\/sec:/ { rps = $2 }
      /^  (50|90|99)% in/ { gsub("%", "", $1); p[$1] = $3 * 1000 }
      /^  \[200\]/ { ok = $2 }
      /^  \[[0-9]+\]/ && !/^  \[200\]/ { bad += $2 }
      END { printf "BENCH_LATENCY rate_target=%d rate_achieved=%.1f requests=%d dropped=n/a failed=%d p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f p999_ms=n/a max_ms=n/a",
        r, rps, ok + bad, bad, p[50], p[90], p[99] }' <<<"$out" || true)
  else
    out=$(K6_NO_USAGE_REPORT=true timeout $((DUR_S + 60)) taskset -c "$LOAD_CPU" k6 run --quiet \
      --address "" -e URL="${URL[$name]}" -e RATE="$rate" -e DURATION="$DURATION" \
      -e API_KEY="$API_KEY" -e VUS="$CONNECTIONS" -e MAX_VUS=$((CONNECTIONS * 4)) \
      -e JWT="$([ "$JWT_MIX" = 1 ] && echo "$BENCH_JWT")" -e JWT_URL="${URL[$name]%"$REQ_PATH"}/bench-jwt/ping" \
      "$BENCH_DIR/latency.js" 2>&1) || true
    L_LINE=$(grep -o 'BENCH_LATENCY.*' <<<"$out" | tail -n1 || true)
  fi
  raw "=== $label: $name at $rate rps (${URL[$name]}) with $RATE_TOOL"
  raw "$out"
}

latency() {
  [ -n "${PID[nginx]:-}" ] && [[ " ${RUNNING[*]} " == *" nginx "* ]] || [ -n "$RATE" ] ||
    die "latency mode needs the nginx reference running (or RATE=...)"
  ensure_rate_tool
  local rate p r v
  for p in "${RUNNING[@]}"; do
    run_wrk "$p" "$WARMUP" "warm-up"
    say "  warm-up $p: $(printf '%.0f' "$R_RPS") rps"
  done
  if [ -n "$RATE" ]; then
    rate=$RATE
    say "  offered rate: $rate rps (RATE)"
  else
    run_wrk nginx "$DURATION" "nginx max"
    rate=$(awk -v r="$R_RPS" -v p="$LOAD_PCT" 'BEGIN { printf "%d", r * p / 100 }')
    say "  nginx max: $(printf '%.0f' "$R_RPS") rps (wrk -c$CONNECTIONS); offered rate = ${LOAD_PCT}% = $rate rps"
  fi
  [ "$rate" -gt 0 ] || die "offered rate is 0"
  say "  generator: $RATE_TOOL, constant arrival rate, $DURATION per run, $ROUNDS round(s)"
  declare -gA LP99 LP50 LACH LDROP LFAIL
  for r in $(seq 1 "$ROUNDS"); do
    for p in "${RUNNING[@]}"; do
      run_rate "$p" "$rate" "round $r/$ROUNDS"
      if [ -z "$L_LINE" ]; then
        say "  round $r/$ROUNDS $p: the generator produced no result (see $RESULTS)"
        continue
      fi
      v() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$L_LINE"; }
      LP99[$p]+=" $(v p99_ms)"; LP50[$p]+=" $(v p50_ms)"; LACH[$p]+=" $(v rate_achieved)"
      LDROP[$p]+=" $(v dropped)"; LFAIL[$p]+=" $(v failed_rate)$(v failed)"
      say "  round $r/$ROUNDS $(printf '%-13s' "$p") achieved $(v rate_achieved) rps  p50 $(v p50_ms)ms  p99 $(v p99_ms)ms  p99.9 $(v p999_ms)ms  dropped $(v dropped)  failed $(v failed_rate)$(v failed)"
    done
  done
  say ""
  say "## summary: p99 at a constant $rate rps (median of $ROUNDS round(s), $DURATION each, $RATE_TOOL)"
  say "$(printf '%-14s %10s %10s %10s %10s %10s  %s' proxy achieved p50_ms p99_ms dropped failed valid)"
  local bound=0 ach valid held=0
  # The run only measures a proxy if the generator really offered the rate to it (97 %).
  offered() { [ -n "${LP99[$1]:-}" ] && awk -v a="$(median ${LACH[$1]})" -v r="$rate" 'BEGIN { exit !(a >= 0.97 * r) }'; }
  # If the generator held the rate for one proxy, a shortfall elsewhere is that proxy's own.
  for p in $PROXIES; do offered "$p" && held=1; done
  for p in $PROXIES; do
    if [ -n "${LP99[$p]:-}" ]; then
      ach=$(median ${LACH[$p]})
      if offered "$p"; then
        valid=yes
      elif [ "$held" = 1 ]; then
        valid=PROXY-SATURATED
      else
        valid=GENERATOR-BOUND
        bound=1
      fi
      say "$(printf '%-14s %10s %10s %10s %10s %10s  %s' "$p" "$ach" "$(median ${LP50[$p]})" \
        "$(median ${LP99[$p]})" "$(median ${LDROP[$p]} 2>/dev/null || echo n/a)" "$(median ${LFAIL[$p]})" "$valid")"
    else
      say "$(printf '%-14s %s' "$p" "${STATUS[$p]:-no result}")"
    fi
  done
  if [ "$bound" = 1 ]; then
    say "  GENERATOR-BOUND: $RATE_TOOL, sharing cpu$LOAD_CPU with the upstream, could not send $rate rps"
    say "  (achieved < 97% of it); its latencies are then its own queueing, not the proxy's."
    say "  Retry with a rate it can hold, e.g. RATE=$(awk -v a="$(median ${LACH[${RUNNING[0]}]})" 'BEGIN { printf "%d", a * 0.6 }') MODE=latency $0"
  fi
}

# ---------------------------------------------------------------------------------------
# Memory: VmRSS / VmHWM (peak) of a process, in MiB

rss_mib() { awk -v f="$2:" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo nan; }

report_peak_rss() {
  local p seen=" "
  for p in "$@"; do
    [ -n "${PID[$p]:-}" ] || continue
    [[ $seen == *" ${PID[$p]} "* ]] && continue
    seen+="${PID[$p]} "
    say "  $p: peak RSS (VmHWM) $(rss_mib "${PID[$p]}" VmHWM) MiB, now $(rss_mib "${PID[$p]}" VmRSS) MiB (target: peak < 1024 MiB)"
  done
}

# ---------------------------------------------------------------------------------------
# Flat mode: the cost of many routes and many rate-limit keys, and memory

flat_ratio() { # flat_ratio A B: median RPS of B / median RPS of A
  awk -v a="$(median ${RPS[$1]})" -v b="$(median ${RPS[$2]})" 'BEGIN { if (a > 0) printf "%.3f", b / a; else print "nan" }'
}

flat() {
  local p r ratio verdict rss0 rss1 line pair port
  say "## runs"
  for p in "${RUNNING[@]}"; do
    run_wrk "$p" "$WARMUP" "warm-up"
    say "  warm-up $p: $(printf '%.0f' "$R_RPS") rps"
  done
  declare -gA RPS P99 ERR OWN
  for r in $(seq 1 "$ROUNDS"); do
    for p in "${RUNNING[@]}"; do
      run_wrk "$p" "$DURATION" "round $r/$ROUNDS"
      RPS[$p]+=" $R_RPS"; P99[$p]+=" $R_P99"; ERR[$p]+=" $R_ERR"; OWN[$p]+=" $R_OWN"
      say "  round $r/$ROUNDS $(printf '%-11s' "$p") $(printf '%9.0f' "$R_RPS") rps  p99 $(printf '%8s' "$R_P99")ms  errors $R_ERR  proxy ${R_OWN}% of a core"
    done
  done
  say ""
  say "## summary: median of $ROUNDS round(s), $DURATION each, wrk -t1 -c$CONNECTIONS"
  say "$(printf '%-11s %10s %9s %7s %8s' load rps p99_ms errors proxy%)"
  for p in "${RUNNING[@]}"; do
    say "$(printf '%-11s %10.0f %9.3f %7s %8.0f' "$p" "$(median ${RPS[$p]})" "$(median ${P99[$p]})" \
      "$(printf '%s\n' ${ERR[$p]} | awk '{ s += $1 } END { print s + 0 }')" "$(median ${OWN[$p]})")"
  done
  for pair in "routes-10 routes-10k" "keys-1 keys-1m"; do
    set -- $pair
    if [ -n "${RPS[$1]:-}" ] && [ -n "${RPS[$2]:-}" ]; then
      ratio=$(flat_ratio "$1" "$2")
      verdict=$(awk -v r="$ratio" 'BEGIN { print (r >= 0.95) ? "meets >= 0.95" : "MISSES >= 0.95" }')
      say "  $2 / $1: $ratio ($verdict)"
    fi
  done
  say ""
  say "## memory"
  report_peak_rss routes-10 routes-10k keys
  start_portcullis idle
  if [ -z "${PID[idle]:-}" ] || [[ ${STATUS[idle]:-} == FAILED* ]]; then
    say "  idle connections: not measured (the instance did not start)"
    return 0
  fi
  rss0=$(rss_mib "${PID[idle]}" VmRSS)
  port=${URL[idle]#http://127.0.0.1:}
  port=${port%%/*}
  coproc IDLE { taskset -c "$LOAD_CPU" python3 "$BENCH_DIR/idle-conns.py" 127.0.0.1 \
    "$port" "$REQ_PATH" "$API_KEY" "$IDLE_CONNS" 120 2>&1; }
  line=""
  read -r -t 150 -u "${IDLE[0]}" line || true
  sleep 1
  rss1=$(rss_mib "${PID[idle]}" VmRSS)
  say "  idle connections: ${line:-no answer from idle-conns.py}"
  say "  idle: RSS ${rss0} MiB after start -> ${rss1} MiB holding them"
  say "$(awk -v a="$rss0" -v b="$rss1" -v n="$IDLE_CONNS" 'BEGIN { if (n > 0) { k = (b - a) * 1024 / n; printf "  idle: %.1f KiB per idle connection (target <= 10 KiB: %s)", k, (k <= 10) ? "met" : "MISSED" } }')"
  if [ -n "${IDLE[1]:-}" ]; then
    local wfd=${IDLE[1]}
    exec {wfd}>&- # idle-conns.py lets go once its stdin closes
  fi
  wait "${IDLE_PID:-}" 2>/dev/null || true
}

case $MODE in
  latency) latency ;;
  flat) flat ;;
  *)
    throughput
    say ""
    say "## memory"
    report_peak_rss bare-pingora bare-vendored portcullis
    ;;
esac
say ""
say "raw results: $RESULTS"
