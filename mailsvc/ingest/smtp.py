"""The SMTP intake (aiosmtpd): intake addresses only, bounded resources, 250 only after the accept
commit (raw bytes, envelope and dedup key durable; deciding follows in the decide stage).

``IntakeSMTP`` is aiosmtpd's protocol with the limits of docs/trust.md: connections in total and
per client address, messages receiving at once, line length, header count and size, idle and DATA
timeouts, and SMTP AUTH checked off the event loop. ``IntakeHandler`` makes the decisions: which
recipients, what envelope, which reply.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, AnyStr

import bcrypt
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from mailsvc import metrics
from mailsvc.config import SmtpSettings
from mailsvc.errors import StoreUnavailable
from mailsvc.ingest.pipeline import Pipeline
from mailsvc.ingest.sanitize import bad_address
from mailsvc.ingest.smtpdata import DataLimits, DataReader, read_data
from mailsvc.mail import Envelope as MailEnvelope
from mailsvc.mail import IntakeRoles, RawMail, Role
from mailsvc.ports import Listener, PortUnavailable

logger = logging.getLogger(__name__)

# Replies, named once (RFC 5321 codes with RFC 3463 enhanced status codes).
OK_RCPT = "250 2.1.5 Recipient ok"
UNKNOWN_RECIPIENT = "550 5.1.1 No such intake address here; this server does not relay"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
BAD_SENDER = "553 5.1.7 Bad sender address: control characters or invalid UTF-8"
BAD_RECIPIENT_BYTES = "553 5.1.3 Bad recipient address: control characters or invalid UTF-8"
STORAGE_FAILED = "451 4.3.0 Temporary storage failure, please try again later"
INTERNAL_ERROR = "451 4.3.0 Temporary local error, please try again later"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, please try again later"
TOO_MANY_FROM_YOU = "421 4.7.0 Too many connections from your address, please try again later"
BUSY = "451 4.3.2 Too many messages in progress, please try again later"
DATA_TIMEOUT = "421 4.4.2 Message not completed in time, closing connection"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
AUTH_TOO_MANY = "421 4.7.0 Too many failed authentication attempts, closing connection"
MAX_AUTH_FAILURES = 3
BCRYPT_MAX_PASSWORD = 72  # bytes: bcrypt looks at no more

# <local@domain> [parameters], local part and domain as dot-atoms (RFC 5321 4.1.2): the shape
# IntakeSMTP._getaddr reads without the full parser (a test checks both agree on it).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(
    rf"[ \t]*<(?P<local>{_ATOM}(?:\.{_ATOM})*)@(?P<domain>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>"
    r"[ \t]*(?P<rest>[^ \t(].*)?\Z", re.DOTALL)

# When one message is addressed to several intake roles, it is processed once, under this order.
ROLE_PRECEDENCE: tuple[Role, ...] = (Role.BCC, Role.SUPPORT, Role.SALES)


def pick_role(recipients: list[str], roles: Mapping[str, Role]) -> Role:
    """The role a mail is processed under; ``bcc+OPP-12@...`` counts as its base address."""
    find = roles.role_of if isinstance(roles, IntakeRoles) else roles.get
    found = {role for r in recipients if (role := find(r.lower())) is not None}
    return next(role for role in ROLE_PRECEDENCE if role in found)


def envelope_of(
    session: Session, envelope: Envelope, roles: Mapping[str, Role], source: str = "smtp"
) -> MailEnvelope:
    """The transport facts of one SMTP or LMTP transaction: sender, recipients, role, client
    (None on a unix socket), login."""
    peer = session.peer
    login = session.auth_data if session.authenticated else None
    return MailEnvelope(
        mail_from=envelope.mail_from or None,
        rcpt_tos=tuple(r.lower() for r in envelope.rcpt_tos),
        role=pick_role(envelope.rcpt_tos, roles),
        source=source,
        peer=str(peer[0]) if isinstance(peer, tuple) and peer else None,
        authenticated=login if isinstance(login, str) else None,
    )


class IntakeHandler:
    """aiosmtpd handler: the protocol stays in aiosmtpd, the decisions stay in the pipeline.

    One handler serves the SMTP and the LMTP intake (``source`` names which, ``auth`` whether
    SMTP AUTH is offered): same recipients, same limits, the same reply after the accept commit;
    LMTP repeats that reply once per accepted recipient (``IntakeLMTP``)."""

    def __init__(
        self, pipeline: Pipeline, smtp: SmtpSettings, *, source: str = "smtp",
        auth: bool | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._roles = pipeline.linking.intake_roles
        self._max_recipients = smtp.max_recipients
        self._auth = smtp.auth_users is not None if auth is None else auth
        self._source = source

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self._auth:
            return responses
        return [line for line in responses if not line[4:].upper().startswith("AUTH")]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        mail_options: list[str],
    ) -> str:
        if bad_address(address):
            logger.info("refused sender %r from %s", address, session.peer)
            return BAD_SENDER
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        if bad_address(address):
            return BAD_RECIPIENT_BYTES
        if "@" not in address:
            return BAD_RECIPIENT
        if self._roles.role_of(address) is None:
            logger.info("rejected recipient %s from %s", address, envelope.mail_from)
            return UNKNOWN_RECIPIENT
        if len(envelope.rcpt_tos) >= self._max_recipients:
            return TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        return OK_RCPT

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = RawMail(
            data=envelope.original_content or b"",
            envelope=envelope_of(session, envelope, self._roles, self._source),
        )
        try:
            outcome = await self._pipeline.accept(raw)
        except StoreUnavailable as exc:
            logger.error("451 for message from %s (%s): %s", envelope.mail_from, self._source,
                         exc)
            return STORAGE_FAILED
        except Exception:
            logger.exception("451 for message from %s (%s): unexpected error",
                             envelope.mail_from, self._source)
            return INTERNAL_ERROR
        if outcome.kind == "accepted":
            return f"250 2.0.0 Ok: queued as {outcome.intake_id}"
        return "250 2.0.0 Ok: duplicate, already accepted"


# ---------------------------------------------------------------- limits shared by connections


@dataclass(frozen=True, slots=True)
class SmtpLimits:
    max_connections: int
    max_connections_per_ip: int
    max_concurrent_data: int
    data_slot_wait: float
    max_line_bytes: int
    max_header_count: int
    max_header_bytes: int
    idle_timeout: float
    data_timeout: float

    def data(self, max_size: int | None) -> DataLimits:
        """The limits of one DATA section."""
        return DataLimits(self.max_line_bytes, self.max_header_count, self.max_header_bytes,
                          max_size)

    @classmethod
    def from_settings(cls, smtp: SmtpSettings) -> SmtpLimits:
        return cls(
            max_connections=smtp.max_connections,
            max_connections_per_ip=smtp.max_connections_per_ip,
            max_concurrent_data=smtp.max_concurrent_data,
            data_slot_wait=smtp.data_slot_wait,
            max_line_bytes=smtp.max_line_bytes,
            max_header_count=smtp.max_header_count,
            max_header_bytes=smtp.max_header_bytes,
            idle_timeout=smtp.idle_timeout,
            data_timeout=smtp.data_timeout,
        )


class Gate:
    """Counts the open connections (in total and per client address) and the messages being
    received, for one listening server."""

    def __init__(self, limits: SmtpLimits) -> None:
        self.limits = limits
        self.total = 0
        self.per_ip: Counter[str] = Counter()
        self._data = asyncio.Semaphore(limits.max_concurrent_data)

    def enter(self, ip: str) -> str | None:
        """Count a new connection, or return the reply that refuses it."""
        if self.total >= self.limits.max_connections:
            return TOO_MANY_CONNECTIONS
        if self.per_ip[ip] >= self.limits.max_connections_per_ip:
            return TOO_MANY_FROM_YOU
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def leave(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    async def data_slot(self) -> bool:
        """Wait a while for a free slot to receive a message in."""
        try:
            async with asyncio.timeout(self.limits.data_slot_wait):
                await self._data.acquire()
        except TimeoutError:
            return False
        return True

    def release_data(self) -> None:
        self._data.release()


# ---------------------------------------------------------------- SMTP AUTH


class AuthUsers:
    """``address:bcrypt-hash`` lines (``#`` comments); re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: float | None = None
        self._hashes: dict[str, bytes] = {}
        # Checked for unknown logins too, so an answer's timing tells nothing about who exists.
        self._dummy = bcrypt.hashpw(b"unknown", bcrypt.gensalt(rounds=10))

    def _load(self) -> dict[str, bytes]:
        try:
            stamp = os.stat(self._path).st_mtime
        except OSError as exc:
            logger.error("cannot read the SMTP AUTH users file %s: %s", self._path, exc)
            return {}
        if stamp != self._stamp:
            hashes: dict[str, bytes] = {}
            for line in self._path.read_text("utf-8").splitlines():
                login, sep, hashed = line.strip().partition(":")
                if sep and not login.startswith("#"):
                    hashes[login.strip().lower()] = hashed.strip().encode("ascii", "replace")
            self._hashes, self._stamp = hashes, stamp
        return self._hashes

    def check(self, login: str, password: bytes) -> bool:
        hashed = self._load().get(login.strip().lower())
        if len(password) > BCRYPT_MAX_PASSWORD:  # bcrypt would refuse it: never a valid one
            return False
        try:
            ok = bcrypt.checkpw(password, hashed or self._dummy)
        except ValueError:
            logger.error("SMTP AUTH users file: the entry of %s is not a bcrypt hash", login)
            return False
        return ok and hashed is not None


_PENDING = "pending"


class IntakeSMTP(SMTP):
    """aiosmtpd's SMTP with connection and message limits, bare-LF-tolerant DATA and AUTH that
    checks passwords in a thread."""

    # Every reply is counted by code; the LMTP intake counts in a series of its own.
    count_reply = staticmethod(metrics.record_smtp_reply)

    def __init__(
        self, handler: Any, *, gate: Gate, users: AuthUsers | None, **kwargs: Any
    ) -> None:
        # aiosmtpd sizes its StreamReader by this attribute: the longest line we read at all.
        self.line_length_limit = gate.limits.max_line_bytes
        super().__init__(handler, timeout=gate.limits.idle_timeout, **kwargs)
        self._gate = gate
        self._users = users
        self._counted: str | None = None
        self._refused = False
        self._auth_failures = 0

    async def push(self, status: AnyStr) -> None:
        """Every reply goes out here: count it by code (mailsvc_smtp_replies_total)."""
        self.count_reply(status if isinstance(status, str) else status.decode("ascii",
                                                                                "replace"))
        await super().push(status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address of MAIL FROM / RCPT TO and what follows it. The plain ``<local@domain>``
        that nearly every client sends is read by one regular expression; anything else (quoted
        local parts, comments, literals, the null sender) by aiosmtpd's RFC 5322 parser."""
        simple = _SIMPLE_PATH.match(arg)
        if simple is None or (
            self.local_part_limit and len(simple["local"]) > self.local_part_limit
        ):
            return super()._getaddr(arg)
        return f"{simple['local']}@{simple['domain']}", simple["rest"] or ""

    # ------------------------------------------------------------ connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and self._counted is None:  # not after STARTTLS
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
            refusal = self._gate.enter(ip)
            if refusal is not None:
                logger.warning("refused a connection from %s: %s", ip, refusal)
                self.count_reply(refusal)
                self._refused = True
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(refusal.encode("ascii") + b"\r\n")
                transport.close()
                return
            self._counted = ip
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._counted is not None:
            self._gate.leave(self._counted)
            self._counted = None
        super().connection_lost(error)

    def _peer(self) -> object:
        return self.session.peer if self.session is not None else None

    # ------------------------------------------------------------ AUTH

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd calls this synchronously; the bcrypt check runs later, in a thread.
        return AuthResult(success=False, handled=False, message=_PENDING, auth_data=auth_data)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._finish_auth(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._finish_auth(await super().auth_LOGIN(_, args))

    async def _finish_auth(self, result: AuthResult) -> AuthResult:
        if result.message != _PENDING:
            return result
        data = result.auth_data
        ok = False
        login = ""
        if self._users is not None and isinstance(data, LoginPassword):
            login = data.login.decode("utf-8", "replace").strip().lower()
            ok = await asyncio.to_thread(self._users.check, login, data.password)
        if ok:
            logger.info("SMTP AUTH as %s from %s", login, self._peer())
            return AuthResult(success=True, auth_data=login, message=AUTH_OK)
        self._auth_failures += 1
        logger.warning("SMTP AUTH failed for %r from %s", login, self._peer())
        if self._auth_failures >= MAX_AUTH_FAILURES:
            await self.push(AUTH_TOO_MANY)
            if self.transport is not None:
                self.transport.close()
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=AUTH_FAILED)

    # ------------------------------------------------------------ DATA

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if not await self._gate.data_slot():
            await self.push(BUSY)
            return
        try:
            await self._data()
        finally:
            self._gate.release_data()

    async def final_replies(self, status: str, recipients: int) -> None:
        """The reply to the end of DATA: one in SMTP (LMTP gives one per accepted recipient)."""
        await self.push(status)

    async def _data(self) -> None:
        assert self.envelope is not None
        recipients = len(self.envelope.rcpt_tos)
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        reader = DataReader(self._gate.limits.data(self.data_size_limit))
        try:
            async with asyncio.timeout(self._gate.limits.data_timeout):
                # The idle timer is reset while data keeps coming: the connection is not idle.
                await read_data(self._reader, reader, self._reset_timeout)
        except asyncio.IncompleteReadError:
            return  # the connection is gone
        except TimeoutError:
            logger.warning("%s: DATA not completed in time", self._peer())
            await self.push(DATA_TIMEOUT)
            if self.transport is not None:
                self.transport.close()
            return
        if reader.problem is not None:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.final_replies(reader.problem, recipients)
            return
        assert self.envelope is not None
        content = reader.content()
        self.envelope.content = self.envelope.original_content = content
        del content
        # The idle timer must not cut the connection while the store works on the reply.
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            self._reset_timeout()
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.final_replies("250 OK" if status is MISSING else status, recipients)


def tls_context(smtp: SmtpSettings) -> ssl.SSLContext | None:
    """The STARTTLS context from the configured certificate and key, if any."""
    if smtp.tls_cert is None or smtp.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(smtp.tls_cert, smtp.tls_key)
    return context


def intake_protocol(pipeline: Pipeline, smtp: SmtpSettings, *, source: str, ident: str,
                    gate: Gate) -> dict[str, Any]:
    """What the SMTP and the LMTP protocol objects share: one handler, the gate of their
    listener, the pipeline's size limit, raw bytes, the hostname they greet with. AUTH is
    offered over SMTP only (when configured)."""
    auth = None if source == "smtp" else False
    return {
        "handler": IntakeHandler(pipeline, smtp, source=source, auth=auth),
        "gate": gate, "data_size_limit": pipeline.intake.max_message_bytes,
        "enable_SMTPUTF8": True, "decode_data": False, "hostname": smtp.hostname, "ident": ident,
    }


def smtp_factory(pipeline: Pipeline, smtp: SmtpSettings) -> partial[IntakeSMTP]:
    """A protocol factory for ``loop.create_server`` (one SMTP object per connection); the
    intake addresses and the size limit are the pipeline's."""
    users = AuthUsers(smtp.auth_users) if smtp.auth_users else None
    return partial(
        IntakeSMTP,
        **intake_protocol(pipeline, smtp, source="smtp", ident="mailsvc ESMTP",
                          gate=Gate(SmtpLimits.from_settings(smtp))),
        users=users,
        tls_context=tls_context(smtp),
        require_starttls=smtp.require_tls,
        auth_require_tls=not smtp.auth_allow_plaintext,
        auth_exclude_mechanism=() if users else ("PLAIN", "LOGIN"),
    )


async def start_smtp(pipeline: Pipeline, smtp: SmtpSettings) -> asyncio.Server:
    """Listen for SMTP; ``PortUnavailable`` (one line naming the setting) when the port is taken."""
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            smtp_factory(pipeline, smtp), host=smtp.host, port=smtp.port,
            reuse_port=smtp.reuse_port,
        )
    except OSError as exc:
        listener = Listener(smtp.host, smtp.port, "MAILSVC_SMTP_PORT")
        raise PortUnavailable(listener.refusal(exc)) from None
    logger.info("SMTP intake listening on %s:%s", smtp.host, smtp.port)
    return server
