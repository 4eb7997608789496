#!/usr/bin/env python3
"""Open N keep-alive client connections to a proxy and leave them idle.

Used by load-tests/bench.sh (MODE=flat) to read the proxy's RSS while it holds N idle
keep-alive connections. Each connection sends one GET with the bench API key and reads
the whole response, so the proxy has served a request on it (buffers allocated, the
connection parked in its keep-alive loop), then stays open and silent.

    idle-conns.py HOST PORT PATH API_KEY N HOLD_SECONDS

Prints `READY open=<n> failed=<n>` once every connection has its answer (or failed), then
holds them until stdin closes or HOLD_SECONDS pass, whichever comes first. Bounded in
time: it always exits by itself.
"""
import selectors
import socket
import sys
import time


def main() -> int:
    if len(sys.argv) != 7:
        print(__doc__, file=sys.stderr)
        return 2
    host, port, path, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    n, hold = int(sys.argv[5]), float(sys.argv[6])
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nx-api-key: {key}\r\n\r\n"
    ).encode()
    sel = selectors.DefaultSelector()
    conns = []
    failed = 0
    deadline = time.monotonic() + max(30.0, hold)
    batch = 256  # connect in batches so the listen backlog never overflows
    for start in range(0, n, batch):
        pending = {}
        for _ in range(min(batch, n - start)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.connect((host, port))
                s.sendall(request)
            except OSError:
                failed += 1
                s.close()
                continue
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            pending[s] = b""
        while pending and time.monotonic() < deadline:
            for k, _ in sel.select(timeout=1.0):
                s = k.fileobj
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(s)
                    s.close()
                    del pending[s]
                    failed += 1
                    continue
                buf = pending[s] + chunk
                head, sep, body = buf.partition(b"\r\n\r\n")
                if sep:
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value.strip() or b"0")
                    if len(body) >= length:
                        sel.unregister(s)
                        del pending[s]
                        ok = head.startswith(b"HTTP/1.1 200")
                        if ok:
                            conns.append(s)
                        else:
                            failed += 1
                            s.close()
                        continue
                pending[s] = buf
        for s in pending:
            sel.unregister(s)
            s.close()
            failed += 1
    print(f"READY open={len(conns)} failed={failed}", flush=True)
    end = time.monotonic() + hold
    # Hold until stdin closes (bench.sh is done reading) or the time is up.
    try:
        sel.register(sys.stdin, selectors.EVENT_READ)
    except (OSError, ValueError):  # stdin is a file or /dev/null: just wait out the time
        time.sleep(max(0.0, end - time.monotonic()))
    while time.monotonic() < end:
        if sel.select(timeout=max(0.0, min(1.0, end - time.monotonic()))):
            if not sys.stdin.buffer.read1(4096):
                break
    for s in conns:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
