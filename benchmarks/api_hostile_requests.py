"""The API under hostile requests: a running `mailsvc serve`'s memory and metric series.

Starts `mailsvc serve` (SQLite in a temp dir, an API key set), then, over plain sockets:

1. sends a 200 MB body without a key (declared with Content-Length),
2. streams a 200 MB chunked body with a key (over MAILSVC_API_MAX_BODY_BYTES),
3. sends N requests with made-up methods and paths,

and prints the server's resident memory (VmRSS) after each, what it answered, and how many
`mailsvc_api_requests_total` series `/metrics` shows. Linux only (reads /proc).

    .venv/bin/python benchmarks/api_hostile_requests.py [--size-mb 200] [--requests 20000]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.request

KEY = "bench-key"


def rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return -1


def wait_for(port: int, deadline: float = 120) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the API did not come up")


def send_body(port: int, head: bytes, total: int, chunked: bool) -> tuple[int, bytes]:
    """Send the head, then up to ``total`` body bytes until the server stops reading."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(30)
    sock.sendall(head)
    block = b"x" * 65536
    sent = 0
    try:
        while sent < total:
            sock.sendall(b"10000\r\n" + block + b"\r\n" if chunked else block)
            sent += len(block)
    except OSError:
        pass
    try:
        answer = sock.recv(200).split(b"\r\n")[0]
    except OSError as exc:
        answer = repr(exc).encode()
    sock.close()
    return sent, answer


def made_up_requests(port: int, count: int) -> None:
    rng = random.Random(1)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(60)
        reader = sock.makefile("rb")
        for n in range(count):
            method = "".join(rng.choice(string.ascii_uppercase) for _ in range(8))
            sock.sendall(f"{method} /x{n}/{rng.random()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)


def series(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return sum(1 for line in text.splitlines()
               if line.startswith("mailsvc_api_requests_total{"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--port", type=int, default=18931)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    env = {**os.environ, "MAILSVC_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/m.db",
           "MAILSVC_API_KEYS": KEY, "MAILSVC_API_PORT": str(args.port),
           # The made-up requests use up this client's failed authentications: /metrics must
           # stay readable without a key.
           "MAILSVC_METRICS_PUBLIC": "true",
           "MAILSVC_SMTP_PORT": str(args.port + 1), "MAILSVC_LOG_LEVEL": "ERROR"}
    proc = subprocess.Popen([sys.executable, "-m", "mailsvc", "serve"], env=env)
    try:
        wait_for(args.port)
        total = args.size_mb * 1024 * 1024
        print(f"RSS at start: {rss_mb(proc.pid)} MB")
        head = (b"POST /api/v1/accounts HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: "
                + str(total).encode() + b"\r\n\r\n")
        sent, answer = send_body(args.port, head, total, chunked=False)
        print(f"{args.size_mb} MB, no key: {answer.decode()}, {sent // 2**20} MB sent; "
              f"RSS {rss_mb(proc.pid)} MB")
        head = (b"POST /api/v1/accounts HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                + f"Authorization: Bearer {KEY}\r\n\r\n".encode())
        sent, answer = send_body(args.port, head, total, chunked=True)
        print(f"{args.size_mb} MB chunked, with a key: {answer.decode()}, "
              f"{sent // 2**20} MB sent before the server stopped reading; "
              f"RSS {rss_mb(proc.pid)} MB")
        before = series(args.port)
        made_up_requests(args.port, args.requests)
        print(f"{args.requests} made-up methods and paths: request series {before} -> "
              f"{series(args.port)}; RSS {rss_mb(proc.pid)} MB")
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
