"""The LMTP intake (RFC 2033, aiosmtpd's LMTP) over TCP and a unix socket: the SMTP intake's
handler, limits and promise, with one reply per accepted recipient after the accept commit.

A message is accepted once (one commit for all its recipients, as over SMTP), so after DATA every
accepted recipient gets the same reply: ``250`` once the raw bytes are committed, ``451 4.3.0``
for each when the store is down or the commit is late (the client keeps the message for all of
them and retries), ``552`` for each when the message is too big. An unknown recipient is refused at
RCPT, exactly as over SMTP.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from aiosmtpd.lmtp import LMTP

from mailsvc import metrics
from mailsvc.config import SmtpSettings
from mailsvc.ingest.pipeline import Pipeline
from mailsvc.ingest.smtp import Gate, IntakeSMTP, SmtpLimits, intake_protocol
from mailsvc.ports import Listener, PortUnavailable, bind_unix, remove_socket

logger = logging.getLogger(__name__)


class IntakeLMTP(IntakeSMTP, LMTP):
    """The intake's SMTP protocol with LMTP's greeting (LHLO; HELO and EHLO refused) and its
    replies after DATA: one per accepted recipient, in RCPT order."""

    count_reply = staticmethod(metrics.record_lmtp_reply)

    async def final_replies(self, status: str, recipients: int) -> None:
        for _ in range(max(recipients, 1)):
            await self.push(status)


def lmtp_factory(pipeline: Pipeline, smtp: SmtpSettings, gate: Gate) -> partial[IntakeLMTP]:
    """A protocol factory for ``create_server`` / ``create_unix_server`` (one per connection).

    No STARTTLS and no AUTH: LMTP is for a local MTA, on loopback or a unix socket."""
    return partial(
        IntakeLMTP,
        **intake_protocol(pipeline, smtp, source="lmtp", ident="mailsvc LMTP", gate=gate),
        users=None,
        auth_exclude_mechanism=("PLAIN", "LOGIN"),
    )


@dataclass
class LmtpIntake:
    """The LMTP servers of one process (TCP, unix socket, either or none)."""

    servers: list[asyncio.Server] = field(default_factory=list)
    socket_path: Path | None = None
    socket_inode: int | None = None

    @property
    def port(self) -> int | None:
        """The TCP port listened on (the real one when MAILSVC_LMTP_PORT is 0)."""
        for server in self.servers:
            for sock in server.sockets:
                name = sock.getsockname()
                if isinstance(name, tuple):
                    return int(name[1])
        return None

    def close(self) -> None:
        """No new connections; the socket file goes, so nobody connects to a closing server."""
        for server in self.servers:
            server.close()
        if self.socket_path is not None and self.socket_inode is not None:
            remove_socket(self.socket_path, self.socket_inode)

    async def wait_closed(self) -> None:
        for server in self.servers:
            await server.wait_closed()


async def start_lmtp(pipeline: Pipeline, smtp: SmtpSettings) -> LmtpIntake:
    """Listen for LMTP as configured (nothing when neither port nor socket is set);
    ``PortUnavailable`` (one line naming the setting) when an address is taken."""
    intake = LmtpIntake()
    if smtp.lmtp_port is None and smtp.lmtp_socket is None:
        return intake
    loop = asyncio.get_running_loop()
    # One gate for both listeners: the SMTP limits hold for the LMTP intake as a whole.
    factory = lmtp_factory(pipeline, smtp, Gate(SmtpLimits.from_settings(smtp)))
    try:
        if smtp.lmtp_port is not None:
            try:
                intake.servers.append(await loop.create_server(
                    factory, host=smtp.lmtp_host, port=smtp.lmtp_port,
                    reuse_port=smtp.reuse_port,
                ))
            except OSError as exc:
                listener = Listener(smtp.lmtp_host, smtp.lmtp_port, "MAILSVC_LMTP_PORT")
                raise PortUnavailable(listener.refusal(exc)) from None
            logger.info("LMTP intake listening on %s:%s", smtp.lmtp_host, intake.port)
        if smtp.lmtp_socket is not None:
            path = smtp.lmtp_socket
            sock = bind_unix(path, smtp.lmtp_socket_mode)
            # The file's inode (not the socket's): on shutdown only our own file is removed.
            intake.socket_path, intake.socket_inode = path, os.lstat(path).st_ino
            intake.servers.append(await loop.create_unix_server(factory, sock=sock))
            logger.info("LMTP intake listening on %s (mode %04o)", path,
                        smtp.lmtp_socket_mode)
    except BaseException:
        intake.close()
        await intake.wait_closed()
        raise
    return intake
