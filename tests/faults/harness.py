"""The fault-test harness: real `mailsvc serve` processes on a database and a broker of their own,
each reached through a FaultProxy, real SMTP clients, and the checks of mailsvc's promises.

The checks look only at what goes in (SMTP) and what comes out (rows in PostgreSQL, events on
RabbitMQ), never at how the pipeline works inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx

from tests.conftest import AMQP_URL, BCC, PG_ADMIN_DSN, SALES, SUPPORT
from tests.support.proxy import FaultProxy

RABBIT_PORT = int(AMQP_URL.rsplit(":", 1)[1].split("/")[0])
PG_PORT = int(PG_ADMIN_DSN.rsplit(":", 1)[1].split("/")[0])
FULL = os.environ.get("FAULTS_SIZE", "ci") == "full"


def size(ci: int, full: int) -> int:
    """How much of something a scenario does: small in CI, large with `scripts/faults`."""
    return full if FULL else ci


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(probe: Callable[[], Any], *, within: float, what: str, every: float = 0.1) -> Any:
    """Poll ``probe`` until truthy; fail after ``within`` seconds (generous: CI shares 2 cores)."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(every)


# --- mail and SMTP clients -----------------------------------------------------------------


def make_mail(tag: str, n: int) -> tuple[str, bytes]:
    """A small, plain mail with a unique Message-ID; returns (message_id, bytes)."""
    message_id = f"fault-{tag}-{n}@load.example"
    body = (
        f"From: Customer {n} <customer{n % 50}@outside.example>\r\n"
        f"To: {SALES}\r\n"
        f"Subject: fault load {tag} {n}\r\n"
        f"Message-ID: <{message_id}>\r\n"
        "Date: Mon, 30 Nov 2026 12:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"Hello, this is mail {n} of the fault test {tag}.\r\n"
    )
    return message_id, body.encode()


@dataclass(frozen=True, slots=True)
class Attempt:
    message_id: str
    port: int
    code: int | None  # None: no reply (connection lost, refused, or the client timed out)
    reply: str
    seconds: float
    at: float


def send_once(port: int, message_id: str, data: bytes, timeout: float = 120.0) -> Attempt:
    """One SMTP transaction with a real client; what the server answered to DATA, if anything."""
    started = time.monotonic()
    code: int | None = None
    reply = ""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as smtp:
            smtp.ehlo()
            smtp.mail("sender@outside.example")
            rcpt, text = smtp.rcpt(SALES)
            if rcpt != 250:
                code, reply = rcpt, text.decode(errors="replace")
            else:
                code, raw = smtp.data(data)
                reply = raw.decode(errors="replace")
    except smtplib.SMTPResponseException as exc:
        error = exc.smtp_error
        code = exc.smtp_code
        reply = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
    except (OSError, smtplib.SMTPException) as exc:
        code, reply = None, f"{type(exc).__name__}: {exc}"
    return Attempt(message_id, port, code, reply, time.monotonic() - started, time.monotonic())


