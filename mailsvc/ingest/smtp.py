"""The SMTP intake (aiosmtpd): intake addresses only, size limit, 250 only after the accept
commit (raw bytes, envelope and dedup key durable; deciding follows in the decide workers)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from functools import partial

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailsvc.config import Settings
from mailsvc.errors import StoreUnavailable
from mailsvc.ingest.pipeline import Pipeline
from mailsvc.mail import Envelope as MailEnvelope
from mailsvc.mail import RawMail, Role

logger = logging.getLogger(__name__)

# Replies, named once (RFC 5321 codes with RFC 3463 enhanced status codes).
OK_RCPT = "250 2.1.5 Recipient ok"
UNKNOWN_RECIPIENT = "550 5.1.1 No such intake address here; this server does not relay"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
STORAGE_FAILED = "451 4.3.0 Temporary storage failure, please try again later"
INTERNAL_ERROR = "451 4.3.0 Temporary local error, please try again later"

# When one message is addressed to several intake roles, it is processed once, under this order.
ROLE_PRECEDENCE: tuple[Role, ...] = (Role.BCC, Role.SUPPORT, Role.SALES)


def pick_role(recipients: list[str], roles: dict[str, Role]) -> Role:
    found = {roles[r.lower()] for r in recipients if r.lower() in roles}
    return next(role for role in ROLE_PRECEDENCE if role in found)


class IntakeHandler:
    """aiosmtpd handler: the protocol stays in aiosmtpd, the decisions stay in the pipeline."""

    def __init__(self, pipeline: Pipeline, settings: Settings) -> None:
        self._pipeline = pipeline
        self._roles = settings.intake_roles
        self._max_recipients = settings.max_recipients

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        if "@" not in address:
            return BAD_RECIPIENT
        if address.lower() not in self._roles:
            logger.info("rejected recipient %s from %s", address, envelope.mail_from)
            return UNKNOWN_RECIPIENT
        if len(envelope.rcpt_tos) >= self._max_recipients:
            return TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        return OK_RCPT

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        data = envelope.original_content or b""
        raw = RawMail(
            data=data,
            envelope=MailEnvelope(
                mail_from=envelope.mail_from or None,
                rcpt_tos=tuple(r.lower() for r in envelope.rcpt_tos),
                role=pick_role(envelope.rcpt_tos, self._roles),
                source="smtp",
            ),
        )
        try:
            outcome = await self._pipeline.accept(raw)
        except StoreUnavailable as exc:
            logger.error("451 for message from %s: %s", envelope.mail_from, exc)
            return STORAGE_FAILED
        except Exception:
            logger.exception("451 for message from %s: unexpected error", envelope.mail_from)
            return INTERNAL_ERROR
        if outcome.kind == "accepted":
            return f"250 2.0.0 Ok: queued as {outcome.intake_id}"
        return "250 2.0.0 Ok: duplicate, already accepted"


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The STARTTLS context from the configured certificate and key, if any."""
    if settings.smtp_tls_cert is None or settings.smtp_tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.smtp_tls_cert, settings.smtp_tls_key)
    return context


def smtp_factory(pipeline: Pipeline, settings: Settings) -> partial[SMTP]:
    """A protocol factory for ``loop.create_server`` (one SMTP object per connection)."""
    return partial(
        SMTP,
        IntakeHandler(pipeline, settings),
        data_size_limit=settings.max_message_bytes,
        enable_SMTPUTF8=True,
        decode_data=False,
        hostname=settings.smtp_hostname,
        ident="mailsvc ESMTP",
        tls_context=tls_context(settings),
        require_starttls=settings.smtp_require_tls,
    )


async def start_smtp(pipeline: Pipeline, settings: Settings) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        smtp_factory(pipeline, settings), host=settings.smtp_host, port=settings.smtp_port,
        reuse_port=settings.smtp_reuse_port,
    )
    logger.info("SMTP intake listening on %s:%s", settings.smtp_host, settings.smtp_port)
    return server
