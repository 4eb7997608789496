#!/usr/bin/env python3
"""Reproduction of the bug the chaos run found (stdlib only, about 25 s, 127.0.0.1 only).

Two backends A and B behind one upstream (HTTP health checks every 1 s, default circuit
breaker, max_ejection_percent 50). A is killed long enough for its breaker to open (30 s),
then restarted: the health check finds it healthy again within 1-2 s, but its breaker stays
open. B is then frozen (SIGSTOP): the health check marks it unhealthy. From then on every
request is answered 503 `circuit_open` although A is up and answering: the breaker ejected A,
the health check ejected B, and the ejection cap (at most 50 %, "at least one backend stays")
only counts breaker ejections.

    PORTCULLIS_BIN=target/debug/portcullis python3 load-tests/repro-ejection.py

Exit 1 when the bug shows (some request got 503 while A was healthy), 0 otherwise.
"""
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("PORTCULLIS_BIN") or os.path.join(HERE, "..", "target", "debug", "portcullis")


def port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def get(p, path="/x", timeout=5):
    c = http.client.HTTPConnection("127.0.0.1", p, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status
    except OSError as e:
        return type(e).__name__
    finally:
        c.close()


def wait(pred, t):
    end = time.monotonic() + t
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False


tmp = tempfile.mkdtemp(prefix="portcullis-repro.")
gw, pa, pb = port(), port(), port()
procs = []


def backend(name, p):
    pr = subprocess.Popen([sys.executable, os.path.join(HERE, "chaos_backend.py"), name, str(p), tmp],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    procs.append(pr)
    wait(lambda: get(p, "/health", 1) == 200, 10)
    return pr


try:
    cfg = os.path.join(tmp, "p.yaml")
    with open(cfg, "w") as f:
        f.write(f"""server: {{ listen: ["127.0.0.1:{gw}"], admin: {{ listen: "127.0.0.1:{port()}" }} }}
upstreams:
  pool:
    backends: [ {{ addr: "127.0.0.1:{pa}" }}, {{ addr: "127.0.0.1:{pb}" }} ]
    health_check: {{ type: http, path: /health, interval: 1s, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 2 }}
    timeouts: {{ connect: 500ms, read: 2s }}
access_log: {{ enabled: false }}
routes: [ {{ match: {{ path: "/**" }}, upstream: pool }} ]
""")
    with open(os.path.join(tmp, "s.yaml"), "w") as f:
        f.write(f"---\nversion: 1\nthreads: 2\npid_file: {tmp}/pid\nupgrade_sock: {tmp}/sock\n"
                "grace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 1\n")
    a = backend("A", pa)
    b = backend("B", pb)
    g = subprocess.Popen([BIN, "-c", cfg, "--server-conf", os.path.join(tmp, "s.yaml")],
                         stdout=open(os.path.join(tmp, "gw.log"), "wb"), stderr=subprocess.STDOUT,
                         start_new_session=True)
    procs.append(g)
    assert wait(lambda: get(gw) == 200, 20), "gateway did not start"
    time.sleep(1.5)
    print("1. both backends up:", Counter(get(gw) for _ in range(10)))
    a.kill()
    a.wait()
    print("2. A killed:", Counter(get(gw) for _ in range(20)), "(A's breaker opens for 30 s)")
    a = backend("A", pa)
    time.sleep(2.5)
    print("3. A restarted, answers directly:", get(pa, "/x"), "; through the gateway:",
          Counter(get(gw) for _ in range(10)))
    b.send_signal(signal.SIGSTOP)
    print("4. B frozen (SIGSTOP); waiting 3 s for its health check to fail")
    time.sleep(3)
    res = Counter(get(gw, timeout=5) for _ in range(20))
    direct = get(pa, "/x")
    print(f"5. A answers directly: {direct}; through the gateway: {dict(res)}")
    b.send_signal(signal.SIGCONT)
    with open(os.path.join(tmp, "gw.log"), errors="replace") as f:
        for line in f:
            if any(k in line for k in ("open for", "ejection cap", "becomes")):
                print("   gateway log:", line.strip()[:160])
    bug = direct == 200 and res.get(503, 0) > 0
    print("BUG REPRODUCED: 503 circuit_open while backend A was healthy" if bug else "not reproduced")
    sys.exit(1 if bug else 0)
finally:
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGCONT)
                p.kill()
            except ProcessLookupError:
                pass
            p.wait()
