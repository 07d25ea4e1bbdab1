"""`mailsvc import` throughput: an mbox of the whole test corpus, on SQLite and PostgreSQL.

Builds one mbox from every message of tests/corpus (``--copies N`` repeats it with rewritten
Message-IDs so every copy is new mail), then runs ``mailsvc import`` on it as an operator would, in
its own process, first into a fresh SQLite file and then into a fresh PostgreSQL database. Prints
messages/s and the importer's peak resident memory, then imports again to time the all-duplicates
re-run.

    python benchmarks/import_corpus.py --copies 5
"""

from __future__ import annotations

import argparse
import asyncio
import mailbox
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import create_database, drop_database

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import corpus_messages  # noqa: E402

MESSAGE_ID = re.compile(rb"^(message-id:[ \t]*<?)", re.IGNORECASE | re.MULTILINE)


def build_mbox(path: Path, copies: int) -> int:
    box = mailbox.mbox(path)
    count = 0
    for copy in range(copies):
        for message in corpus_messages():
            data = message.read_bytes()
            if copy:
                head, sep, body = data.partition(b"\n\n")
                head = MESSAGE_ID.sub(rb"\g<1>copy%d." % copy, head, count=1)
                data = b"X-Benchmark-Copy: %d\n" % copy + head + sep + body
            box.add(data)
            count += 1
    box.flush()
    box.close()
    return count


def run_import(database_url: str, mbox: Path, workdir: Path) -> tuple[float, int, str]:
    """Seconds, peak RSS in KiB and the summary printed by `mailsvc import`."""
    env = {**os.environ, "MAILSVC_DATABASE_URL": database_url, "MAILSVC_LOG_LEVEL": "WARNING"}
    out, err = workdir / "import.out", workdir / "import.err"
    started = time.perf_counter()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "mailsvc", "import", "--quiet", str(mbox)],
            env=env, cwd=workdir, stdout=stdout, stderr=stderr,
        )
        # wait4 gives this child's own peak memory (RUSAGE_CHILDREN would be the max of all).
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"mailsvc import failed ({status}):\n{err.read_text()}")
    return seconds, usage.ru_maxrss, out.read_text()


def report(label: str, messages: int, seconds: float, peak_kib: int) -> None:
    print(f"{label:<28} {messages:>6} msgs {seconds:>7.2f} s {messages / seconds:>8.0f} msg/s"
          f"   peak RSS {peak_kib / 1024:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=3, help="times the corpus is repeated")
    parser.add_argument("--only", choices=["sqlite", "postgres"], help="one store only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailsvc-import-bench-") as tmp:
        workdir = Path(tmp)
        mbox = workdir / "corpus.mbox"
        messages = build_mbox(mbox, args.copies)
        print(f"mbox: {messages} messages, {mbox.stat().st_size / 1e6:.1f} MB "
              f"({len(corpus_messages())} corpus files x {args.copies})")
        # Each database is migrated before the timed run, so the figure is the import alone.
        if args.only != "postgres":
            url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
            subprocess.run([sys.executable, "-m", "mailsvc", "db", "upgrade"], check=True,
                           env={**os.environ, "MAILSVC_DATABASE_URL": url},
                           cwd=workdir, capture_output=True)
            report("sqlite: import", messages, *run_import(url, mbox, workdir)[:2])
            report("sqlite: re-run (duplicates)", messages, *run_import(url, mbox, workdir)[:2])
        if args.only != "sqlite":
            name, url = asyncio.run(create_database())
            try:
                subprocess.run([sys.executable, "-m", "mailsvc", "db", "upgrade"], check=True,
                               env={**os.environ, "MAILSVC_DATABASE_URL": url},
                               cwd=workdir, capture_output=True)
                report("postgres: import", messages, *run_import(url, mbox, workdir)[:2])
                report("postgres: re-run (duplicates)", messages,
                       *run_import(url, mbox, workdir)[:2])
            finally:
                asyncio.run(drop_database(name))


if __name__ == "__main__":
    main()
