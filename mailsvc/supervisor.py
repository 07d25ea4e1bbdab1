"""`mailsvc serve`: accept processes sharing the SMTP port, and decide worker processes.

Accepting (SMTP, LMTP, IMAP, API, relay) and deciding (parsing, linking, storing) run in separate
processes, so decisions use every core. ``--workers N`` accept processes share the SMTP port through
SO_REUSEPORT (the kernel spreads connections over them); ``MAILSVC_DECIDE_WORKERS`` decide workers
(``mailsvc decide``) claim accepted mail from the store. Everything else is settled through the
database, exactly like processes on several hosts. The LMTP TCP port is shared like the SMTP port.
Accept worker 0 also runs the API, the IMAP pollers and the LMTP unix socket (a path has one
listener); the relay runs in every accept worker on PostgreSQL (rows are claimed with SKIP LOCKED)
and only in worker 0 on SQLite. The supervisor restarts a process that dies and forwards SIGTERM /
Ctrl-C to all of them (each finishes what it has in hand).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

from mailsvc.config import Settings
from mailsvc.metrics import MULTIPROC_DIR, forget_process

logger = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 60.0
# A worker that exits with one of these (sysexits: EX_UNAVAILABLE, a port taken; EX_CONFIG, wrong
# settings) would fail the same way again: the supervisor stops all and exits with it instead of
# restarting it every second for ever.
PERMANENT_FAILURES = frozenset({69, 78})


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What one worker runs besides the SMTP intake."""

    index: int
    api: bool
    imap: bool
    relay: bool
    # A unix socket path has one listener: worker 0 owns it (the LMTP TCP port is shared).
    lmtp_socket: bool = False


def plan_worker(settings: Settings, index: int) -> WorkerPlan:
    first = index == 0
    return WorkerPlan(
        index=index,
        api=first and settings.api.enabled,
        imap=first,
        lmtp_socket=first and settings.smtp.lmtp_socket is not None,
        relay=settings.events.amqp_url is not None and (first or not settings.store.is_sqlite),
    )


def worker_settings(settings: Settings, plan: WorkerPlan) -> Settings:
    """The settings a worker runs with: the ports are shared and the schema is the supervisor's."""
    update: dict[str, Any] = {"smtp_reuse_port": True, "auto_migrate": False}
    if not plan.api:
        update["api_enabled"] = False
    if not plan.imap:
        update["imap_mailboxes"] = ()
    if not plan.lmtp_socket:
        update["lmtp_socket"] = None
    return settings.model_copy(update=update)


def serve_command(index: int) -> list[str]:
    return [sys.executable, "-m", "mailsvc", "serve", "--worker-index", str(index)]


SUPERVISOR_PID = "MAILSVC_SUPERVISOR_PID"  # set for the processes the supervisor starts
SIGNAL_POLL_SECONDS = 0.05  # how soon the supervisor notices a stop signal


def exit_with_parent(interval: float = 1.0, grace: float = STOP_TIMEOUT_SECONDS) -> None:
    """In a supervised process: stop (as on SIGTERM, finishing what is in flight) when the
    supervisor is gone, even if it was SIGKILLed and could not tell us, so no worker is left
    running on its own (also when it died while this process was still starting). A stop
    that has not ended after ``grace`` seconds ends the process, as the supervisor would have
    (nothing is lost: every mail answered 250 is committed, the rest is retried by its sender)."""
    parent = int(os.environ.get(SUPERVISOR_PID) or os.getppid())

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        logger.warning("the supervisor (pid %d) is gone; stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        logger.error("not stopped %gs after the supervisor was gone; exiting now", grace)
        os._exit(os.EX_SOFTWARE)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def decide_command() -> list[str]:
    return [sys.executable, "-m", "mailsvc", "decide", "--workers", "1", "--no-migrate"]


def plan_processes(workers: int, decide_workers: int) -> dict[str, list[str]]:
    """The child processes of ``mailsvc serve``: name -> command line."""
    commands = {f"serve-{i}": serve_command(i) for i in range(workers)}
    commands.update({f"decide-{i}": decide_command() for i in range(decide_workers)})
    return commands


def supervise(commands: dict[str, list[str]]) -> int:
    """Run the processes until SIGTERM / SIGINT, restarting any that dies; the exit status.

    The processes share a fresh metrics directory (``PROMETHEUS_MULTIPROC_DIR``, see
    mailsvc/metrics.py), so /metrics in one of them reports all; it is removed when they stop, so
    no count of an earlier run is ever added in."""
    directory = tempfile.mkdtemp(prefix="mailsvc-metrics-")
    logger.info("metrics directory %s (PROMETHEUS_MULTIPROC_DIR of the workers)", directory)
    try:
        return _supervise(commands, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class _Stop:
    """Set by SIGTERM / SIGINT. A plain flag: a Python signal handler runs between two bytecodes
    of the main thread, also inside another handler, and one that took a lock (``Event.set``)
    deadlocked the supervisor for good when two signals came together (a wrapper forwarding
    the signal the supervisor got as well, Ctrl-C twice)."""

    requested = False

    def on_signal(self, _signum: int, _frame: object) -> None:
        self.requested = True

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (less once stopping); whether to stop."""
        deadline = time.monotonic() + seconds
        while not self.requested and time.monotonic() < deadline:
            time.sleep(min(SIGNAL_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        return self.requested

    def is_set(self) -> bool:
        return self.requested


def _supervise(commands: dict[str, list[str]], metrics_dir: str) -> int:
    stopping = _Stop()
    signal.signal(signal.SIGTERM, stopping.on_signal)
    signal.signal(signal.SIGINT, stopping.on_signal)
    env = {**os.environ, SUPERVISOR_PID: str(os.getpid()), MULTIPROC_DIR: metrics_dir}
    processes = {
        name: subprocess.Popen(argv, env=env)  # noqa: S603
        for name, argv in commands.items()
    }
    logger.info("started %d workers: %s", len(processes),
                ", ".join(f"{name} pid {p.pid}" for name, p in processes.items()))
    permanent: int | None = None
    while permanent is None and not stopping.wait(0.5):
        for name, process in list(processes.items()):
            if process.poll() in PERMANENT_FAILURES and not stopping.is_set():
                logger.error("worker %s (pid %d) exited with %s; stopping all",
                             name, process.pid, process.returncode)
                permanent = process.returncode
                break
            if process.poll() is not None and not stopping.is_set():
                logger.error("worker %s (pid %d) exited with %s; restarting it",
                             name, process.pid, process.returncode)
                forget_process(process.pid, metrics_dir)
                time.sleep(RESTART_DELAY_SECONDS)
                processes[name] = subprocess.Popen(commands[name], env=env)  # noqa: S603
    workers = len(processes)
    logger.info("stopping %d workers", workers)
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    failed = 0
    for index, process in processes.items():
        try:
            status = process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            logger.error("worker %s did not stop in %ss; killing it", index, STOP_TIMEOUT_SECONDS)
            process.kill()
            status = process.wait()
        failed += status != 0
    logger.info("all workers stopped")
    if permanent is not None:
        return permanent
    return 1 if failed else 0
