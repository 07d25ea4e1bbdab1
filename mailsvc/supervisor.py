"""`mailsvc serve --workers N`: N identical intake processes sharing the SMTP port.

One Python process does SMTP, parsing and writing on one core. Several processes on one host share
the port through SO_REUSEPORT (the kernel spreads connections over them) and settle everything
else through the database, exactly like processes on several hosts. Worker 0 also runs the API and
the IMAP pollers; the relay runs in every worker on PostgreSQL (rows are claimed with SKIP LOCKED)
and only in worker 0 on SQLite (one writer is enough there). The supervisor restarts a worker that
dies and forwards SIGTERM / Ctrl-C to all of them.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from mailsvc.config import Settings

logger = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What one worker runs besides the SMTP intake."""

    index: int
    api: bool
    imap: bool
    relay: bool


def plan_worker(settings: Settings, index: int) -> WorkerPlan:
    first = index == 0
    return WorkerPlan(
        index=index,
        api=first and settings.api_enabled,
        imap=first,
        relay=settings.amqp_url is not None and (first or not settings.is_sqlite),
    )


def worker_settings(settings: Settings, plan: WorkerPlan) -> Settings:
    """The settings a worker runs with: the port is shared and the schema is the supervisor's."""
    update: dict[str, Any] = {"smtp_reuse_port": True, "auto_migrate": False}
    if not plan.api:
        update["api_enabled"] = False
    if not plan.imap:
        update["imap_mailboxes"] = ()
    return settings.model_copy(update=update)


def _command(index: int) -> list[str]:
    return [sys.executable, "-m", "mailsvc", "serve", "--worker-index", str(index)]


def supervise(workers: int) -> int:
    """Run ``workers`` worker processes until SIGTERM / SIGINT; returns the exit status."""
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    processes = {i: subprocess.Popen(_command(i)) for i in range(workers)}  # noqa: S603
    logger.info("started %d workers: pids %s", workers, [p.pid for p in processes.values()])
    while not stopping.wait(0.5):
        for index, process in list(processes.items()):
            if process.poll() is not None and not stopping.is_set():
                logger.error("worker %d (pid %d) exited with %s; restarting it",
                             index, process.pid, process.returncode)
                time.sleep(RESTART_DELAY_SECONDS)
                processes[index] = subprocess.Popen(_command(index))  # noqa: S603
    logger.info("stopping %d workers", workers)
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    failed = 0
    for index, process in processes.items():
        try:
            status = process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            logger.error("worker %d did not stop in %ss; killing it", index, STOP_TIMEOUT_SECONDS)
            process.kill()
            status = process.wait()
        failed += status != 0
    logger.info("all workers stopped")
    return 1 if failed else 0
