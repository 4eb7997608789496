#!/usr/bin/env python3
"""Backend for load-tests/chaos.py (Python 3.11 stdlib only).

    chaos_backend.py NAME PORT DIR [--keepalive SECONDS] [--post-delay-ms MS]

An HTTP/1.1 echo server (ThreadingHTTPServer) on 127.0.0.1:PORT:

- GET /health   -> 200 "ok" (the gateway's health check)
- GET /stats    -> JSON: posts seen, distinct ids, ids seen more than once (this backend,
                   every incarnation: the id log is re-read at start)
- any other GET -> 200 JSON echo (backend name, method, path, request id)
- POST/PUT      -> reads the JSON body, takes its "id", appends "recv <unix time> <id> <request
                   id>" to DIR/ids-NAME.log *before* doing the work (POST_DELAY_MS), and
                   "done <time> <id>" once the answer is written. The file is written with
                   unbuffered os.write on an O_APPEND fd, so a SIGKILL loses nothing already
                   received; chaos.py merges the logs of both backends to count ids executed twice.

Idle keep-alive connections are closed after --keepalive seconds (default 2): the same race
as a Node backend's 5 s keep-alive timeout against a gateway pool that keeps connections
longer (issue 18 item 2).
"""
import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("port", type=int)
    ap.add_argument("dir")
    ap.add_argument("--keepalive", type=float, default=2.0)
    ap.add_argument("--post-delay-ms", type=float, default=30.0)
    args = ap.parse_args()

    log_path = os.path.join(args.dir, f"ids-{args.name}.log")
    seen: dict[str, int] = {}
    if os.path.exists(log_path):
        with open(log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                p = line.split()
                if len(p) >= 3 and p[0] == "recv":
                    seen[p[2]] = seen.get(p[2], 0) + 1
    lock = threading.Lock()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"start {time.time():.6f} {os.getpid()}\n".encode())
    delay = args.post_delay_ms / 1000.0

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = args.keepalive  # idle keep-alive close (and any stalled read)
        server_version = "chaos-backend"

        def log_message(self, fmt, *a):  # quiet
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def do_GET(self):
            if self.path == "/health":
                return self._send(200, b"ok\n", "text/plain")
            if self.path == "/stats":
                with lock:
                    dups = {k: v for k, v in seen.items() if v > 1}
                    body = {"name": args.name, "pid": os.getpid(), "posts": sum(seen.values()),
                            "distinct": len(seen), "duplicates": dups}
                return self._send(200, json.dumps(body).encode())
            body = {"backend": args.name, "method": "GET", "path": self.path,
                    "request_id": self.headers.get("x-request-id")}
            self._send(200, json.dumps(body).encode())

        do_HEAD = do_GET

        def do_POST(self):
            n = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(n) if n else b""
            try:
                pid_ = str(json.loads(raw or b"{}").get("id", ""))
            except (ValueError, AttributeError):
                pid_ = ""
            rid = self.headers.get("x-request-id") or "-"
            if pid_:
                with lock:
                    seen[pid_] = seen.get(pid_, 0) + 1
                os.write(fd, f"recv {time.time():.6f} {pid_} {rid}\n".encode())
            if delay:
                time.sleep(delay)  # the "work": a window in which a kill holds the request
            body = {"backend": args.name, "method": self.command, "path": self.path, "id": pid_,
                    "request_id": rid}
            self._send(200, json.dumps(body).encode())
            if pid_:
                os.write(fd, f"done {time.time():.6f} {pid_}\n".encode())

        do_PUT = do_POST

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024
        allow_reuse_address = True

    srv = Server(("127.0.0.1", args.port), Handler)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
