"""IMAP intake: one poller per configured mailbox, feeding the same pipeline as SMTP.

Each poller owns one thread (imapclient blocks) and one connection. It fetches the messages above
the last UID it committed, hands them to the pipeline, and only after their commit flags them
\\Seen or moves them (quarantined ones to the quarantine folder), then records the new last UID.
The UID is recorded right after the commit, not inside it: the pipeline's group commit mixes mails
from every adapter in one transaction, and a crash between the two only replays mails that the
idempotency key turns into harmless ``duplicate`` outcomes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from imapclient import DELETED, SEEN, IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mailsvc import metrics
from mailsvc.config import ImapMailbox, ImapSettings
from mailsvc.crmstore.models import MailboxState
from mailsvc.errors import StoreUnavailable
from mailsvc.ingest.oauth2 import AccessToken, TokenError, TokenSource, renew_at
from mailsvc.ingest.pipeline import Pipeline
from mailsvc.mail import Envelope, RawMail

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long one blocking IDLE wait lasts before the thread comes back to the event loop, so a
# shutdown never waits on a thread parked in IDLE for minutes.
IDLE_SLICE_SECONDS = 1.0
CLOSE_TIMEOUT_SECONDS = 2.0
# A session lasts at least this long even when its token is short-lived, so a token endpoint
# that hands out (nearly) expired tokens cannot drive a tight login loop.
MIN_SESSION_SECONDS = 1.0


class Client(IMAPClient):  # type: ignore[misc]  # imapclient has no type hints
    """imapclient, made to see every change the server reports around IDLE.

    imaplib reads the socket through a buffer, and imapclient's ``idle_check`` polls the socket
    before it reads. Dovecot sends ``+ idling`` and ``* 4 EXISTS`` (for a mail that came after the
    last command) in one packet: ``idle()`` reads the first line, the second waits in the buffer,
    invisible to poll(), until the IDLE times out. And untagged responses that arrive with another
    command (``* 4 EXISTS`` at the end of a SEARCH that did not yet see that mail) are kept in
    imaplib's list, where nothing looks. This class closes both gaps; it relies on imaplib's
    ``file`` and ``untagged_responses`` and on imapclient's poll hook, all stable for years.
    """

    def take_new_mail_reported(self) -> bool:
        """Whether the server said EXISTS since the last call (and forget what it said).

        Also keeps the list from growing for the life of the connection.
        """
        responses = self._imap.untagged_responses
        responses.pop("RECENT", None)
        return bool(responses.pop("EXISTS", None))

    def _poll_socket(self, sock: socket.socket, timeout: float | None = None) -> Any:
        return self._poll_buffered(super()._poll_socket, sock, timeout)

    def _select_poll_socket(self, sock: socket.socket, timeout: float | None = None) -> Any:
        return self._poll_buffered(super()._select_poll_socket, sock, timeout)

    def _poll_buffered(
        self, poll: Callable[[socket.socket, float | None], Any], sock: socket.socket,
        timeout: float | None,
    ) -> Any:
        # idle_check() has made the socket non-blocking, so a peek never waits.
        if self._peek():
            return [sock]
        events = poll(sock, timeout)
        if events:
            data = self._peek()
            if data == b"":  # readable, yet nothing to read: the server closed the connection
                raise self.AbortError("socket error: EOF (the server closed the connection)")
            if data is None:  # only part of a TLS record so far
                return []
        return events

    def _peek(self) -> bytes | None:
        """Bytes received but not read yet; b"" at EOF (or nothing yet on a plain socket)."""
        try:
            return bytes(self._imap.file.peek(1))
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None


@dataclass(slots=True)
class Connection:
    """A logged-in client with the selected folder's facts."""

    client: Client
    uidvalidity: int
    can_idle: bool
    can_move: bool
    can_uid_expunge: bool
    idling: bool = False
    renew_at: float | None = None  # time.time() when its OAuth2 token must be renewed


class SessionRenewal(Exception):  # not an error: the token is about to expire
    """Log in again with a fresh token before the session's token expires."""


