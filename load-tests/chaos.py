#!/usr/bin/env python3
"""Chaos run for Portcullis (issue 18 item 3). Python 3.11, stdlib only.

Started by load-tests/chaos.sh (`make chaos`); see load-tests/README.md for the targets and
the report. Everything listens on 127.0.0.1 ephemeral ports, the run is bounded
(CHAOS_SECONDS, plus a hard watchdog), and every process it starts is stopped on exit,
also on Ctrl-C, SIGTERM or an exception.
"""
import hashlib
import http.client
import json
import os
import random
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

ADMIN_TOKEN = "chaos-admin-token"
API_KEY = "chaos-key-0123456789abcdefghijklmnopqrstuvwxyzABCD"
GRACE = 2  # grace_period_seconds of the server conf
DRAIN = 3  # graceful_shutdown_timeout_seconds


def env_int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


def parse_duration(s):
    s = s.strip()
    m = re.fullmatch(r"(\d+)\s*(s|m|h)?", s)
    if not m:
        raise SystemExit(f"chaos: cannot read duration {s!r} (use 60, 90s, 10m)")
    n = int(m.group(1))
    return n * {"s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]


SOAK = parse_duration(os.environ["SOAK"]) if os.environ.get("SOAK", "").strip() else 0
SECONDS = SOAK or parse_duration(os.environ.get("CHAOS_SECONDS", "180") or "180")
RATE = env_int("RATE", 80)  # main-traffic requests per second (all workers together)
WORKERS = env_int("WORKERS", 12)
SLOW_CLIENTS = env_int("SLOW_CLIENTS", 50)
FLOOD_CONNS = env_int("FLOOD_CONNS", 1000)
STALL_MS = env_int("STALL_MS", 2000)  # a main request slower than this during slow/flood = stall
CLIENT_TIMEOUT = env_int("CLIENT_TIMEOUT", 15)
BACKEND_KEEPALIVE = os.environ.get("BACKEND_KEEPALIVE", "2")
PER_IP_CAP = env_int("PER_IP_CAP", 64)
SHUTDOWN_PROBE = os.environ.get("SHUTDOWN_PROBE", "1") != "0"
KEEP_TMP = os.environ.get("KEEP_TMP", "0") == "1"
BIN = os.path.abspath(os.environ["PORTCULLIS_BIN"]) if os.environ.get("PORTCULLIS_BIN") else ""

if SECONDS < 60:
    raise SystemExit("chaos: CHAOS_SECONDS must be at least 60")

# ---------------------------------------------------------------- phases
# Durations for a 60 s run; longer runs scale every phase. A soak has no faults.
BASE_PHASES = [
    ("warmup", 5), ("backend_kill", 6), ("backend_freeze", 13), ("redis_kill", 7),
    ("slow_clients", 4), ("flood", 4), ("reloads", 6), ("upgrades", 12), ("cooldown", 3),
]
# slow clients come before the upgrades on purpose: after SIGQUIT the old process keeps
# accepting for Pingora's 5 s handover window and drops, when it exits, every connection whose
# request head it has not read yet, which would cut slow clients for another reason.
if SOAK:
    warm = max(60, SECONDS // 10)
    PHASES = [("warmup", warm), ("steady", SECONDS - warm)]
else:
    scale = SECONDS / 60.0
    PHASES = [(n, d * scale) for n, d in BASE_PHASES]

T0 = None  # monotonic start of traffic
phase_starts = {}  # name -> (start, end) relative seconds
acc = 0.0
for n, d in PHASES:
    phase_starts[n] = (acc, acc + d)
    acc += d


def now():
    return time.monotonic() - T0 if T0 is not None else 0.0


def phase_at(t):
    for n, (a, b) in phase_starts.items():
        if a <= t < b:
            return n
    return PHASES[-1][0] if t >= 0 else PHASES[0][0]


events = []  # (t, what, detail)
ev_lock = threading.Lock()


def event(what, detail=""):
    t = now()
    with ev_lock:
        events.append((t, what, detail))
    print(f"chaos: t={t:6.1f}s [{phase_at(t)}] {what} {detail}".rstrip(), flush=True)


# ---------------------------------------------------------------- processes
procs = []  # every Popen we started
procs_lock = threading.Lock()
TMP = tempfile.mkdtemp(prefix="portcullis-chaos.")


def spawn(args, log_name, **kw):
    log = open(os.path.join(TMP, log_name), "ab")
    p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, **kw)
    log.close()
    with procs_lock:
        procs.append(p)
    return p


def alive(p):
    return p is not None and p.poll() is None


def cleanup():
    with procs_lock:
        ps = list(procs)
    for p in ps:
        if alive(p):
            try:
                p.send_signal(signal.SIGCONT)  # a frozen process cannot die gracefully
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 3
    for p in ps:
        while alive(p) and time.monotonic() < deadline:
            time.sleep(0.05)
    for p in ps:
        if alive(p):
            try:
                p.kill()
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(pred, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return True
        except Exception:
            pass
        time.sleep(step)
    return False


def http_get(port, path, headers=None, timeout=2.0, host="127.0.0.1"):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        c.close()


def sha(s):
    return hashlib.sha256(s.encode()).hexdigest()


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# ---------------------------------------------------------------- the system under test
PORT, ADMIN = free_port(), free_port()
REDIS = free_port()
BACKENDS = {"A": free_port(), "B": free_port()}
backend_procs = {}
redis_proc = None
CONFIG = os.path.join(TMP, "portcullis.yaml")
SERVER_CONF = os.path.join(TMP, "pingora.yaml")
ACCESS_LOG = os.path.join(TMP, "access.log")
SOCK = os.path.join(TMP, "upgrade.sock")
config_version = 0


def render_config(version, broken=None):
    y = f"""
server:
  listen: ["127.0.0.1:{PORT}"]
  admin:
    listen: "127.0.0.1:{ADMIN}"
    token_sha256: "{sha(ADMIN_TOKEN)}"
  limits:
    max_concurrent_per_ip: {PER_IP_CAP}
upstreams:
  pool:
    lb: round_robin
    backends:
      - {{ addr: "127.0.0.1:{BACKENDS['A']}" }}
      - {{ addr: "127.0.0.1:{BACKENDS['B']}" }}
    health_check: {{ type: http, path: /health, interval: 1s, timeout: 500ms,
                    healthy_threshold: 1, unhealthy_threshold: 2 }}
    timeouts: {{ connect: 500ms, read: 3s, total: 10s }}
    retry: {{ attempts: 2, backoff: 10ms, max_backoff: 100ms,
             on: [connect_error, timeout, reset, 502, 503, 504], budget: 0.5, budget_min: 200 }}
auth:
  api_keys:
    header: x-api-key
    keys:
      - {{ id: chaos-client, sha256: "{sha(API_KEY)}" }}
rate_limits:
  policies:
    limited_ip: {{ key: ip, requests: 10, per: 1s }}
  cluster: {{ redis: "redis://127.0.0.1:{REDIS}", sync_interval: 100ms }}
cache: {{ max_size: 16MiB }}
access_log: {{ path: "{ACCESS_LOG}" }}
routes:
  - name: keyed
    match: {{ path: "/keyed/**" }}
    upstream: pool
    auth: {{ any_of: [api_key] }}
  - name: cached
    match: {{ path: "/cached/**", methods: [GET] }}
    upstream: pool
    cache: {{ default_ttl: 2s }}
  - name: limited
    match: {{ path: "/limited/**" }}
    upstream: pool
    rate_limit: [limited_ip]
  - name: public
    match: {{ path: "/**" }}
    upstream: pool
    response_headers: {{ set: {{ x-chaos-config: "v{version}" }} }}
"""
    if broken == "unknown_upstream":
        y = y.replace("upstream: pool\n    response_headers", "upstream: nosuchpool\n    response_headers")
    elif broken == "yaml":
        y += "routes: [ {{ unclosed\n"
    elif broken == "unknown_key":
        y = y.replace("  limits:\n", "  limits:\n    max_header_bytez: 16KiB\n")
    return y


def write_config(version, broken=None):
    tmp = CONFIG + ".tmp"
    with open(tmp, "w") as f:
        f.write(render_config(version, broken))
    os.replace(tmp, CONFIG)


def start_backend(name):
    p = spawn([sys.executable, os.path.join(HERE, "chaos_backend.py"), name, str(BACKENDS[name]),
               TMP, "--keepalive", BACKEND_KEEPALIVE], f"backend-{name}.log")
    backend_procs[name] = p
    if not wait_until(lambda: http_get(BACKENDS[name], "/health")[0] == 200, 10):
        raise RuntimeError(f"backend {name} did not start")
    return p


def start_redis():
    global redis_proc
    exe = shutil.which("redis-server")
    if not exe:
        raise SystemExit("chaos: redis-server is missing (make deps installs it)")
    redis_proc = spawn([exe, "--port", str(REDIS), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no"], "redis.log")

    def ping():
        s = socket.create_connection(("127.0.0.1", REDIS), timeout=1)
        s.sendall(b"PING\r\n")
        ok = s.recv(16).startswith(b"+PONG")
        s.close()
        return ok

    if not wait_until(ping, 10):
        raise RuntimeError("redis-server did not start")


gens = []  # [{"n", "proc", "pid", "started", "quit_at", "exited_at", "rc"}]
gw_lock = threading.Lock()


def current_gw():
    with gw_lock:
        return gens[-1]


def admin_healthz():
    st, _, body = http_get(ADMIN, "/healthz", timeout=2)
    return json.loads(body) if st == 200 else None


def start_gateway(upgrade=False):
    n = len(gens) + 1
    args = [BIN] + (["-u"] if upgrade else []) + ["-c", CONFIG, "--server-conf", SERVER_CONF]
    p = spawn(args, f"gateway-{n}.log", env={**os.environ, "RUST_LOG": "info"})
    g = {"n": n, "proc": p, "pid": p.pid, "started": now(), "quit_at": None, "exited_at": None,
         "rc": None}
    return g


def gateway_log(g):
    try:
        with open(os.path.join(TMP, f"gateway-{g['n']}.log"), errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def watch_exit(g):
    def run():
        g["rc"] = g["proc"].wait()
        g["exited_at"] = now()
        event("gateway exited", f"gen {g['n']} pid {g['pid']} rc {g['rc']}")
    threading.Thread(target=run, daemon=True).start()


# ---------------------------------------------------------------- main traffic
records = []  # dicts, one per main-traffic request
rec_lock = threading.Lock()
stop_traffic = threading.Event()
RUN = uuid.uuid4().hex[:8]
seq = iter(range(1, 10**9))
seq_lock = threading.Lock()

KINDS = [  # (kind, weight)
    ("get_public", 30), ("get_cached", 15), ("get_keyed", 10), ("get_limited", 15),
    ("post_public", 22), ("post_keyed", 8),
]


def next_id():
    with seq_lock:
        return next(seq)


def build_request(kind, n):
    rid = f"chaos-{RUN}-{n}"
    headers = {"x-request-id": rid, "host": "chaos.test"}
    body = None
    if kind == "get_public":
        method, path = "GET", f"/items/{n % 500}"
    elif kind == "get_cached":
        method, path = "GET", f"/cached/items/{n % 20}"
    elif kind == "get_keyed":
        method, path = "GET", f"/keyed/items/{n % 100}"
        headers["x-api-key"] = API_KEY
    elif kind == "get_limited":
        method, path = "GET", f"/limited/items/{n % 50}"
    elif kind == "post_public":
        method, path = "POST", "/orders"
    else:
        method, path = "POST", "/keyed/orders"
        headers["x-api-key"] = API_KEY
    post_id = None
    if method == "POST":
        post_id = f"{RUN}-{n}-{uuid.uuid4().hex[:12]}"
        body = json.dumps({"id": post_id, "item": n % 97, "qty": 1}).encode()
        headers["content-type"] = "application/json"
        headers["content-length"] = str(len(body))
    return method, path, headers, body, rid, post_id


def ok_status(kind, status):
    if kind == "get_limited":
        return status in (200, 429)
    return status == 200


class Client:
    """One keep-alive connection (or a new one per request), like a simple HTTP client.

    An idle keep-alive connection the server closed is a race every HTTP client knows: like
    hyper/reqwest (retry_canceled_requests) and browsers, a GET that failed on a *reused*
    connection before any byte of a response arrived is retried once on a new connection.
    Those are counted (client_retries) but are not failures. POSTs are never retried."""

    def __init__(self, keepalive):
        self.keepalive = keepalive
        self.conn = None
        self.uses = 0

    def _conn(self):
        if self.conn is None or not self.keepalive:
            if self.conn:
                self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=CLIENT_TIMEOUT)
            self.uses = 0
        return self.conn

    def once(self, method, path, headers, body):
        c = self._conn()
        reused = self.uses > 0
        self.uses += 1
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        hdrs = dict((k.lower(), v) for k, v in r.getheaders())
        if r.will_close or not self.keepalive:
            c.close()
            self.conn = None
        return r.status, hdrs, data, reused

    def request(self, method, path, headers, body):
        retried = False
        while True:
            reused = self.conn is not None and self.keepalive and self.uses > 0
            try:
                st, h, d, _ = self.once(method, path, headers, body)
                return st, h, d, None, retried
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                if self.conn:
                    self.conn.close()
                self.conn = None
                if reused and method == "GET" and not retried:
                    retried = True
                    continue
                return None, {}, b"", type(e).__name__, retried
            except socket.timeout:
                if self.conn:
                    self.conn.close()
                self.conn = None
                return None, {}, b"", "timeout", retried
            except (OSError, http.client.HTTPException) as e:
                if self.conn:
                    self.conn.close()
                self.conn = None
                return None, {}, b"", type(e).__name__, retried


def worker(i):
    rng = random.Random(i)
    kinds = [k for k, w in KINDS for _ in range(w)]
    client = Client(keepalive=(i % 3 != 0))  # two in three keep their connection
    interval = WORKERS / RATE
    nxt = time.monotonic() + rng.random() * interval
    while not stop_traffic.is_set():
        d = nxt - time.monotonic()
        if d > 0:
            time.sleep(d)
        nxt = max(nxt + interval, time.monotonic() - interval)
        if stop_traffic.is_set():
            break
        kind = rng.choice(kinds)
        n = next_id()
        method, path, headers, body, rid, post_id = build_request(kind, n)
        t0 = now()
        st, h, data, err, retried = client.request(method, path, headers, body)
        t1 = now()
        rec = {"n": n, "kind": kind, "method": method, "rid": rid, "post_id": post_id,
               "t0": t0, "t1": t1, "phase": phase_at(t0), "status": st, "err": err,
               "client_retry": retried, "ms": (t1 - t0) * 1000.0,
               "ok": err is None and ok_status(kind, st),
               "config": h.get("x-chaos-config"), "gw_error": None}
        if st is not None and not rec["ok"]:
            try:
                rec["gw_error"] = json.loads(data).get("error")
            except (ValueError, AttributeError):
                pass
        with rec_lock:
            records.append(rec)


# ---------------------------------------------------------------- gateway-only probe
probes = []  # (t0, phase, ms, status or error)


PROBE_SCRIPT = r"""
import http.client, sys, time
port, out = int(sys.argv[1]), open(sys.argv[2], "a", buffering=1)
while True:
    t0 = time.time()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        c.request("GET", "/keyed/probe", headers={"host": "chaos.test"})
        r = c.getresponse(); r.read(); st = r.status
    except Exception as e:
        st = type(e).__name__
    finally:
        c.close()
    out.write(f"{t0:.6f} {(time.time() - t0) * 1000:.1f} {st}\n")
    time.sleep(0.1)
"""
PROBE_OUT = os.path.join(TMP, "probes.txt")


def start_prober():
    """Every 100 ms, on a new connection, a request the gateway answers itself (401: API key
    missing): its latency is the gateway's responsiveness, whatever the backends are doing.
    A separate process, so this driver's own threads (and GIL) do not delay it."""
    return spawn([sys.executable, "-c", PROBE_SCRIPT, str(PORT), PROBE_OUT], "prober.log")


def read_probes():
    if not os.path.exists(PROBE_OUT):
        return
    with open(PROBE_OUT) as f:
        for line in f:
            p = line.split()
            if len(p) == 3:
                t0 = float(p[0]) - WALL0
                if 0 <= t0 <= SECONDS:
                    probes.append((t0, phase_at(t0), float(p[1]), int(p[2]) if p[2].isdigit() else p[2]))


def cpu_s(pid):
    """utime + stime of a process, seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            f_ = f.read().rsplit(")", 1)[1].split()
        return (int(f_[11]) + int(f_[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def listen_drops():
    """System-wide TcpExt ListenOverflows + ListenDrops (a full accept queue drops SYNs)."""
    try:
        with open("/proc/net/netstat") as f:
            rows = [l.split() for l in f if l.startswith("TcpExt:")]
        d = dict(zip(rows[0][1:], rows[1][1:]))
        return int(d.get("ListenOverflows", 0)), int(d.get("ListenDrops", 0))
    except (OSError, IndexError, ValueError):
        return None


# ---------------------------------------------------------------- RSS sampler
rss_samples = []  # (t, phase, gen, kib)


def sampler():
    while not stop_traffic.is_set():
        g = current_gw()
        k = rss_kib(g["pid"])
        if k is not None:
            rss_samples.append((now(), phase_at(now()), g["n"], k))
        time.sleep(0.5)


# ---------------------------------------------------------------- faults
def sleep_until(t):
    while now() < t:
        time.sleep(min(0.05, max(0.0, t - now())))


def phase_backend_kill(a, b):
    sleep_until(a + (b - a) * 0.15)
    p = backend_procs["A"]
    p.send_signal(signal.SIGKILL)
    p.wait()
    event("SIGKILL backend", f"A (port {BACKENDS['A']})")
    sleep_until(a + (b - a) * 0.6)
    start_backend("A")
    event("backend restarted", "A")


def phase_backend_freeze(a, b):
    sleep_until(a + 1)
    p = backend_procs["B"]
    p.send_signal(signal.SIGSTOP)
    event("SIGSTOP backend", f"B (port {BACKENDS['B']}) for 10 s")
    sleep_until(a + 11)
    p.send_signal(signal.SIGCONT)
    event("SIGCONT backend", "B")


redis_checks = {}


def phase_redis(a, b):
    sleep_until(a + (b - a) * 0.1)
    redis_proc.kill()
    redis_proc.wait()
    event("SIGKILL redis-server")
    sleep_until(a + (b - a) * 0.6)
    start_redis()
    event("redis-server restarted")


reload_results = []  # dicts


def phase_reloads(a, b):
    global config_version
    plan = ["sighup", "admin", "admin:unknown_upstream", "sighup", "admin", "sighup:yaml",
            "admin", "sighup", "admin:unknown_key", "sighup"]
    step = (b - a) / (len(plan) + 1)
    for i, item in enumerate(plan):
        sleep_until(a + step * (i + 0.5))
        how, _, broken = item.partition(":")
        before = admin_healthz() or {}
        gen_before = before.get("generation")
        version = config_version + 1
        write_config(version, broken or None)
        res = {"i": i + 1, "how": how, "invalid": bool(broken), "broken": broken,
               "gen_before": gen_before, "ok": False, "detail": ""}
        if how == "admin":
            c = http.client.HTTPConnection("127.0.0.1", ADMIN, timeout=5)
            try:
                c.request("POST", "/admin/reload", body=b"",
                          headers={"authorization": f"Bearer {ADMIN_TOKEN}", "content-length": "0"})
                r = c.getresponse()
                res["admin_status"] = r.status
                r.read()
            finally:
                c.close()
        else:
            os.kill(current_gw()["pid"], signal.SIGHUP)
        if broken:
            time.sleep(0.6)
            h = admin_healthz() or {}
            st, hd, _ = http_get(PORT, "/probe/reload", headers={"host": "chaos.test"})
            kept = h.get("generation") == gen_before and hd.get("x-chaos-config") == f"v{config_version}"
            if how == "admin":
                kept = kept and res.get("admin_status") == 400
            res["ok"] = kept and st == 200
            res["detail"] = (f"generation {gen_before} -> {h.get('generation')}, "
                             f"x-chaos-config {hd.get('x-chaos-config')} (running v{config_version})"
                             + (f", admin answered {res.get('admin_status')}" if how == "admin" else ""))
            write_config(config_version)  # the good file back on disk, no reload needed
        else:
            def applied():
                h = admin_healthz() or {}
                st, hd, _ = http_get(PORT, "/probe/reload", headers={"host": "chaos.test"})
                return (gen_before is not None and (h.get("generation") or 0) > gen_before
                        and hd.get("x-chaos-config") == f"v{version}" and st == 200)
            res["ok"] = wait_until(applied, 3, 0.1)
            if res["ok"]:
                config_version = version
            res["detail"] = f"generation {gen_before} -> {(admin_healthz() or {}).get('generation')}"
        reload_results.append(res)
        event(f"reload {i + 1}/10 via {how}{' (INVALID: ' + broken + ')' if broken else ''}",
              "ok" if res["ok"] else "NOT AS EXPECTED: " + res["detail"])


upgrade_results = []


def upgrade_once():
    old = current_gw()
    try:
        os.remove(SOCK)
    except FileNotFoundError:
        pass
    g = start_gateway(upgrade=True)
    res = {"from": old["pid"], "to": g["pid"], "ok": False, "detail": ""}
    if not wait_until(lambda: os.path.exists(SOCK), 10, 0.02):
        res["detail"] = "upgrade socket never appeared"
        upgrade_results.append(res)
        with gw_lock:
            gens.append(g)
        return
    time.sleep(0.1)
    os.kill(old["pid"], signal.SIGQUIT)
    old["quit_at"] = now()
    with gw_lock:
        gens.append(g)
    watch_exit(old)
    event("upgrade", f"gen {g['n']} pid {g['pid']} started with -u; SIGQUIT to pid {old['pid']}")
    res["ok"] = wait_until(lambda: (admin_healthz() or {}).get("pid") == g["pid"], 15, 0.1)
    res["detail"] = "new process serves /healthz" if res["ok"] else "new process never served"
    upgrade_results.append(res)


def phase_upgrades(a, b):
    sleep_until(a + (b - a) * 0.05)
    upgrade_once()
    sleep_until(a + (b - a) * 0.35)
    upgrade_once()


slow_result = {}


def phase_slow_clients(a, b):
    """SLOW_CLIENTS connections from 127.0.0.2 send a request head one byte at a time (one byte
    per client every 100 ms); at the end of the phase each sends the rest and reads the answer."""
    head = (b"GET /slow/x HTTP/1.1\r\nHost: chaos.test\r\nX-Pad: " + b"p" * 400 + b"\r\n")
    socks = []
    errors = Counter()
    for _ in range(SLOW_CLIENTS):
        try:
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.settimeout(2)
            s.connect(("127.0.0.1", PORT))
            socks.append([s, 0, None])  # socket, bytes sent, closed_at
        except OSError as e:
            errors[type(e).__name__] += 1
    event("slow clients", f"{len(socks)} connections from 127.0.0.2 sending headers byte by byte")
    end = b - 0.8
    while now() < end:
        for st in socks:
            if st[2] is not None or st[1] >= len(head):
                continue
            try:
                st[0].send(head[st[1]:st[1] + 1])
                st[1] += 1
            except OSError:
                st[2] = now()
        for st in socks:  # noticed a close from the gateway?
            if st[2] is None:
                try:
                    st[0].setblocking(False)
                    if st[0].recv(256, socket.MSG_PEEK) is not None:
                        st[2] = now()
                except BlockingIOError:
                    pass
                except OSError:
                    st[2] = now()
                finally:
                    st[0].setblocking(True)
        time.sleep(0.1)
    sent_min = min((st[1] for st in socks), default=0)
    statuses = Counter()
    for st in socks:
        s = st[0]
        if st[2] is not None:
            statuses["closed by the gateway while trickling"] += 1
            s.close()
            continue
        try:
            s.sendall(head[st[1]:] + b"Connection: close\r\n\r\n")
            data = s.recv(64)
            m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
            statuses[("held open the whole phase, then " + m.group(1).decode()) if m
                     else ("closed" if not data else "garbage")] += 1
        except OSError as e:
            statuses[type(e).__name__] += 1
        finally:
            s.close()
    closed = sorted(st[2] - a for st in socks if st[2] is not None)
    slow_result.update({"opened": len(socks), "connect_errors": dict(errors),
                        "bytes_trickled": sent_min, "outcome": dict(statuses),
                        "closed_after_s": [round(closed[0], 1), round(closed[-1], 1)] if closed else None})
    event("slow clients done", json.dumps(slow_result))


flood_result = {}


def phase_flood(a, b):
    """FLOOD_CONNS connections opened as fast as possible from 127.0.0.3, one GET on each,
    held open until the end of the phase."""
    drops0 = listen_drops()
    gpid = current_gw()["pid"]
    cpu0, w0 = cpu_s(gpid), time.monotonic()
    socks = []
    errors = Counter()
    t_open = time.monotonic()
    for _ in range(FLOOD_CONNS):
        try:
            s = socket.socket()
            s.bind(("127.0.0.3", 0))
            s.settimeout(2)
            s.connect(("127.0.0.1", PORT))
            s.sendall(b"GET /flood/x HTTP/1.1\r\nHost: chaos.test\r\n\r\n")
            s.setblocking(False)
            socks.append(s)
        except OSError as e:
            errors[type(e).__name__] += 1
    open_ms = (time.monotonic() - t_open) * 1000
    event("flood", f"{len(socks)} connections from 127.0.0.3 in {open_ms:.0f} ms "
                   f"(errors {dict(errors) or 0})")
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    statuses = Counter()
    pending = set(socks)
    end = b - 0.5
    while pending and now() < end:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(256)
            except OSError as e:
                statuses[type(e).__name__] += 1
                data = None
            if data:
                m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
                statuses[m.group(1).decode() if m else "garbage"] += 1
            elif data == b"":
                statuses["closed"] += 1
            sel.unregister(s)
            pending.discard(s)
    statuses["no answer by phase end"] += len(pending)
    sel.close()
    for s in socks:
        s.close()
    drops1 = listen_drops()
    cpu1, w1 = cpu_s(gpid), time.monotonic()
    if cpu0 is not None and cpu1 is not None:
        flood_result["gateway_cpu"] = f"{cpu1 - cpu0:.2f} s CPU in {w1 - w0:.2f} s"
    flood_result.update({"opened": len(socks), "open_ms": round(open_ms), "connect_errors": dict(errors),
                         "answers": dict(statuses),
                         "listen_overflows_drops": ([drops1[0] - drops0[0], drops1[1] - drops0[1]]
                                                    if drops0 and drops1 else None)})
    event("flood done", json.dumps(flood_result))


# ---------------------------------------------------------------- shutdown checks
def stop_gateway_graceful(g, results):
    """SIGTERM the serving gateway and time its exit; a second SIGTERM if it overstays."""
    t = time.monotonic()
    os.kill(g["pid"], signal.SIGTERM)
    limit = GRACE + DRAIN + 3
    exited = wait_until(lambda: g["proc"].poll() is not None, limit, 0.05)
    results["sigterm_exit_s"] = round(time.monotonic() - t, 2) if exited else None
    results["limit_s"] = limit
    if not exited:
        os.kill(g["pid"], signal.SIGTERM)
        results["second_signal_exit"] = wait_until(lambda: g["proc"].poll() is not None, 2, 0.05)
        if g["proc"].poll() is None:
            g["proc"].kill()
            results["killed"] = True
    g["rc"] = g["proc"].wait()
    g["exited_at"] = now()


def shutdown_probe():
    """Issue 18 item 1, as an operator does it: a gateway without --server-conf, one request,
    SIGTERM; then a second SIGTERM after 6 s. Bounded to ~10 s; SIGKILL at the end if needed."""
    port, admin = free_port(), free_port()
    y = render_config(0).replace(f"127.0.0.1:{PORT}", f"127.0.0.1:{port}").replace(
        f"127.0.0.1:{ADMIN}", f"127.0.0.1:{admin}").replace(ACCESS_LOG, ACCESS_LOG + ".probe")
    path = os.path.join(TMP, "probe.yaml")
    with open(path, "w") as f:
        f.write(y)
    p = spawn([BIN, "-c", path], "probe.log", cwd=TMP, env={**os.environ, "RUST_LOG": "info"})
    res = {}
    if not wait_until(lambda: http_get(port, "/items/1", headers={"host": "chaos.test"})[0] == 200, 15):
        res["error"] = "probe gateway never answered"
        return res
    t = time.monotonic()
    p.send_signal(signal.SIGTERM)
    if wait_until(lambda: p.poll() is not None, 6, 0.05):
        res["sigterm_exit_s"] = round(time.monotonic() - t, 2)
        return res
    res["sigterm_exit_s"] = None
    p.send_signal(signal.SIGTERM)
    t2 = time.monotonic()
    if wait_until(lambda: p.poll() is not None, 3, 0.05):
        res["second_sigterm_exit_s"] = round(time.monotonic() - t2, 2)
    else:
        res["second_sigterm_exit_s"] = None
        p.kill()
        p.wait()
    try:
        with open(os.path.join(TMP, "probe.log"), errors="replace") as f:
            m = re.search(r"[Gg]race[^\n]*", f.read())
            res["log"] = m.group(0)[:120] if m else ""
    except OSError:
        pass
    return res


# ---------------------------------------------------------------- analysis
def read_id_logs():
    recv = defaultdict(list)  # id -> [(backend, t, rid)]
    done = defaultdict(list)
    starts = defaultdict(list)
    for name in BACKENDS:
        path = os.path.join(TMP, f"ids-{name}.log")
        if not os.path.exists(path):
            continue
        with open(path, errors="replace") as f:
            for line in f:
                p = line.split()
                if len(p) >= 3 and p[0] == "recv":
                    recv[p[2]].append((name, float(p[1]), p[3] if len(p) > 3 else "-"))
                elif len(p) >= 3 and p[0] == "done":
                    done[p[2]].append((name, float(p[1])))
                elif len(p) >= 3 and p[0] == "start":
                    starts[name].append(float(p[1]))
    return recv, done, starts


def read_access_log():
    by_rid = {}
    lines = bad = 0
    paths = [ACCESS_LOG]
    for path in paths:
        if not os.path.exists(path):
            continue
        with open(path, errors="replace") as f:
            for line in f:
                lines += 1
                try:
                    j = json.loads(line)
                except ValueError:
                    bad += 1
                    continue
                rid = j.get("request_id")
                if rid:
                    by_rid.setdefault(rid, []).append(j)
    return by_rid, lines, bad


def backend_name(addr):
    if not addr:
        return None
    for n, p in BACKENDS.items():
        if str(addr).endswith(f":{p}"):
            return n
    return None


def fault_windows():
    """Per backend: intervals (relative seconds) in which it was dead or frozen."""
    w = defaultdict(list)
    open_ = {}
    for t, what, detail in events:
        name = detail.split()[0] if detail else ""
        if what == "SIGKILL backend":
            open_[name] = ("killed", t)
        elif what == "backend restarted" and name in open_:
            kind, a = open_.pop(name)
            w[name].append((kind, a, t))
        elif what == "SIGSTOP backend":
            open_[name] = ("frozen", t)
        elif what == "SIGCONT backend" and name in open_:
            kind, a = open_.pop(name)
            w[name].append((kind, a, t))
    for name, (kind, a) in open_.items():
        w[name].append((kind, a, 1e9))
    return w


def classify(rec, log_lines, recv, done, windows):
    """Explain a failed request: which backend had it, and what happened to that backend."""
    lines = log_lines.get(rec["rid"], [])
    line = lines[-1] if lines else {}
    b = backend_name(line.get("backend"))
    got = recv.get(rec["post_id"], []) if rec["post_id"] else []
    if not b and got:
        b = got[0][0]
    gw_err = line.get("error") or rec.get("gw_error")
    cause = (f"status {rec['status']}" if rec["status"] is not None else f"socket {rec['err']}")
    where = f"backend {b}" if b else "no backend named"
    explained = False
    why = ""
    mechanism = ""
    for kind, a, z in windows.get(b, []):
        if kind == "killed" and rec["t0"] <= a <= rec["t1"] and got and not done.get(rec["post_id"]):
            explained, why = True, f"backend {b} SIGKILLed at t={a:.1f}s while holding the request (received, never answered)"
        elif kind == "frozen" and rec["t0"] <= z and a <= rec["t1"]:
            explained, why = True, (f"backend {b} frozen t={a:.1f}-{z:.1f}s while holding the request"
                                    + (" (the backend executed it after SIGCONT)" if got else ""))
        elif kind == "killed" and rec["t0"] <= a <= rec["t1"] and not got:
            explained, why = True, (f"backend {b} SIGKILLed at t={a:.1f}s while the request was in "
                                    f"flight (delivered to its socket, not yet read: reset)")
        elif kind == "killed" and a <= rec["t0"] <= z + 1 and not got:
            why = (f"sent to backend {b} after it died at t={a:.1f}s: never received; "
                   f"a connection to a dead backend must be retried (connect errors) or, for a "
                   f"pooled connection, be retried on a fresh one")
            mechanism = "item 2 (pooled-connection retry)"
    if not explained and not mechanism:
        if gw_err in ("circuit_open", "no_healthy_backend"):
            faulty = sorted({n for n, ws in windows.items() for kind, a, z in ws if a <= rec["t0"]})
            why = (f"{rec['status']} {gw_err}: the gateway had no backend left to try (breakers "
                   f"and health checks together ejected both; backends faulted before this: "
                   f"{', '.join(faulty) or 'none'}); see the gateway log for 'open for' / 'unhealthy'")
            mechanism = "breaker + health-check ejection (not items 1-2)"
        elif rec["status"] == 504 and rec["method"] == "GET":
            why = (f"504 {gw_err or ''} from {where}: a GET timed out" +
                   (f" and its retry (retries={line.get('retries')}) found no other backend" if line else ""))
            mechanism = "retry found no other backend (breaker + health-check ejection)"
        elif rec["status"] == 502 and not got:
            why = (f"502 {gw_err or ''} from {where} that never received the request: a pooled "
                   f"keep-alive connection the backend had closed (backend keep-alive "
                   f"{BACKEND_KEEPALIVE}s)")
            mechanism = "item 2 (pooled-connection retry)"
        elif rec["status"] is None and rec["phase"] == "upgrades":
            why = f"socket error during a binary upgrade ({rec['err']}); gateway log line: {'yes' if lines else 'no'}"
            mechanism = "upgrade handover / item 1 (shutdown drain)"
        elif rec["status"] is not None and 500 <= rec["status"] < 600:
            why = f"{rec['status']} {gw_err or ''} from {where}" + (", backend received it" if got else "")
            mechanism = "item 2 (pooled-connection retry)" if gw_err and "Closed" in str(gw_err) else "unknown"
        else:
            why = f"{cause} {gw_err or ''} from {where}"
            mechanism = "unknown"
    if rec["method"] == "GET" and explained and not mechanism:
        # a GET is idempotent: a backend dying or freezing under it is no excuse, the gateway
        # should have retried it on the other backend
        mechanism = ("GET retried on the same (frozen/dead) backend: no other backend admissible "
                     f"(retries={line.get('retries')}; breaker + health-check ejection)"
                     if gw_err == "gateway_timeout" else "GET not retried on another backend")
    return {"explained": explained, "why": why, "mechanism": mechanism, "cause": cause,
            "gw_error": gw_err, "backend": b, "executed": len(got)}


def pct(vals, p):
    if not vals:
        return 0.0
    v = sorted(vals)
    return v[min(len(v) - 1, int(len(v) * p))]


def report(shutdown, probe):
    recv, done, _ = read_id_logs()
    log_lines, log_total, log_bad = read_access_log()
    windows = fault_windows()
    recs = sorted(records, key=lambda r: r["n"])
    out = []
    P = out.append
    P("")
    P("=" * 78)
    P(f"CHAOS REPORT  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  "
      f"{'SOAK ' + str(SECONDS) + ' s' if SOAK else 'CHAOS_SECONDS=' + str(SECONDS)}  "
      f"rate {RATE}/s  binary {os.path.relpath(BIN, ROOT)}")
    P("=" * 78)
    total = len(recs)
    fails = [r for r in recs if not r["ok"]]
    by_kind = Counter(r["kind"] for r in recs)
    P(f"requests sent: {total} ({', '.join(f'{k} {v}' for k, v in sorted(by_kind.items()))})")
    P(f"client keep-alive retries (GET on a reused client connection the gateway had closed; "
      f"not failures): {sum(r['client_retry'] for r in recs)}")
    st = Counter(r["status"] for r in recs if r["status"] is not None)
    P("statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(st.items())))
    P(f"failures: {len(fails)}")
    causes = Counter((f"status {r['status']}" if r["status"] is not None else f"socket {r['err']}")
                     + (f" ({r['gw_error']})" if r.get("gw_error") else "") for r in fails)
    for c, v in causes.most_common():
        P(f"  {v:6d}  {c}")
    P("")
    P("by phase (start s..end s):  sent  fail  GET-fail  POST-fail  5xx  429  p50ms  p99ms  max_ms")
    for name, (a, b) in phase_starts.items():
        rs = [r for r in recs if r["phase"] == name]
        ms = [r["ms"] for r in rs]
        P(f"  {name:<15} {a:5.1f}..{b:5.1f} {len(rs):6d} {sum(not r['ok'] for r in rs):5d} "
          f"{sum(not r['ok'] and r['method'] == 'GET' for r in rs):9d} "
          f"{sum(not r['ok'] and r['method'] == 'POST' for r in rs):10d} "
          f"{sum(1 for r in rs if r['status'] and r['status'] >= 500):4d} "
          f"{sum(1 for r in rs if r['status'] == 429):4d} {pct(ms, .5):6.1f} {pct(ms, .99):6.1f} "
          f"{max(ms, default=0):7.1f}")
    P("")
    P("gateway-only probes (401 answered by the gateway, new connection every 100 ms), by phase: "
      + ", ".join(f"{n} p99 {pct([x[2] for x in probes if x[1] == n], .99):.0f}/max "
                  f"{max((x[2] for x in probes if x[1] == n), default=0):.0f} ms"
                  f"{' (' + str(sum(1 for x in probes if x[1] == n and x[3] != 401)) + ' not 401)' if any(x[1] == n and x[3] != 401 for x in probes) else ''}"
                  for n, _ in PHASES))
    P("")
    P("events:")
    for t, what, detail in events:
        P(f"  t={t:6.1f}s  {what} {detail}".rstrip())

    # failed requests explained
    explained_posts = []
    unexplained_posts = []
    get_fails = [r for r in fails if r["method"] == "GET"]
    P("")
    if fails:
        P("failed requests, grouped (count, first..last start time), each group explained from the "
          "gateway's access-log line of every request and the backends' id logs:")
    groups = {}
    for r in fails:
        c = classify(r, log_lines, recv, done, windows)
        key = (r["phase"], r["method"], c["cause"], c["explained"], re.sub(r"\d+\.\d+s", "Ts", c["why"]),
               c["mechanism"])
        g = groups.setdefault(key, [0, r["t0"], r["t0"], c["why"]])
        g[0] += 1
        g[2] = r["t0"]
    for (phase, method, cause, expl, _, mech), (n, a, z, why) in groups.items():
        P(f"  {n:5d} x {phase:<14} {method:4} {cause:<24} t={a:.1f}..{z:.1f}s "
          f"{'EXPLAINED' if expl else 'UNEXPLAINED'}: {why}"
          + (f"  [mechanism: {mech}]" if mech else ""))
    if fails:
        P("  first failures one by one:")
    for r in fails[:8]:
        c = classify(r, log_lines, recv, done, windows)
        P(f"    t={r['t0']:6.1f}s {r['rid']} {r['method']} {r['kind']} {c['cause']} backend {c['backend']} "
          f"gateway error {c['gw_error']} executed by a backend {c['executed']}x")
    for r in fails:
        if r["method"] == "POST":
            c = classify(r, log_lines, recv, done, windows)
            (explained_posts if c["explained"] else unexplained_posts).append((r, c))

    # duplicates: across both backends and every incarnation
    dup = {k: v for k, v in recv.items() if len(v) > 1}
    sent_posts = [r for r in recs if r["post_id"]]
    sent_ids = {r["post_id"] for r in sent_posts}
    P("")
    P(f"POSTs: sent {len(sent_posts)}, received by a backend {sum(1 for i in sent_ids if i in recv)}, "
      f"executed twice: {len(dup)}")
    for k, v in list(dup.items())[:10]:
        P(f"  {k}: " + "; ".join(f"backend {n} at t={t - WALL0:.2f}s rid {rid}" for n, t, rid in v))
    ok_not_recv = [r for r in sent_posts if r["ok"] and r["post_id"] not in recv]
    if ok_not_recv:
        P(f"  !! {len(ok_not_recv)} POSTs answered 200 that no backend recorded")

    # access log completeness
    answered = [r for r in recs if r["status"] is not None]
    missing = [r for r in answered if r["rid"] not in log_lines]
    unanswered = [r for r in recs if r["status"] is None]
    unanswered_missing = [r for r in unanswered if r["rid"] not in log_lines]
    dup_lines = sum(1 for v in log_lines.values() if len(v) > 1)
    P("")
    P(f"access log: {log_total} lines ({log_bad} unparsable); main-traffic requests answered "
      f"{len(answered)}, of which missing from the log: {len(missing)}; socket-error requests "
      f"not logged: {len(unanswered_missing)} of {len(unanswered)}; request ids logged twice: {dup_lines}")
    by_phase_missing = Counter(r["phase"] for r in missing)
    if missing:
        P("  missing by phase: " + ", ".join(f"{k} {v}" for k, v in by_phase_missing.items()))

    # RSS
    def rss_in(phases, fn=max):
        v = [k for _, ph, _, k in rss_samples if ph in phases]
        return fn(v) if v else None

    def mib(k):
        return f"{k / 1024:.1f} MiB" if k else "n/a"
    warm = [k for t, ph, _, k in rss_samples if ph == "warmup" and t > phase_starts["warmup"][1] - 3]
    before = warm[-1] if warm else (rss_samples[0][3] if rss_samples else None)
    during_phases = [n for n, _ in PHASES if n not in ("warmup", "cooldown")]
    during = rss_in(during_phases)
    after = shutdown.get("rss_after")
    P("")
    P(f"gateway RSS (VmRSS of the serving process): before {mib(before)}, during max {mib(during)}, "
      f"after {mib(after)}")
    P("  per phase max: " + ", ".join(f"{n} {mib(rss_in([n]))}" for n, _ in PHASES))

    # --------------------------------------------------------------- targets
    targets = []

    def T(name, ok, detail, dep=""):
        targets.append((name, ok, detail, dep))

    T("0 failed GETs", not get_fails, f"{len(get_fails)} of {sum(1 for r in recs if r['method'] == 'GET')} GETs failed"
      + (": " + ", ".join(f"{k} {v}" for k, v in Counter(classify(r, log_lines, recv, done, windows)['mechanism'] or 'unknown' for r in get_fails).items()) if get_fails else ""),
      "item 2 (pooled-connection retry) for 502s on reused upstream connections; every other cause is named above")
    T("0 POSTs executed twice", not dup, f"{len(dup)} ids received twice")
    mech = Counter(c["mechanism"] or "unknown" for _, c in unexplained_posts)
    T("POST failures only where a backend died holding the request", not unexplained_posts,
      f"{len(explained_posts)} explained, {len(unexplained_posts)} unexplained"
      + (" (" + ", ".join(f"{k}: {v}" for k, v in mech.items()) + ")" if unexplained_posts else ""),
      "item 2 (pooled-connection retry)")
    if not SOAK:
        rel_fail = [r for r in recs if not r["ok"] and r["phase"] in ("reloads", "upgrades")]
        bad_reloads = [x for x in reload_results if not x["ok"]]
        bad_upgrades = [x for x in upgrade_results if not x["ok"]]
        olds_alive = [g for g in gens[:-1] if g["exited_at"] is None]
        T("0 failed requests across reloads and upgrades", not rel_fail,
          f"{len(rel_fail)} failed in the reload/upgrade phases "
          f"({sum(1 for r in recs if r['phase'] in ('reloads', 'upgrades'))} sent)",
          "upgrade handover; item 2 if 502s on reused upstream connections")
        T("10 reloads, invalid ones never replace the running config",
          len(reload_results) == 10 and not bad_reloads,
          f"{len(reload_results)} done, {sum(x['invalid'] for x in reload_results)} invalid, "
          f"{len(bad_reloads)} not as expected" + ("".join(f"; #{x['i']} {x['how']} {x['broken']}: {x['detail']}" for x in bad_reloads)))
        T("2 binary upgrades, old processes exit by themselves",
          len(upgrade_results) == 2 and not bad_upgrades and not olds_alive,
          f"{sum(x['ok'] for x in upgrade_results)} of {len(upgrade_results)} handed over; "
          + ", ".join(f"gen {g['n']} SIGQUIT t={g['quit_at']:.1f}s exited "
                      + (f"t={g['exited_at']:.1f}s (+{g['exited_at'] - g['quit_at']:.1f}s)" if g["exited_at"] else "NOT")
                      for g in gens[:-1] if g["quit_at"] is not None),
          "item 1 (shutdown drain) if an old process overstays")
        a, b = phase_starts["redis_kill"]
        r5 = [r for r in recs if a <= r["t0"] < b and r["status"] and r["status"] >= 500]
        lim = [r for r in recs if a <= r["t0"] < b and r["kind"] == "get_limited"]
        log1 = "".join(gateway_log(g) for g in gens)
        unavailable = "Redis unavailable" in log1
        again = "reachable again" in log1
        limited_during = sum(1 for r in lim if r["status"] == 429)
        T("Redis gone: 0 5xx, limits still enforced, sharing recovers", not r5 and limited_during > 0 and unavailable and again,
          f"{len(r5)} 5xx in the phase; limited route during it: {sum(1 for r in lim if r['status'] == 200)} x 200, "
          f"{limited_during} x 429; log 'Redis unavailable': {'yes' if unavailable else 'NO'}, "
          f"'reachable again': {'yes' if again else 'NO'}")
        sf = [r for r in recs if r["phase"] in ("slow_clients", "flood")]
        sf_fail = [r for r in sf if not r["ok"]]
        own = []
        for r in sf:
            ln = (log_lines.get(r["rid"]) or [{}])[-1]
            if ln.get("duration_ms") is not None:
                own.append(ln["duration_ms"] - (ln.get("upstream_ms") or 0))
        pr = [x for x in probes if x[1] in ("slow_clients", "flood")]
        pr_bad = [x for x in pr if x[3] != 401 or x[2] > STALL_MS]
        stall = sf_fail + pr_bad
        base = [k for _, ph, _, k in rss_samples if ph in ("slow_clients", "flood")]
        pre = [k for t, ph, _, k in rss_samples if t < phase_starts["slow_clients"][0]]
        ref = pre[-1] if pre else before
        rise = (max(base) - ref) if base and ref else 0
        bound_kib = 16 * 1024 + (SLOW_CLIENTS + FLOOD_CONNS) * 64
        T("slow clients and flood never stall other clients; bounded memory",
          not stall and rise <= bound_kib,
          f"main traffic meanwhile: {len(sf)} requests, {len(sf_fail)} failed, client latency p99 "
          f"{pct([r['ms'] for r in sf], .99):.0f} ms max {max((r['ms'] for r in sf), default=0):.0f} ms, "
          f"of which the gateway's own time (duration_ms - upstream_ms) p99 {pct(own, .99):.0f} ms "
          f"max {max(own, default=0):.0f} ms; gateway-only probes: {len(pr)}, {len(pr_bad)} failed or "
          f"over {STALL_MS} ms (p99 {pct([x[2] for x in pr], .99):.0f} ms, max {max((x[2] for x in pr), default=0):.0f} ms); "
          f"RSS rise {rise / 1024:.1f} MiB for {SLOW_CLIENTS + FLOOD_CONNS} connections, bound "
          f"16 MiB + 64 KiB/connection = {bound_kib / 1024:.0f} MiB; slow: {slow_result.get('outcome')}; "
          f"flood: {flood_result.get('answers')}")
    else:
        a = phase_starts["steady"][0]
        s1 = [k for t, _, _, k in rss_samples if a <= t < a + 15]
        s2 = [k for t, _, _, k in rss_samples if t >= SECONDS - 15]
        r1, r2 = (pct(s1, .5) if s1 else 0), (pct(s2, .5) if s2 else 0)
        growth = (r2 - r1) / r1 if r1 else 0
        T("soak: RSS grows < 10% after warm-up", r1 and growth < 0.10,
          f"{r1 / 1024:.1f} MiB after {a:.0f} s warm-up -> {r2 / 1024:.1f} MiB at the end ({growth * 100:+.1f}%)")
    T("access log loses nothing (SIGTERM, upgrades)", not missing,
      f"{len(missing)} answered requests missing from the log", "item 1 (shutdown flushes the writer)")
    lim_s = shutdown.get("limit_s")
    T(f"shutdown: SIGTERM exits within grace+drain ({GRACE}+{DRAIN} s, configured)",
      shutdown.get("sigterm_exit_s") is not None,
      f"exited after {shutdown.get('sigterm_exit_s')} s" if shutdown.get("sigterm_exit_s") is not None
      else f"still running after {lim_s} s; second SIGTERM exited it: {shutdown.get('second_signal_exit')}",
      "item 1 (shutdown)")
    if probe:
        ok = probe.get("sigterm_exit_s") is not None and probe["sigterm_exit_s"] <= 5
        T("shutdown without --server-conf (README's way): SIGTERM exits within 5 s", ok,
          (f"exited after {probe['sigterm_exit_s']} s" if probe.get("sigterm_exit_s") is not None else
           f"still running 6 s after SIGTERM; a second SIGTERM "
           + (f"exited it in {probe['second_sigterm_exit_s']} s" if probe.get("second_sigterm_exit_s") is not None
              else "was ignored too (SIGKILLed)")) + (f"; log: {probe['log']}" if probe.get("log") else "")
          + (probe.get("error") or ""),
          "item 1 (shutdown)")

    P("")
    P("TARGETS")
    failed = 0
    for name, ok, detail, dep in targets:
        failed += not ok
        P(f"  [{'PASS' if ok else 'FAIL'}] {name}: {detail}"
          + (f"\n         depends on: {dep}" if dep else ""))
    P("")
    P(f"RESULT: {'PASS' if not failed else 'FAIL'} ({len(targets) - failed} of {len(targets)} targets met)"
      f"; logs and raw data in {TMP if KEEP_TMP or failed else '(removed; KEEP_TMP=1 keeps them)'}")
    text = "\n".join(out)
    print(text, flush=True)
    res_dir = os.path.join(HERE, "results")
    os.makedirs(res_dir, exist_ok=True)
    with open(os.path.join(res_dir, f"chaos-{time.strftime('%Y%m%d-%H%M%S')}.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(TMP, "records.json"), "w") as f:
        json.dump({"records": recs, "events": events, "rss": rss_samples}, f)
    return failed


# ---------------------------------------------------------------- main
WALL0 = time.time()


def main():
    global T0, BIN, WALL0
    if not BIN:
        raise SystemExit("chaos: PORTCULLIS_BIN is not set (chaos.sh sets it)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the gateway
    print(f"chaos: tmp {TMP}; gateway 127.0.0.1:{PORT} (admin {ADMIN}), backends A {BACKENDS['A']} "
          f"B {BACKENDS['B']}, redis {REDIS}; {SECONDS} s at {RATE} rps, nofile {hard}", flush=True)
    with open(SERVER_CONF, "w") as f:
        f.write(f"---\nversion: 1\nthreads: 2\ndaemon: false\npid_file: {TMP}/portcullis.pid\n"
                f"upgrade_sock: {SOCK}\ngrace_period_seconds: {GRACE}\n"
                f"graceful_shutdown_timeout_seconds: {DRAIN}\n")
    write_config(0)
    chk = subprocess.run([BIN, "-t", "-c", CONFIG], capture_output=True, text=True)
    if chk.returncode != 0:
        raise SystemExit(f"chaos: the generated config does not validate:\n{chk.stdout}{chk.stderr}")
    start_redis()
    start_backend("A")
    start_backend("B")
    g = start_gateway()
    gens.append(g)
    if not wait_until(lambda: http_get(PORT, "/items/0", headers={"host": "chaos.test"})[0] == 200, 20, 0.1):
        raise SystemExit("chaos: the gateway never answered 200:\n" + gateway_log(g)[-3000:])
    time.sleep(1.5)  # a health-check pass, Redis registration

    WALL0 = time.time()
    T0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(WORKERS)]
    threads.append(threading.Thread(target=sampler, daemon=True))
    prober_proc = start_prober()
    for t in threads:
        t.start()
    event("traffic started", f"{WORKERS} workers, {RATE} rps")
    faults = {"backend_kill": phase_backend_kill, "backend_freeze": phase_backend_freeze,
              "redis_kill": phase_redis, "reloads": phase_reloads, "upgrades": phase_upgrades,
              "slow_clients": phase_slow_clients, "flood": phase_flood}
    for name, (a, b) in phase_starts.items():
        sleep_until(a)
        event("phase", name)
        if name in faults:
            try:
                faults[name](a, b)
            except Exception as e:  # a fault that could not be applied is reported, not fatal
                event("FAULT ERROR", f"{name}: {type(e).__name__}: {e}")
    sleep_until(SECONDS)
    stop_traffic.set()
    for t in threads:
        t.join(timeout=CLIENT_TIMEOUT + 2)
    prober_proc.kill()
    prober_proc.wait()
    read_probes()
    event("traffic stopped")
    shutdown = {"rss_after": rss_kib(current_gw()["pid"])}
    # old generations should be gone by now; give them a little longer
    for old in gens[:-1]:
        wait_until(lambda: old["exited_at"] is not None, 15, 0.1)
    stop_gateway_graceful(current_gw(), shutdown)
    event("gateway stopped", json.dumps({k: v for k, v in shutdown.items() if k != "rss_after"}))
    time.sleep(0.3)
    probe = shutdown_probe() if SHUTDOWN_PROBE else None
    if probe is not None:
        event("shutdown probe (no --server-conf)", json.dumps(probe))
    return report(shutdown, probe)


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    watchdog = threading.Timer(SECONDS + 150, lambda: os.kill(os.getpid(), signal.SIGTERM))
    watchdog.daemon = True
    watchdog.start()
    rc = 2
    try:
        rc = 1 if main() else 0
    except KeyboardInterrupt:
        print("chaos: interrupted", file=sys.stderr)
        rc = 130
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 2
        if not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    finally:
        stop_traffic.set()
        cleanup()
        if rc == 0 and not KEEP_TMP:
            shutil.rmtree(TMP, ignore_errors=True)
        elif os.path.isdir(TMP):
            print(f"chaos: logs kept in {TMP}", file=sys.stderr)
    sys.exit(rc)
