"""`mailsvc ingest` beside a running decide worker only accepts: the worker decides, and the
piped process loads neither SQLAlchemy nor the mail parser. Real processes, both databases."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mailsvc.crmstore.intake_writer import PostgresIntake, SqliteIntake, sqlite_path
from mailsvc.ingest.handover import _writer
from tests.conftest import BCC, SALES, SUPPORT, base_settings
from tests.support.waiting import wait_for

# Runs `mailsvc ingest` the way the console script does, then tells what it had loaded.
PROBE = """
import atexit, json, sys
from mailsvc import entry

def loaded():
    names = ("sqlalchemy", "mailparser", "alembic", "fastapi", "aio_pika")
    found = sorted(m for m in names if m in sys.modules)
    sys.stderr.write("LOADED " + json.dumps(found) + "\\n")

atexit.register(loaded)  # the command exits without unwinding: its exit handlers still run
sys.argv = ["mailsvc", "ingest", *sys.argv[1:]]
entry.main()
"""


def _environment(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"], "MAILSVC_DATABASE_URL": database_url,
        "MAILSVC_BCC_ADDRESS": BCC, "MAILSVC_SALES_ADDRESS": SALES,
        "MAILSVC_SUPPORT_ADDRESS": SUPPORT, "MAILSVC_LOG_LEVEL": "WARNING", **extra,
    }


def _mail(tag: str, sender: str = "carla@acme.example") -> bytes:
    return (f"From: Carla <{sender}>\r\nTo: {BCC}\r\nSubject: hello {tag}\r\n"
            f"Message-ID: <{tag}@acme.example>\r\n\r\nHello\r\n").encode()


async def _ingest(database_url: str, mail: bytes, **extra: str
                  ) -> tuple[int, list[dict[str, Any]], list[str]]:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", PROBE, "-"], input=mail, capture_output=True, timeout=300,
        env=_environment(database_url, **extra), check=False,
    )
    stderr = result.stderr.decode()
    loaded = next((json.loads(line[7:]) for line in stderr.splitlines()
                   if line.startswith("LOADED ")), None)
    assert loaded is not None, stderr
    return (result.returncode, [json.loads(x) for x in result.stdout.decode().splitlines()],
            loaded)


async def _deciders_running(database_url: str) -> bool:
    async with _writer(base_settings(database_url)) as writer:
        assert isinstance(writer, SqliteIntake | PostgresIntake)
        return await writer.deciders_running()


@pytest.fixture
async def decide_worker(database_url: str) -> AsyncIterator[subprocess.Popen[bytes]]:
    worker = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
        [sys.executable, "-m", "mailsvc", "decide", "--workers", "1"],
        env=_environment(database_url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for(lambda: _deciders_running(database_url), within=120,
                       what="the decide worker to start")
        yield worker
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGCONT)
            worker.terminate()
            worker.wait(60)


async def test_the_worker_decides_and_ingest_prints_its_decision(
    database_url: str, decide_worker: subprocess.Popen[bytes]
) -> None:
    status, outcomes, loaded = await _ingest(database_url, _mail("first"))
    assert status == 0, outcomes
    assert outcomes[0]["outcome"] == "lead_created" and outcomes[0]["email_id"]
    assert loaded == []  # accepted without the ORM, the parser, migrations, API or broker
    status_report = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "mailsvc", "status", "--json"],
        env=_environment(database_url), capture_output=True, check=True, timeout=120)
    assert json.loads(status_report.stdout)["decide_workers_running"] is True
    status, outcomes, _ = await _ingest(database_url, _mail("second"))
    assert outcomes[0]["outcome"] == "linked" and outcomes[0]["rule"] == "open_lead"
    status, outcomes, _ = await _ingest(database_url, _mail("second"))
    assert outcomes[0]["outcome"] == "duplicate"


async def test_a_stopped_worker_leaves_the_mail_accepted_and_decides_it_later(
    database_url: str, decide_worker: subprocess.Popen[bytes]
) -> None:
    decide_worker.send_signal(signal.SIGSTOP)  # alive, holding its lock, deciding nothing
    status, outcomes, _ = await _ingest(database_url, _mail("late"),
                                        MAILSVC_INGEST_WAIT_SECONDS="0.5")
    assert status == 0
    assert outcomes[0]["outcome"] == "accepted" and outcomes[0]["intake_id"]
    decide_worker.send_signal(signal.SIGCONT)

    async def decided() -> bool:
        _, again, _ = await _ingest(database_url, _mail("late"))
        return bool(again[0]["outcome"] == "duplicate" and again[0]["email_id"] is not None)

    await wait_for(decided, within=120, interval=0.5, what="the resumed worker to decide it")


async def test_without_a_worker_ingest_decides_itself(database_url: str) -> None:
    status, outcomes, loaded = await _ingest(database_url, _mail("alone"))
    assert status == 0 and outcomes[0]["outcome"] == "lead_created"
    assert "sqlalchemy" in loaded  # the full path
    if database_url.startswith("sqlite"):
        path = sqlite_path(database_url)
        assert path is not None
        assert not await asyncio.to_thread(os.path.exists, f"{path}-decide.lock")


async def test_a_killed_worker_is_not_taken_for_a_running_one(
    database_url: str, decide_worker: subprocess.Popen[bytes]
) -> None:
    decide_worker.kill()
    decide_worker.wait(60)
    async def gone() -> bool:
        return not await _deciders_running(database_url)

    await wait_for(gone, within=120, what="the killed worker to be gone")
    status, outcomes, loaded = await _ingest(database_url, _mail("orphan"))
    assert status == 0 and outcomes[0]["outcome"] == "lead_created"
    assert "sqlalchemy" in loaded
