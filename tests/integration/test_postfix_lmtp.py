"""A real Postfix delivering through its lmtp transport, set up as docs/postfix.md says: over TCP
to `mailsvc serve`, and over the unix socket while the store is down and after it is back."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mailsvc.crmstore.models import Email
from tests.conftest import BCC, SUPPORT, base_settings
from tests.integration.test_lmtp_intake import running
from tests.integration.test_postfix import (
    NOT_INTAKE,
    STORE_DOWN_URL,
    bounced_lines,
    delivered,
    doc_blocks,
    free_port,
    inject,
    linked_to,
    mail,
    main_cf,
    opportunity_number,
    serve,
    store,
    with_capture,
)
from tests.support.postfix import failed_recipients, running_postfix
from tests.support.waiting import wait_for

DOC_PORT = ":8024"
DOC_SOCKET = "/run/mailsvc/lmtp.sock"


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """The socket's folder as the docs make it: setgid, group postfix, mode 2750."""
    folder = Path(tempfile.mkdtemp(prefix="mailsvc-lmtp-"))
    shutil.chown(folder, group="postfix")
    os.chmod(folder, 0o2750)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def test_lmtp_over_tcp_delivers_each_mail_once_and_bounces_only_the_refused_recipient(
    database_url: str, tmp_path: Path
) -> None:
    settings = main_cf(doc_blocks("LMTP mode")[0])  # relay_domains + transport_maps (inet)
    assert f"lmtp:inet:127.0.0.1{DOC_PORT}" in settings["transport_maps"]
    port = free_port()
    extra = {"MAILSVC_LMTP_PORT": str(port)}
    async with (
        store(database_url) as sessions,
        serve(database_url, tmp_path, extra, listens_on=port),
    ):
        number, opportunity = await opportunity_number(sessions)
        settings["transport_maps"] = with_capture(
            settings["transport_maps"].replace(DOC_PORT, f":{port}"))
        with running_postfix(settings) as postfix:
            for n in range(10):
                await inject(postfix, mail(n, f"Re: Your quote [{number}]", "lmtp"), BCC)
            await inject(postfix, mail(10, f"Re: [{number}] and a stranger", "lmtp"),
                         BCC, SUPPORT, NOT_INTAKE)
            ids = await delivered(postfix, sessions, 11)
            assert sorted(ids) == sorted(f"lmtp-{n}@mailsvc.example" for n in range(11))
            assert await linked_to(sessions, opportunity) == 11
            # Each intake recipient got its own 250 after DATA; the stranger a 550 at RCPT.
            assert len(re.findall(r"relay=127\.0\.0\.1.*status=sent", postfix.log)) == 12
            bounces = postfix.bounces()
            assert len(bounces) == 1
            assert failed_recipients(bounces[0]) == {NOT_INTAKE}
            assert "550 5.1.1" in postfix.log
            assert bounced_lines(postfix) == [NOT_INTAKE]


async def test_lmtp_over_the_socket_defers_while_the_store_is_down_then_delivers_once(
    database_url: str, socket_dir: Path
) -> None:
    settings = main_cf(doc_blocks("LMTP mode")[1])  # relay_domains + transport_maps (unix)
    assert f"lmtp:unix:{DOC_SOCKET}" in settings["transport_maps"]
    path = socket_dir / "lmtp.sock"
    settings["transport_maps"] = with_capture(
        settings["transport_maps"].replace(DOC_SOCKET, str(path)))
    down = base_settings(STORE_DOWN_URL.format(port=free_port()), lmtp_socket=path)
    assert down.lmtp_socket_mode == 0o660  # the default: Postfix connects through the group
    with running_postfix(settings) as postfix:
        async with running(down):
            made, folder = path.stat(), socket_dir.stat()  # noqa: ASYNC240 (a local stat)
            assert made.st_gid == folder.st_gid
            assert stat.S_IMODE(made.st_mode) == 0o660
            for n in range(5):
                await inject(postfix, mail(n, "While the store is down", "sock"), BCC, SUPPORT)

            async def all_deferred() -> bool:
                return (postfix.log.count("451 4.3.0") >= 10
                        and postfix.queued("deferred") == 5)

            await wait_for(all_deferred, within=60, interval=0.1, what="5 mails deferred")
        assert not path.exists()
        async with (
            store(database_url) as sessions,
            running(base_settings(database_url, lmtp_socket=path)),
        ):
            await asyncio.to_thread(postfix.flush)
            ids = await delivered(postfix, sessions, 5)
            assert sorted(ids) == sorted(f"sock-{n}@mailsvc.example" for n in range(5))
            async with sessions() as session:
                sources = set(await session.scalars(select(Email.source)))
            assert sources == {"lmtp"}
        assert postfix.bounces() == []
        assert bounced_lines(postfix) == []