def backoff_delay(attempt: int, initial: float, cap: float) -> float:
    """Exponential backoff with jitter: half fixed, half random, so pollers do not march in step."""
    delay = min(cap, initial * 2.0 ** min(attempt, 30))
    return delay / 2 + random.uniform(0, delay / 2)


def tls_context(mailbox: ImapMailbox) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=str(mailbox.ca_file) if mailbox.ca_file else None
    )
    if not mailbox.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def log_in(client: IMAPClient, mailbox: ImapMailbox, token: AccessToken | None = None) -> None:
    """Log in with the mailbox's password, or its OAuth2 token (fetched here unless given)."""
    oauth2 = mailbox.oauth2
    if oauth2 is None:
        client.login(mailbox.username, mailbox.secret())
        return
    if token is None:
        token = TokenSource(oauth2, mailbox.username).token()
    if oauth2.mechanism == "OAUTHBEARER":
        client.oauthbearer_login(mailbox.username, token.value)
    else:
        client.oauth2_login(mailbox.username, token.value)


class MailboxPoller:
    """Watches one folder of one mailbox until cancelled; reconnects on any failure."""

    def __init__(
        self,
        mailbox: ImapMailbox,
        pipeline: Pipeline,
        sessions: async_sessionmaker[AsyncSession],
        address: str,
        max_bytes: int | None = None,
    ) -> None:
        self.mailbox = mailbox
        self._max_bytes = max_bytes
        self._pipeline = pipeline
        self._sessions = sessions
        self._envelope = Envelope(None, (address,), mailbox.role, "imap")
        self._state_name = f"{mailbox.name}/{mailbox.folder}"
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"imap-{mailbox.name}")
        self.counts: Counter[str] = Counter()  # outcomes seen, by kind
        self.connects = 0
        self.last_error: str | None = None
        self.waiting = False  # caught up, waiting in IDLE or between polls
        self.connected = False
        self._progressed = False  # this connection committed mail or caught up
        self.tokens = (TokenSource(mailbox.oauth2, mailbox.username)
                       if mailbox.oauth2 is not None else None)

    async def _call(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, partial(func, *args)
        )

    async def run(self) -> None:
        attempt = 0
        try:
            while True:
                connection: Connection | None = None
                self._progressed = False
                renewing = False
                try:
                    connection = await self._call(self._connect)
                    self.connects += 1
                    self.connected = True
                    metrics.set_imap_connected(self.mailbox.name, True)
                    logger.info(
                        "mailbox %s: connected to %s:%s, watching %s (%s)",
                        self.mailbox.name, self.mailbox.host, self.mailbox.effective_port,
                        self.mailbox.folder,
                        "IDLE" if connection.can_idle and self.mailbox.idle else
                        f"polling every {self.mailbox.poll_interval:g}s",
                    )
                    await self._watch(connection)
                except SessionRenewal:
                    renewing = True
                    logger.info("mailbox %s: OAuth2 token about to expire, logging in again",
                                self.mailbox.name)
                except Exception as exc:
                    self._report(exc)
                finally:
                    self.connected = False
                    metrics.set_imap_connected(self.mailbox.name, False)
                    if connection is not None:
                        # Queued on the poller's thread; never awaited, so cancellation is quick.
                        self._executor.submit(self._close, connection)
                if renewing:
                    attempt = 0
                    continue
                if self._progressed:  # it worked for a while: start the backoff afresh
                    attempt = 0
                delay = backoff_delay(
                    attempt, self.mailbox.backoff_initial, self.mailbox.backoff_max
                )
                attempt += 1
                logger.info("mailbox %s: reconnecting in %.1fs", self.mailbox.name, delay)
                await asyncio.sleep(delay)
        finally:
            self._executor.shutdown(wait=False)

    def status(self) -> dict[str, Any]:
        """What /readyz tells about this mailbox."""
        oauth2 = self.mailbox.oauth2
        return {
            "state": "connected" if self.connected else "reconnecting",
            "auth": f"oauth2 {oauth2.mechanism}" if oauth2 else "password",
            "last_error": self.last_error,
            "connects": self.connects,
            "messages": dict(self.counts),
        }

    def _report(self, exc: Exception) -> None:
        name, where = self.mailbox.name, f"{self.mailbox.host}:{self.mailbox.effective_port}"
        oauth2 = self.mailbox.oauth2
        if isinstance(exc, TokenError):
            kind = "token"
            endpoint = self.tokens.endpoint if self.tokens else "?"
            message = f"no OAuth2 token for {self.mailbox.username} from {endpoint}: {exc}"
        elif isinstance(exc, ssl.SSLCertVerificationError):
            kind = "tls"
            hint = ("check host" if "hostname" in str(exc.verify_message).lower()
                    else "for a private CA set ca_file")
            message = f"TLS certificate of {where} not trusted ({exc.verify_message}); {hint}"
        elif isinstance(exc, LoginError):
            kind = "login"
            how = f" ({oauth2.mechanism} token)" if oauth2 else ""
            message = f"login as {self.mailbox.username}{how} refused by {where}: {_text(exc)}"
        elif isinstance(exc, StoreUnavailable):
            kind = "store"
            message = f"store unavailable, messages stay in the mailbox: {exc}"
        elif isinstance(exc, IMAPClientError | OSError):
            kind = "network"
            message = f"IMAP error with {where}: {type(exc).__name__}: {_text(exc)}"
        else:
            kind = "other"
            logger.exception("mailbox %s: unexpected error", name)
            message = f"unexpected error: {exc!r}"
        self.last_error = message
        metrics.record_imap_error(name, kind)
        logger.error("mailbox %s: %s", name, message)

    # --- blocking side, run on the poller's own thread -------------------------------------

    def _connect(self) -> Connection:
        mailbox = self.mailbox
        # The token first: no use connecting without one.
        token = self.tokens.token() if self.tokens is not None else None
        context = tls_context(mailbox) if mailbox.tls != "none" else None
        client = Client(
            mailbox.host, port=mailbox.effective_port, ssl=mailbox.tls == "ssl",
            ssl_context=context, timeout=mailbox.timeout,
        )
        try:
            if mailbox.tls == "starttls":
                client.starttls(context)
            log_in(client, mailbox, token)
            for folder in self._side_folders():
                if not client.folder_exists(folder):
                    client.create_folder(folder)
            selected = client.select_folder(mailbox.folder)
            capabilities = set(client.capabilities())
        except BaseException:
            client.shutdown()
            raise
        return Connection(
            client,
            int(selected[b"UIDVALIDITY"]),
            can_idle=b"IDLE" in capabilities,
            can_move=b"MOVE" in capabilities,
            can_uid_expunge=b"UIDPLUS" in capabilities,
            renew_at=(max(renew_at(token, mailbox.oauth2.refresh_margin),
                          time.time() + MIN_SESSION_SECONDS)
                      if token is not None and mailbox.oauth2 is not None else None),
        )

    def _side_folders(self) -> list[str]:
        folders = []
        if self.mailbox.processed == "move":
            folders.append(self.mailbox.processed_folder)
        if self.mailbox.quarantine_folder:
            folders.append(self.mailbox.quarantine_folder)
        return folders

    def _new_uids(self, connection: Connection, last_uid: int) -> tuple[list[int], bool]:
        """UIDs above ``last_uid``, and whether new mail was reported during the search.

        Dovecot searches the folder as this session last saw it, and reports a mail that arrived
        since then only at the end of the SEARCH, as ``* n EXISTS``, not in its result; nor does
        it repeat that when IDLE starts. Such a report means: search again before waiting.
        """
        client = connection.client
        client.take_new_mail_reported()  # those came before this search; it sees their mail
        # "n:*" always matches the newest message even below n, hence the filter.
        found = client.search(["UID", f"{last_uid + 1}:*", "NOT", "DELETED"])
        return sorted(uid for uid in found if uid > last_uid), client.take_new_mail_reported()

    def _fetch(
        self, connection: Connection, uids: Sequence[int], max_bytes: int | None
    ) -> tuple[dict[int, bytes], dict[int, int]]:
        """The messages' bytes, and the sizes of those above ``max_bytes`` (not downloaded)."""
        too_large: dict[int, int] = {}
        if max_bytes is not None:
            sizes = connection.client.fetch(uids, ["RFC822.SIZE"])
            too_large = {
                uid: int(data[b"RFC822.SIZE"]) for uid, data in sizes.items()
                if int(data.get(b"RFC822.SIZE", 0)) > max_bytes
            }
            uids = [uid for uid in uids if uid not in too_large]
        if not uids:
            return {}, too_large
        # BODY.PEEK leaves \Seen alone: the flag is set only after the commit.
        response = connection.client.fetch(uids, ["BODY.PEEK[]"])
        fetched = {uid: data[b"BODY[]"] for uid, data in response.items() if b"BODY[]" in data}
        return fetched, too_large

    def _settle(self, connection: Connection, done: list[int], quarantined: list[int]) -> None:
        mailbox = self.mailbox
        if quarantined and mailbox.quarantine_folder:
            self._move(connection, quarantined, mailbox.quarantine_folder)
        else:
            done = done + quarantined
        if not done:
            return
        if mailbox.processed == "move":
            self._move(connection, done, mailbox.processed_folder)
        else:
            connection.client.add_flags(done, [SEEN])

    @staticmethod
    def _move(connection: Connection, uids: list[int], folder: str) -> None:
        client = connection.client
        if connection.can_move:
            client.move(uids, folder)
            return
        client.copy(uids, folder)
        client.add_flags(uids, [DELETED])
        if connection.can_uid_expunge:
            client.expunge(uids)
        else:
            client.expunge()

    def _idle_start(self, connection: Connection) -> None:
        connection.client.idle()
        connection.idling = True

    @staticmethod
    def _idle_wait(connection: Connection, seconds: float) -> list[Any]:
        return list(connection.client.idle_check(timeout=seconds))

    @staticmethod
    def _idle_stop(connection: Connection) -> None:
        connection.idling = False
        connection.client.idle_done()

    @staticmethod
    def _close(connection: Connection) -> None:
        client = connection.client
        try:
            sock = client.socket()
            sock.settimeout(CLOSE_TIMEOUT_SECONDS)
            if connection.idling:
                client.idle_done()
            client.logout()
        except Exception:  # the connection is going away anyway
            client.shutdown()

    # --- async side ------------------------------------------------------------------------

    async def _watch(self, connection: Connection) -> None:
        last_uid = await self._load_state(connection.uidvalidity)
        while True:
            if connection.renew_at is not None and time.time() >= connection.renew_at:
                raise SessionRenewal
            uids, reported = await self._call(self._new_uids, connection, last_uid)
            metrics.record_imap_check(self.mailbox.name)
            if not uids:
                if not reported:
                    await self._wait_for_mail(connection)
                continue
            for start in range(0, len(uids), self.mailbox.fetch_batch):
                chunk = uids[start:start + self.mailbox.fetch_batch]
                last_uid = await self._ingest(connection, chunk, last_uid)

    async def _ingest(self, connection: Connection, uids: list[int], last_uid: int) -> int:
        fetched, too_large = await self._call(self._fetch, connection, uids, self._max_bytes)
        for uid, size in too_large.items():
            # Like SMTP's 552: not taken in. It stays on the server, in the quarantine folder.
            logger.warning(
                "mailbox %s: uid %d is %d bytes, above MAILSVC_MAX_MESSAGE_BYTES (%s); not taken "
                "in, left in %s", self.mailbox.name, uid, size, self._max_bytes,
                self.mailbox.quarantine_folder or "the folder, flagged as processed",
            )
            self.counts["too_large"] += 1
        present = [uid for uid in uids if uid in fetched]  # others were expunged meanwhile
        results = await asyncio.gather(
            *(self._pipeline.submit(RawMail(fetched[uid], self._envelope)) for uid in present),
            return_exceptions=True,
        )
        done: list[int] = []
        quarantined: list[int] = list(too_large)
        failure: BaseException | None = None
        committed_up_to = last_uid
        for uid, result in zip(present, results, strict=True):
            if isinstance(result, BaseException):
                failure = failure or result
                continue
            self.counts[result.kind] += 1
            (quarantined if result.in_quarantine else done).append(uid)
            if failure is None:
                committed_up_to = uid
        if failure is None and uids:
            committed_up_to = max(committed_up_to, uids[-1])
        if done or quarantined:
            await self._call(self._settle, connection, done, quarantined)
            logger.info(
                "mailbox %s: %d message(s) committed (uid %d-%d), %d quarantined",
                self.mailbox.name, len(done) + len(quarantined), min(done + quarantined),
                max(done + quarantined), len(quarantined),
            )
        if committed_up_to > last_uid:
            await self._save_state(connection.uidvalidity, committed_up_to)
            self._progressed = True
        if failure is not None:
            raise failure
        return committed_up_to

    async def _wait_for_mail(self, connection: Connection) -> None:
        self._progressed = True
        try:
            await self._wait(connection)
        finally:
            self.waiting = False

    async def _wait(self, connection: Connection) -> None:
        # Wake up in time to log in again before the session's token expires.
        until_renewal = (max(0.0, connection.renew_at - time.time())
                         if connection.renew_at is not None else float("inf"))
        if not (self.mailbox.idle and connection.can_idle):
            self.waiting = True
            await asyncio.sleep(min(self.mailbox.poll_interval, until_renewal))
            return
        await self._call(self._idle_start, connection)
        self.waiting = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(self.mailbox.idle_timeout, until_renewal)
        while loop.time() < deadline:
            # Any untagged response (EXISTS, EXPUNGE, ...) is a reason to look again.
            slice_seconds = min(IDLE_SLICE_SECONDS, max(0.0, deadline - loop.time()))
            if await self._call(self._idle_wait, connection, slice_seconds):
                break
        await self._call(self._idle_stop, connection)

    async def _load_state(self, uidvalidity: int) -> int:
        try:
            async with self._sessions() as session:
                state = await session.get(MailboxState, self._state_name)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(f"cannot read mailbox state: {exc}") from exc
        if state is None:
            logger.info("mailbox %s: first run, taking every message in %s",
                        self.mailbox.name, self.mailbox.folder)
            return 0
        if state.uidvalidity != uidvalidity:
            logger.warning(
                "mailbox %s: UIDVALIDITY changed (%s -> %s), reading the folder again; "
                "mail already stored is recognised as duplicate",
                self.mailbox.name, state.uidvalidity, uidvalidity,
            )
            return 0
        return state.last_uid

    async def _save_state(self, uidvalidity: int, last_uid: int) -> None:
        for attempt in range(2):
            try:
                async with self._sessions() as session, session.begin():
                    state = await session.get(MailboxState, self._state_name)
                    if state is None:
                        session.add(MailboxState(
                            name=self._state_name, uidvalidity=uidvalidity, last_uid=last_uid
                        ))
                    else:
                        state.uidvalidity = uidvalidity
                        state.last_uid = last_uid
                return
            except IntegrityError:
                if attempt:  # another instance inserted the row meanwhile: update it instead
                    raise
            except (SQLAlchemyError, OSError) as exc:
                raise StoreUnavailable(f"cannot save mailbox state: {exc}") from exc


def _text(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return str(exc)  # "[Errno 111] Connection refused", not just "111"
    value = exc.args[0] if exc.args else exc
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def build_pollers(
    pipeline: Pipeline, sessions: async_sessionmaker[AsyncSession], imap: ImapSettings
) -> list[MailboxPoller]:
    """One poller per configured mailbox; its role's first intake address (the pipeline's) is
    the recipient."""
    addresses = pipeline.linking.role_addresses
    return [
        MailboxPoller(
            mailbox, pipeline, sessions, addresses[mailbox.role][0],
            max_bytes=pipeline.intake.max_message_bytes,
        )
        for mailbox in imap.mailboxes
    ]