@dataclass
class Load:
    """SMTP clients that send mails and, like an MTA, try again later until they get a 250."""

    ports: list[int]
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    clients: int = 4
    retry_pause: float = 0.5
    attempts: list[Attempt] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _next: int = 0
    _limit: int | None = None

    def start(self, limit: int | None = None) -> Load:
        """Send until stop() (or ``limit`` mails accepted), from ``clients`` threads."""
        self._limit = limit
        for n in range(self.clients):
            thread = threading.Thread(target=self._client, args=(n,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, within: float = 300.0) -> None:
        """Stop taking new mails; each client finishes its mail (retrying until 250)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=within)
            assert not thread.is_alive(), "an SMTP client did not finish its mail"

    def join(self, within: float = 600.0) -> None:
        for thread in self._threads:
            thread.join(timeout=within)
            assert not thread.is_alive(), "an SMTP client did not finish its mail"

    def _take(self) -> int | None:
        with self._lock:
            if self._stop.is_set() or (self._limit is not None and self._next >= self._limit):
                return None
            self._next += 1
            return self._next - 1

    def _client(self, client: int) -> None:
        while (n := self._take()) is not None:
            message_id, data = make_mail(self.tag, n)
            tries = 0
            while True:
                port = self.ports[(n + tries) % len(self.ports)]
                attempt = send_once(port, message_id, data)
                with self._lock:
                    self.attempts.append(attempt)
                if attempt.code == 250:
                    break
                tries += 1
                time.sleep(self.retry_pause)

    # --- what happened ------------------------------------------------------------------

    def since(self, moment: float) -> list[Attempt]:
        with self._lock:
            return [a for a in self.attempts if a.at >= moment]

    def accepted(self) -> set[str]:
        with self._lock:
            return {a.message_id for a in self.attempts if a.code == 250}

    def sent(self) -> set[str]:
        with self._lock:
            return {a.message_id for a in self.attempts}

    def codes(self) -> Counter[int | None]:
        with self._lock:
            return Counter(a.code for a in self.attempts)


# --- the stack: database, broker, processes ---------------------------------------------------


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


class Stack:
    """A fresh PostgreSQL database and a private exchange with a queue bound to every event, both
    behind FaultProxies, and `mailsvc serve` processes started on demand."""

    def __init__(self, tmp: Path, *, broker: bool = True, migrate: bool = True) -> None:
        self.tmp = tmp
        self.name = f"mailsvc_fault_{uuid.uuid4().hex[:10]}"
        self.exchange = f"mailsvc.fault.{self.name}"
        self.queue = f"{self.exchange}.all"
        self.db_proxy = FaultProxy(PG_PORT)
        self.amqp_proxy = FaultProxy(RABBIT_PORT) if broker else None
        self.processes: list[Serve] = []
        self._migrate = migrate

    # --- set-up --------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        _run(self._create())
        self.db_proxy.start()
        if self.amqp_proxy is not None:
            self.amqp_proxy.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        for process in self.processes:
            process.kill()
        self.db_proxy.stop()
        if self.amqp_proxy is not None:
            self.amqp_proxy.stop()
        with contextlib.suppress(Exception):
            _run(self._drop())

    async def _create(self) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()
        if self.amqp_proxy is not None:
            # Bound before mailsvc publishes anything: events are routed from the first one.
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                exchange = await channel.declare_exchange(
                    self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
                queue = await channel.declare_queue(self.queue, durable=True)
                await queue.bind(exchange, "#")

    async def _drop(self) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()
        if self.amqp_proxy is not None:
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(self.queue)
                await channel.exchange_delete(self.exchange)

    def database_url(self, *, direct: bool = False) -> str:
        port = PG_PORT if direct else self.db_proxy.port
        return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{self.name}"

    def amqp_url(self) -> str:
        assert self.amqp_proxy is not None
        return AMQP_URL.replace(f":{RABBIT_PORT}/", f":{self.amqp_proxy.port}/")

    def serve(self, **env: str) -> Serve:
        values = {"MAILSVC_DATABASE_URL": self.database_url()}
        if self.amqp_proxy is not None:
            values["MAILSVC_AMQP_URL"] = self.amqp_url()
            values["MAILSVC_AMQP_EXCHANGE"] = self.exchange
        values.update(env)
        process = Serve(self.tmp / f"serve-{len(self.processes)}.log", values)
        self.processes.append(process)
        return process.start()

    # --- what is stored and published ---------------------------------------------------

    def stored(self) -> Counter[str]:
        """Message-ID -> how many e-mail rows carry it (read directly, not through the proxy)."""

        async def go() -> Counter[str]:
            conn = await asyncpg.connect(self.database_url(direct=True).replace("+asyncpg", ""))
            try:
                rows = await conn.fetch("SELECT message_id FROM emails")
            finally:
                await conn.close()
            return Counter(str(r["message_id"]) for r in rows)

        result: Counter[str] = _run(go())
        return result

    def undecided(self) -> int:
        """Mails accepted (answered 250) and not decided yet: still in the intake table."""

        async def go() -> int:
            conn = await asyncpg.connect(self.database_url(direct=True).replace("+asyncpg", ""))
            try:
                return int(await conn.fetchval("SELECT count(*) FROM intake"))
            finally:
                await conn.close()

        result: int = _run(go())
        return result

    def outbox(self) -> list[dict[str, Any]]:
        async def go() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(self.database_url(direct=True).replace("+asyncpg", ""))
            try:
                rows = await conn.fetch("SELECT id, type, subject, sent_at FROM outbox")
            finally:
                await conn.close()
            return [dict(r) for r in rows]

        result: list[dict[str, Any]] = _run(go())
        return result

    def email_ids(self) -> dict[str, int]:
        async def go() -> dict[str, int]:
            conn = await asyncpg.connect(self.database_url(direct=True).replace("+asyncpg", ""))
            try:
                rows = await conn.fetch("SELECT id, message_id FROM emails")
            finally:
                await conn.close()
            return {str(r["message_id"]): int(r["id"]) for r in rows}

        result: dict[str, int] = _run(go())
        return result

    def published(self, received: Counter[str], within: float = 5.0) -> Counter[str]:
        """Take what waits on the test queue (event id -> times delivered) into ``received``."""

        async def go() -> None:
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                queue = await channel.get_queue(self.queue)
                deadline = time.monotonic() + within
                while time.monotonic() < deadline:
                    message = await queue.get(fail=False, timeout=10)
                    if message is None:
                        return
                    body = json.loads(message.body)
                    received[str(body["id"])] += 1
                    await message.ack()

        _run(go())
        return received


class Serve:
    """One `mailsvc serve` process with its own SMTP and API ports."""

    def __init__(self, log: Path, env: dict[str, str]) -> None:
        self.log = log
        self.smtp_port = free_port()
        self.api_port = free_port()
        self.env = {
            "PATH": os.environ["PATH"],
            "MAILSVC_SMTP_PORT": str(self.smtp_port),
            "MAILSVC_API_PORT": str(self.api_port),
            "MAILSVC_BCC_ADDRESS": BCC,
            "MAILSVC_SALES_ADDRESS": SALES,
            "MAILSVC_SUPPORT_ADDRESS": SUPPORT,
            "MAILSVC_RELAY_POLL_SECONDS": "0.5",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> Serve:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailsvc", "serve"], env=self.env,
            stdout=handle, stderr=subprocess.STDOUT,
        )
        handle.close()
        return self

    def wait_ready(self, within: float = 120.0) -> None:
        def listening() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, f"serve exited:\n{self.output()[-3000:]}"
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1):
                    return True
            except OSError:
                return False

        wait_until(listening, within=within, what=f"serve on port {self.smtp_port}")

    def readyz(self) -> tuple[int, dict[str, Any]] | None:
        try:
            response = httpx.get(f"http://127.0.0.1:{self.api_port}/readyz", timeout=30)
        except httpx.HTTPError:
            return None
        return response.status_code, response.json()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
            self.kills += 1

    def terminate(self, within: float = 60.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=within)

    def restart(self) -> None:
        self.kill()
        self.start()
        self.wait_ready()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# --- the promises -----------------------------------------------------------------------------


@dataclass
class Verdict:
    """The figures of one run, for assertions and for docs/reliability.md."""

    accepted: int
    stored: int
    stored_twice: int
    accepted_not_stored: int
    events: int
    events_missing: int
    events_redelivered: int
    codes: dict[str, int]

    def line(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def check_promises(stack: Stack, load: Load, *, events: bool = True,
                   within: float = 300.0) -> Verdict:
    """Each 250 stored once, nothing stored twice, every stored mail's events published at
    least once with the outbox id (waits for the relay to drain, with a generous deadline)."""
    accepted = load.accepted()
    # A 250 means the mail is in the intake table; the decide workers store it shortly after
    # (after a black-holed database, once the server has ended the orphaned transaction that held
    # the apply lock: MAILSVC_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS).
    wait_until(lambda: stack.undecided() == 0, within=within, what="every accepted mail decided",
               every=0.5)
    stored = stack.stored()
    twice = {m: c for m, c in stored.items() if c > 1}
    missing = accepted - set(stored)
    received: Counter[str] = Counter()
    outbox: list[dict[str, Any]] = []
    if events:
        def drained() -> bool:
            nonlocal outbox
            stack.published(received)
            outbox = stack.outbox()
            return all(row["id"] in received for row in outbox)

        with contextlib.suppress(AssertionError):
            wait_until(drained, within=within, what="every outbox event on the queue", every=1.0)
    verdict = Verdict(
        accepted=len(accepted),
        stored=len(stored),
        stored_twice=len(twice),
        accepted_not_stored=len(missing),
        events=len(outbox),
        events_missing=sum(1 for row in outbox if row["id"] not in received),
        events_redelivered=sum(c - 1 for c in received.values() if c > 1),
        codes={str(k): v for k, v in sorted(load.codes().items(), key=str)},
    )
    assert not twice, f"stored more than once: {sorted(twice)[:5]}"
    assert not missing, f"answered 250 but not stored: {sorted(missing)[:5]}"
    if events:
        ids = stack.email_ids()
        received_subjects = {row["subject"] for row in outbox if row["type"] == "email.received"}
        assert {f"email/{i}" for i in ids.values()} <= received_subjects, "a mail has no event"
        assert verdict.events_missing == 0, f"events never published: {verdict.line()}"
    report(verdict)
    return verdict


def report(verdict: Verdict, name: str | None = None) -> None:
    """Print the figures (pytest -s, and scripts/faults collects them)."""
    test = name or os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    figures(test, verdict.__dict__)


def figures(test: str, values: dict[str, Any]) -> None:
    """Record figures: printed (pytest -s) and appended to $FAULTS_REPORT (scripts/faults)."""
    line = json.dumps({"test": test, **values}, sort_keys=True, default=str)
    print(f"FAULTS {line}", flush=True)
    if path := os.environ.get("FAULTS_REPORT"):
        with open(path, "a") as handle:
            handle.write(line + "\n")


@contextlib.contextmanager
def running(stack: Stack, count: int = 1, **env: str) -> Iterator[list[Serve]]:
    processes = [stack.serve(**env) for _ in range(count)]
    for process in processes:
        process.wait_ready()
    yield processes
