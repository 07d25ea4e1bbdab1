"""`mailsvc serve --workers N`: throughput of N intake processes sharing the SMTP port.

Starts the real `mailsvc serve` as a subprocess for each worker count, on SQLite or on a
throw-away PostgreSQL database, seeds the demo data, and sends the same ~4 KB mails as
smtp_throughput.py from 20 connections (one connection per client, as an MX would open them).

    python benchmarks/serve_workers.py --workers 1,2 --database postgres --total 3000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from common import create_database, drop_database, render_table
from smtp_throughput import build_mail, generate_load, percentile

COLUMNS = (
    ("database", "database"), ("workers", "workers"), ("mails", "mails"), ("errors", "err"),
    ("msg_per_s", "msg/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_listening(port: int, process: asyncio.subprocess.Process, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise SystemExit(f"mailsvc serve exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise SystemExit(f"nothing listens on {port}")


async def run(
    database: str, workers: int, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    pg_name = None
    if database == "postgres":
        pg_name, url = await create_database()
    else:
        url = f"sqlite+aiosqlite:///{workdir / f'workers-{workers}.db'}"
    port = free_port()
    env = dict(
        os.environ, MAILSVC_DATABASE_URL=url, MAILSVC_SMTP_PORT=str(port),
        MAILSVC_API_ENABLED="false", MAILSVC_LOG_LEVEL="WARNING",
        MAILSVC_BCC_ADDRESS="bcc@mailsvc.localhost",
    )
    command = [sys.executable, "-m", "mailsvc"]
    seed = await asyncio.create_subprocess_exec(
        *command, "seed-demo", env=env, stdout=asyncio.subprocess.DEVNULL
    )
    if await seed.wait():
        raise SystemExit("mailsvc seed-demo failed")
    server = await asyncio.create_subprocess_exec(*command, "serve", "--workers", str(workers),
                                                  env=env)
    try:
        await wait_listening(port, server)
        run_id = uuid.uuid4().hex[:8]
        warmup = [build_mail(n, f"{run_id}w", "OPP-1") for n in range(100)]
        await generate_load(port, warmup, args.connections)
        mails = [build_mail(n, run_id, "OPP-1") for n in range(args.total)]
        result = await generate_load(port, mails, args.connections)
    finally:
        server.terminate()
        await server.wait()
        if pg_name:
            await drop_database(pg_name)
    latencies = result.latencies
    return {
        "database": database, "workers": workers, "mails": result.sent, "errors": result.errors,
        "msg_per_s": round(result.sent / result.seconds),
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
    }


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for database in args.database.split(","):
            for workers in (int(w) for w in args.workers.split(",")):
                rows.append(await run(database, workers, args, Path(workdir)))
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (1,2)")
    parser.add_argument("--database", default="sqlite,postgres", help="sqlite,postgres")
    parser.add_argument("--total", type=int, default=3000, help="mails per run (3000)")
    parser.add_argument("--connections", type=int, default=20, help="concurrent clients (20)")
    return parser.parse_args()


if __name__ == "__main__":
    print(render_table(COLUMNS, asyncio.run(main(parse_args()))))
