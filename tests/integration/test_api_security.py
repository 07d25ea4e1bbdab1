"""The API's gate through real HTTP: keys, failed-attempt limit, body size, metrics labels,
what is open for load balancers, no internal detail in errors, lists that never read raw mail."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import string
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event
from sqlalchemy.pool import NullPool

from mailsvc.api.app import create_app
from mailsvc.api.server import EmbeddedServer
from mailsvc.bootstrap import Services, open_services
from mailsvc.config import Settings
from mailsvc.crmstore.db import create_engine, create_session_factory
from mailsvc.crmstore.models import Email, EmailAttachment, EmailLink, LinkTarget
from mailsvc.keys import hashed_form
from tests.conftest import base_settings

KEY = "s3cret-key-for-tests"
OTHER = "another-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MB = 1024 * 1024


@contextlib.asynccontextmanager
async def client_for(settings: Settings, client: tuple[str, int] = ("10.0.0.1", 5000),
                     ) -> AsyncIterator[httpx.AsyncClient]:
    async with open_services(settings, migrate=False) as svc:
        transport = httpx.ASGITransport(app=create_app(svc), client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"]
    return body


@pytest.fixture
def keyed(sqlite_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        # One key as it is, one as its digest: both must work.
        return base_settings(sqlite_url, api_keys=f"{KEY},{hashed_form(OTHER)}", **overrides)

    return make


# ------------------------------------------------------------------ who may see what
async def test_with_keys_only_health_and_the_bare_readiness_are_open(
    keyed: Callable[..., Settings],
) -> None:
    async with client_for(keyed()) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        bare = await c.get("/readyz")
        assert bare.status_code == 200 and bare.json() == {"status": "ok"}
        detail = (await c.get("/readyz", headers=AUTH)).json()
        assert detail["checks"]["database"] == "ok"
        problem(await c.get("/readyz", headers={"Authorization": "Bearer wrong"}), 401)
        for path in ("/metrics", "/api/v1/openapi.json", "/api/v1/docs", "/api/v1/users",
                     "/no/such/path"):
            problem(await c.get(path), 401)
        assert "mailsvc_api_requests" in (await c.get("/metrics", headers=AUTH)).text
        assert (await c.get("/api/v1/openapi.json", headers=AUTH)).json()["paths"]
        assert (await c.get("/api/v1/docs", headers=AUTH)).status_code == 200
        other = {"Authorization": f"Bearer {OTHER}"}
        assert (await c.get("/api/v1/users", headers=other)).status_code == 200
        problem(await c.get("/api/v1/users", headers={"Authorization": f"Bearer {KEY}x"}), 401)
        problem(await c.get("/api/v1/users", headers={"Authorization": f"Basic {KEY}"}), 401)


async def test_settings_open_metrics_docs_and_readiness_detail(
    keyed: Callable[..., Settings],
) -> None:
    async with client_for(keyed(api_public_docs=True, metrics_public=True,
                                readyz_detail_public=True)) as c:
        assert (await c.get("/readyz")).json()["checks"]["database"] == "ok"
        assert "mailsvc_api_requests" in (await c.get("/metrics")).text
        assert (await c.get("/api/v1/openapi.json")).status_code == 200
        assert (await c.get("/api/v1/docs")).status_code == 200
        problem(await c.get("/api/v1/users"), 401)


async def test_without_keys_the_api_is_open(sqlite_url: str) -> None:
    async with client_for(base_settings(sqlite_url)) as c:
        assert (await c.get("/api/v1/users")).status_code == 200
        assert (await c.get("/readyz")).json()["checks"]["database"] == "ok"
        assert (await c.get("/metrics")).status_code == 200


# ------------------------------------------------------------------ failed authentication
async def test_failed_authentication_is_logged_without_the_key_and_limited_per_client(
    keyed: Callable[..., Settings], caplog: pytest.LogCaptureFixture,
) -> None:
    guess = "guessed-key-0123456789"
    settings = keyed(api_auth_failures=3, api_auth_failure_window_seconds=600)
    async with open_services(settings, migrate=False) as svc:
        app = create_app(svc)
        attacker = httpx.AsyncClient(transport=httpx.ASGITransport(app=app,
                                                                   client=("10.6.6.6", 1)),
                                     base_url="http://test")
        someone = httpx.AsyncClient(transport=httpx.ASGITransport(app=app,
                                                                  client=("10.1.1.1", 1)),
                                    base_url="http://test")
        async with attacker, someone:
            with caplog.at_level(logging.WARNING, logger="mailsvc.api.guard"):
                for _ in range(3):
                    problem(await attacker.get("/api/v1/users",
                                               headers={"Authorization": f"Bearer {guess}"}), 401)
                refused = problem(await attacker.get("/api/v1/users"), 429)
                assert int(refused_headers(await attacker.get("/api/v1/users"))) >= 1
                # Blocked means blocked: the right key does not tell the attacker anything now.
                problem(await attacker.get("/api/v1/users", headers=AUTH), 429)
                problem(await attacker.post("/api/v1/accounts", headers=AUTH,
                                            json={"name": "X"}), 429)
            assert "too many" in refused["detail"]
            # Load balancers and other clients are not affected.
            assert (await attacker.get("/healthz")).status_code == 200
            assert (await attacker.get("/readyz")).json() == {"status": "ok"}
            assert (await someone.get("/api/v1/users", headers=AUTH)).status_code == 200
    failures = [r.getMessage() for r in caplog.records if "authentication failed" in r.getMessage()]
    assert len(failures) == 3 and all("10.6.6.6" in m and "/api/v1/users" in m
                                      for m in failures)
    assert "wrong key" in failures[0]
    assert any("too many failed authentications" in r.getMessage() for r in caplog.records)
    assert not any(guess in r.getMessage() or KEY in r.getMessage() for r in caplog.records)


def refused_headers(response: httpx.Response) -> str:
    assert response.status_code == 429
    return response.headers["retry-after"]


# ------------------------------------------------------------------ body size
class CountingBody:
    """A 200 MB request body, produced only as far as the server reads it."""

    def __init__(self, total: int = 200 * MB, chunk: int = MB) -> None:
        self.total, self.chunk = total, chunk
        self.produced = 0
        self.block = b"x" * chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.produced < self.total:
            self.produced += self.chunk
            yield self.block


async def test_a_200_mb_body_is_refused_without_being_read(
    keyed: Callable[..., Settings],
) -> None:
    async with client_for(keyed(api_max_body_bytes=MB)) as c:
        # No key: 401 before a byte of the body is read.
        body = CountingBody()
        problem(await c.post("/api/v1/accounts", content=body,
                             headers={"Content-Length": str(body.total)}), 401)
        assert body.produced == 0
        body = CountingBody()
        problem(await c.post("/api/v1/accounts", content=body), 401)  # chunked, no length
        assert body.produced == 0
        # A key and a declared length over the limit: 413 before reading.
        body = CountingBody()
        refused = problem(await c.post("/api/v1/accounts", content=body,
                                       headers={**AUTH, "Content-Length": str(body.total)}), 413)
        assert body.produced == 0 and str(MB) in refused["detail"]
        # A key and no length (chunked): read only up to the limit, then 413.
        body = CountingBody()
        problem(await c.post("/api/v1/accounts", content=body, headers=AUTH), 413)
        assert body.produced <= 2 * MB
        # Within the limit all is as before.
        created = await c.post("/api/v1/accounts", json={"name": "Acme"}, headers=AUTH)
        assert created.status_code == 201, created.text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def real_server(settings: Settings) -> AsyncIterator[int]:
    import uvicorn

    async with open_services(settings, migrate=False) as svc:
        port = free_port()
        server = EmbeddedServer(uvicorn.Config(create_app(svc), host="127.0.0.1", port=port,
                                               lifespan="off", log_level="warning"))
        task = asyncio.create_task(server.serve())
        try:
            for _ in range(600):
                if server.started:
                    break
                await asyncio.sleep(0.05)
            assert server.started
            yield port
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 60)


async def exchange(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send a request head (and part of a body), read the answer; the rest is never sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(-1), 60)  # the server closes
    finally:
        writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer


async def test_a_real_server_answers_before_the_body_arrives(
    keyed: Callable[..., Settings],
) -> None:
    async with real_server(keyed(api_max_body_bytes=MB)) as port:
        declared = (b"POST /api/v1/accounts HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 209715200\r\n")
        # Only the head of a 200 MB request is sent: the answers come all the same.
        status, answer = await exchange(port, declared + b"\r\n")
        assert status == 401 and b"application/problem+json" in answer
        status, answer = await exchange(port, declared + f"Authorization: Bearer {KEY}\r\n\r\n"
                                        .encode())
        assert status == 413 and b"application/problem+json" in answer
        # Chunked: the server reads up to the limit and refuses while the body still streams.
        chunked = (b"POST /api/v1/accounts HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                   b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                   + f"Authorization: Bearer {KEY}\r\n\r\n".encode())
        piece = 64 * 1024
        chunk = f"{piece:x}\r\n".encode() + b"x" * piece + b"\r\n"
        status, answer = await exchange(port, chunked, chunk * (MB // piece + 2))
        assert status == 413 and b"content-too-large" in answer


# ------------------------------------------------------------------ metric labels
def api_series() -> set[tuple[str, ...]]:
    found = set()
    for metric in REGISTRY.collect():
        if metric.name == "mailsvc_api_requests":
            for sample in metric.samples:
                if sample.name == "mailsvc_api_requests_total":
                    labels = sample.labels
                    found.add((labels["method"], labels["route"], labels["status"]))
    return found


async def test_made_up_methods_and_paths_add_no_metric_series(
    keyed: Callable[..., Settings],
) -> None:
    rng = random.Random(7)
    letters = string.ascii_uppercase
    before = api_series()
    async with client_for(keyed(), client=("10.0.0.1", 5000)) as c:
        for n in range(20_000):
            method = "".join(rng.choice(letters) for _ in range(8))
            path = f"/x{n}/" + "".join(rng.choice(string.ascii_lowercase) for _ in range(6))
            response = await c.request(method, path)
            assert response.status_code in (401, 429)
    async with client_for(keyed(), client=("10.0.0.2", 5000)) as c:
        for n in range(1, 50):  # one route template, however many ids
            await c.get(f"/api/v1/accounts/{n}", headers=AUTH)
            await c.request("BREW", f"/api/v1/accounts/{n}", headers=AUTH)
    added = api_series() - before
    assert len(added) <= 6, added
    assert {m for m, _, _ in api_series()} <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                               "OPTIONS", "other"}
    routes = {r for _, r, _ in added}
    assert routes <= {"unmatched", "/api/v1/accounts/{account_id}"}, routes
    assert ("GET", "/api/v1/accounts/{account_id}", "4xx") in api_series()
    assert ("other", "unmatched", "4xx") in api_series()


# ------------------------------------------------------------------ no internal detail
async def test_error_bodies_carry_no_internal_detail(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "store.db"
    url = f"sqlite+aiosqlite:///{missing}"
    engine = create_engine(url, poolclass=NullPool)
    services = Services(base_settings(url), engine, create_session_factory(engine),
                        pipeline=None, relay=None)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=create_app(services), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        for method, path, body in (("GET", "/api/v1/users", None),
                                   ("POST", "/api/v1/accounts", {"name": "Acme"}),
                                   ("GET", "/api/v1/emails", None)):
            response = await c.request(method, path, json=body)
            assert response.status_code >= 500
            assert response.headers["content-type"] == "application/problem+json"
            text = response.text.lower()
            for leak in ("sqlite", "operationalerror", "select", "insert", str(tmp_path).lower(),
                         "traceback", "unable to open"):
                assert leak not in text, (leak, response.text)
        bad_json = await c.post("/api/v1/accounts", content=b'{"name": ',
                                headers={"Content-Type": "application/json"})
        assert bad_json.status_code == 422 and "traceback" not in bad_json.text.lower()
    await engine.dispose()


# ------------------------------------------------------------------ lists never read raw mail
@contextlib.contextmanager
def statements(services: Services) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement.lower())

    target = services.engine.sync_engine
    event.listen(target, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(target, "before_cursor_execute", record)


async def test_email_lists_never_load_raw_bytes_or_bodies(services: Services) -> None:
    from mailsvc.crmstore import services as crm

    big = b"x" * (2 * MB)
    async with services.sessions() as session, session.begin():
        account = await crm.create_account(session, "Acme", ["acme.example"])
        for n in range(5):
            email = Email(dedup_key=f"k{n}", subject=f"Mail {n}", raw=big, size=len(big),
                          text_body="body " * 1000, html_body="<p>html</p>" * 1000,
                          headers=[["X-Big", "y" * 1000]], intake_role="bcc", outcome="linked",
                          from_email="c@acme.example")
            email.attachments.append(EmailAttachment(content_type="application/pdf", size=len(big),
                                                     content=big))
            email.links.append(EmailLink(target_type=LinkTarget.ACCOUNT, target_id=account.id,
                                         rule="address"))
            session.add(email)
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test/api/v1") as c:
        with statements(services) as seen:
            page = (await c.get("/emails")).json()
            assert page["total"] == 5 and page["items"][0]["subject"] == "Mail 4"
            timeline = (await c.get(f"/accounts/{account.id}/emails")).json()
            assert timeline["total"] == 5
            listed = list(seen)
            detail = (await c.get(f"/emails/{page['items'][0]['id']}")).json()
            assert detail["text_body"].startswith("body ")
    selects = [s for s in listed if s.lstrip().startswith("select")]
    assert selects and not any(loads(s, "raw", "text_body", "html_body", "headers", "reply_text",
                                      "content") for s in selects), selects
    detail_selects = [s for s in seen[len(listed):] if s.lstrip().startswith("select")]
    assert detail_selects
    assert not any(loads(s, "raw", "html_body", "headers", "content") for s in detail_selects)


def loads(statement: str, *columns: str) -> bool:
    """Whether a SELECT reads one of these columns of e-mails or attachments."""
    names = "|".join(columns)
    return re.search(rf'(emails|email_attachments)"?\."?({names})\b', statement) is not None


async def test_the_triage_page_signs_in_itself_within_the_same_failure_limit(
    keyed: Callable[..., Settings],
) -> None:
    async with client_for(keyed(api_auth_failures=2)) as c:
        assert (await c.get("/ui/login")).status_code == 200  # no bearer key needed
        # A key given as its digest signs in too.
        signed = await c.post("/ui/login", data={"key": OTHER, "next": "/ui/inbox"})
        assert signed.status_code == 303 and "mailsvc_ui" in signed.headers["set-cookie"]
        for _ in range(2):
            wrong = await c.post("/ui/login", data={"key": "guess", "next": "/ui/inbox"})
            assert wrong.status_code == 200 and "set-cookie" not in wrong.headers
        blocked = await c.post("/ui/login", data={"key": KEY, "next": "/ui/inbox"})
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
        problem(await c.get("/api/v1/users", headers=AUTH), 429)  # one limit for both doors
