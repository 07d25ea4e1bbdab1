"""The settings, read from ``MAILSVC_*`` variables (and an optional .env), and their groups."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from mailsvc.crmstore.timeouts import Timeouts
from mailsvc.errors import ConfigError
from mailsvc.keys import parse_configured_key
from mailsvc.mail import IntakeRoles, Role

AddressList = Annotated[tuple[str, ...], NoDecode]


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


# Where each provider issues tokens and which scope IMAP needs (docs/mailboxes.md).
MICROSOFT_TOKEN_URL = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"  # noqa: S105
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"  # noqa: S105
DEFAULT_SCOPES = {
    ("microsoft", "client_credentials"): "https://outlook.office365.com/.default",
    ("microsoft", "refresh_token"):
        "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
    ("google", "refresh_token"): "https://mail.google.com/",
    ("google", "service_account"): "https://mail.google.com/",
}


def _secret_sources(prefix: str, value: object, file: object, env: str | None) -> int:
    if env is not None and env not in os.environ:
        raise ValueError(f"{prefix}_env names {env}, which is not set")
    return sum(source is not None for source in (value, file, env))


def _read_secret(value: SecretStr | None, file: Path | None, env: str | None) -> str | None:
    """Read at each call, so a rotated file or variable is picked up at the next token."""
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        return file.read_text().strip()
    if env is not None:
        return os.environ.get(env, "").strip()
    return None


class ImapOAuth2(BaseModel):
    """OAuth2 login of an IMAP mailbox (XOAUTH2 / OAUTHBEARER): where its tokens come from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Literal["microsoft", "google", "other"]
    # client_credentials: an app's own token (Microsoft 365, IMAP.AccessAsApp);
    # refresh_token: a user's delegated consent; service_account: Google domain-wide delegation.
    grant: Literal["client_credentials", "refresh_token", "service_account"]
    mechanism: Literal["XOAUTH2", "OAUTHBEARER"] = "XOAUTH2"
    tenant: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]{0,254}$")
    token_url: str | None = None  # default: the provider's
    scope: str | None = None  # default: what the provider wants for IMAP
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: FilePath | None = None
    client_secret_env: str | None = None
    refresh_token: SecretStr | None = None
    refresh_token_file: FilePath | None = None
    refresh_token_env: str | None = None
    service_account_file: FilePath | None = None  # Google's JSON key of the service account
    ca_file: FilePath | None = None  # a private CA of the token endpoint
    refresh_margin: float = Field(default=300.0, ge=0)  # seconds before expiry to renew
    timeout: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> ImapOAuth2:
        secrets = _secret_sources(
            "client_secret", self.client_secret, self.client_secret_file, self.client_secret_env)
        refresh = _secret_sources(
            "refresh_token", self.refresh_token, self.refresh_token_file, self.refresh_token_env)
        if secrets > 1:
            raise ValueError("set at most one of client_secret, client_secret_file, "
                             "client_secret_env")
        if refresh > 1:
            raise ValueError("set at most one of refresh_token, refresh_token_file, "
                             "refresh_token_env")
        if self.grant == "service_account":
            if self.service_account_file is None:
                raise ValueError("grant service_account needs service_account_file")
            if secrets or refresh or self.provider == "microsoft":
                raise ValueError("grant service_account takes only service_account_file "
                                 "(Google's JSON key)")
        else:
            if self.service_account_file is not None:
                raise ValueError("service_account_file is for grant service_account")
            if not self.client_id:
                raise ValueError(f"grant {self.grant} needs client_id")
        if self.grant == "client_credentials":
            if self.provider == "google":
                raise ValueError("Google has no client-credentials grant for Gmail: use "
                                 "service_account or refresh_token")
            if not secrets:
                raise ValueError("grant client_credentials needs client_secret, "
                                 "client_secret_file or client_secret_env")
        if self.grant == "refresh_token" and not refresh:
            raise ValueError("grant refresh_token needs refresh_token, refresh_token_file or "
                             "refresh_token_env")
        if self.provider == "microsoft" and not (self.tenant or self.token_url):
            raise ValueError("provider microsoft needs tenant (or token_url)")
        if self.provider == "other" and not (self.token_url and self.scope is not None):
            raise ValueError("provider other needs token_url and scope")
        if self.token_url:
            check_token_url(self.token_url)
        return self

    def effective_token_url(self) -> str | None:
        """None for a service account: its key file names the token endpoint."""
        if self.token_url:
            return self.token_url
        if self.provider == "microsoft":
            return MICROSOFT_TOKEN_URL.format(tenant=self.tenant)
        return None if self.grant == "service_account" else GOOGLE_TOKEN_URL

    @property
    def effective_scope(self) -> str:
        if self.scope is not None:
            return self.scope
        return DEFAULT_SCOPES[(self.provider, self.grant)]

    def client_secret_value(self) -> str | None:
        return _read_secret(self.client_secret, self.client_secret_file, self.client_secret_env)

    def refresh_token_value(self) -> str | None:
        return _read_secret(self.refresh_token, self.refresh_token_file, self.refresh_token_env)


def check_token_url(url: str) -> None:
    """https, or http to this host only: a token endpoint gets secrets."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        try:
            if host == "localhost" or ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            pass
    raise ValueError(f"token_url must be an https URL (http only to localhost): {url}")


class ImapMailbox(BaseModel):
    """One mailbox an IMAP poller watches (docs/mailboxes.md); its role plays the recipient."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)  # default: 993 for ssl, else 143
    tls: Literal["ssl", "starttls", "none"] = "ssl"
    verify: bool = True
    ca_file: FilePath | None = None
    username: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: FilePath | None = None
    oauth2: ImapOAuth2 | None = None  # instead of a password
    folder: str = Field(default="INBOX", min_length=1)
    role: Role = Role.BCC
    processed: Literal["seen", "move"] = "seen"
    processed_folder: str = Field(default="Processed", min_length=1)
    quarantine_folder: str | None = "Quarantine"
    idle: bool = True
    # RFC 2177 asks clients to re-IDLE at least every 29 minutes; NATs often drop sooner.
    idle_timeout: float = Field(default=300.0, gt=0, le=1740)
    poll_interval: float = Field(default=60.0, gt=0)
    fetch_batch: int = Field(default=50, ge=1, le=1000)
    timeout: float = Field(default=60.0, gt=0)
    backoff_initial: float = Field(default=1.0, gt=0)
    backoff_max: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> ImapMailbox:
        if sum(x is not None for x in (self.password, self.password_file, self.oauth2)) != 1:
            raise ValueError(
                f"mailbox {self.name!r}: set exactly one of password, password_file, oauth2")
        if self.processed == "move" and self.processed_folder == self.folder:
            raise ValueError(f"mailbox {self.name!r}: processed_folder must differ from folder")
        if self.quarantine_folder == self.folder:
            raise ValueError(f"mailbox {self.name!r}: quarantine_folder must differ from folder")
        if self.ca_file is not None and not self.verify:
            raise ValueError(f"mailbox {self.name!r}: ca_file is set but verify is false")
        if self.backoff_max < self.backoff_initial:
            raise ValueError(f"mailbox {self.name!r}: backoff_max is below backoff_initial")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.tls == "ssl" else 143)

    def secret(self) -> str:
        """The password, read from password_file on each call so a rotated file is picked up."""
        if self.password is not None:
            return self.password.get_secret_value()
        assert self.password_file is not None
        return self.password_file.read_text().strip()


def _read_imap_config(path: str) -> list[Any]:
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read the IMAP mailbox file {path}: {exc}") from None
    mailboxes = document.get("mailbox", [])
    if not isinstance(mailboxes, list):
        raise ValueError(f"{path}: write each mailbox as a [[mailbox]] table")
    return mailboxes


class Settings(BaseSettings):
    """Everything mailsvc can be told. Field names map to ``MAILSVC_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="MAILSVC_", env_file=".env", extra="ignore", frozen=True
    )

    database_url: str = "sqlite+aiosqlite:///./mailsvc.db"
    auto_migrate: bool = True
    amqp_url: SecretStr | None = None
    amqp_exchange: str = "mailsvc.events"

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=8025, ge=0, le=65535)
    smtp_hostname: str = "mailsvc.localhost"
    # STARTTLS on the SMTP intake: a PEM certificate (chain) and its key.
    smtp_tls_cert: FilePath | None = None
    smtp_tls_key: FilePath | None = None
    smtp_require_tls: bool = False
    # Several mailsvc processes on one host may share the SMTP port (SO_REUSEPORT).
    smtp_reuse_port: bool = False
    # The LMTP intake (RFC 2033), e.g. for Postfix's lmtp transport: TCP when the port is set, a
    # unix socket when the path is set (both may be on); off when neither is set.
    lmtp_host: str = "127.0.0.1"
    lmtp_port: int | None = Field(default=None, ge=0, le=65535)
    lmtp_socket: Path | None = None
    # File mode of the unix socket (octal, e.g. 0660: owner and group may connect).
    lmtp_socket_mode: int = Field(default=0o660, ge=0, le=0o777)
    # `mailsvc serve` processes on this host (docs: README, Operations).
    workers: int = Field(default=1, ge=1, le=64)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)
    api_keys: AddressList = ()
    api_enabled: bool = True

    bcc_address: AddressList = ("bcc@mailsvc.localhost",)
    sales_address: AddressList = ("sales@mailsvc.localhost",)
    support_address: AddressList = ("support@mailsvc.localhost",)
    internal_domains: AddressList = ()
    # Plus-addressing on every intake address (bcc+OPP-12@...): the characters that separate the
    # extension, as Postfix's recipient_delimiter ("" turns it off).
    recipient_delimiter: str = Field(
        default="+", pattern=r"^[^@\s\"<>(),;:\\\[\]A-Za-z0-9]{0,8}$"
    )

    # The loop guard: more than loop_guard_max mails from one sender to one record (without one:
    # to one intake role) within loop_guard_minutes create and update nothing (0: off); senders
    # on loop_guard_allow (addresses or domains, comma-separated) are never held back.
    loop_guard_max: int = Field(default=20, ge=0)
    loop_guard_minutes: float = Field(default=120.0, gt=0, le=60 * 24 * 31)
    loop_guard_allow: AddressList = ()

    opportunity_prefix: str = Field(default="OPP", pattern=r"^[A-Za-z][A-Za-z0-9]{0,15}$")
    ticket_prefix: str = Field(default="TCK", pattern=r"^[A-Za-z][A-Za-z0-9]{0,15}$")

    max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    max_recipients: int = Field(default=100, ge=1)
    max_received_headers: int = Field(default=30, ge=5)

    batch_max_size: int = Field(default=200, ge=1)
    batch_max_wait_ms: float = Field(default=2.0, ge=0)
    relay_batch_size: int = Field(default=200, ge=1)
    relay_poll_seconds: float = Field(default=2.0, gt=0)

    # --- staged intake: accept (raw bytes committed before the 250), then decide (workers) ---
    # Longest wait for the accept commit before the SMTP client gets 451 (StoreUnavailable).
    accept_timeout_seconds: float = Field(default=30.0, gt=0)
    # Decide worker processes of `mailsvc serve` (unset: 1 on SQLite, one per core on
    # PostgreSQL; 0: decide inside the serving process itself).
    decide_workers: int | None = Field(default=None, ge=0, le=256)
    decide_batch_size: int = Field(default=200, ge=1, le=10000)
    decide_poll_ms: float = Field(default=20.0, gt=0)
    # Failed decisions of one mail before it is quarantined with the last error.
    decide_max_attempts: int = Field(default=3, ge=1, le=100)
    # Processes parsing for each decide worker (unset: one per core on SQLite, where one worker
    # claims; 1 = parse in the worker itself, the default on PostgreSQL with a worker per core).
    decide_jobs: int | None = Field(default=None, ge=1, le=256)
    # Scheduling priority (nice) of decide worker processes: under load the CPU goes to
    # accepting first (SMTP clients wait for the 250), deciding catches up. 0 = as the service.
    decide_nice: int = Field(default=10, ge=0, le=19)
    # `mailsvc ingest` beside a running decide worker: how long it waits for the decision to
    # print it (a mail not decided by then is printed as accepted; it is decided soon after).
    ingest_wait_seconds: float = Field(default=5.0, ge=0, le=3600)

    default_owner_email: str | None = None
    # The user (by e-mail address) who owns what arrives on each intake address when no record,
    # contact or account names an owner; each falls back to default_owner_email.
    bcc_owner: str | None = None
    sales_owner: str | None = None
    support_owner: str | None = None
    # New tickets without an owner: `least_open` assigns them to the support user (or a user
    # of the ticket type's list) with the fewest open tickets; `off` leaves them unassigned.
    ticket_assignment: Literal["least_open", "off"] = "least_open"
    # Ticket type -> addresses of the users its new tickets go to (JSON object).
    ticket_assignees: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    stale_contact_days: int = Field(default=14, ge=1)
    critical_contact_days: int = Field(default=30, ge=1)

    # IMAP mailboxes: a JSON list in MAILSVC_IMAP_MAILBOXES, and/or [[mailbox]] tables in the TOML
    # file MAILSVC_IMAP_CONFIG names (docs/mailboxes.md).
    imap_mailboxes: tuple[ImapMailbox, ...] = ()
    imap_config: Path | None = None

    # --- Faults: every wait on the database and the broker is bounded (docs/reliability.md) ---
    # PostgreSQL, server side (0 = no limit): one statement, waiting for a lock, a transaction
    # left idle by its client; TCP keepalives (client and server) find a dead peer.
    db_statement_timeout_seconds: float = Field(default=10.0, ge=0)
    db_lock_timeout_seconds: float = Field(default=5.0, ge=0)
    db_idle_in_transaction_timeout_seconds: float = Field(default=60.0, ge=0)
    db_tcp_keepalive_seconds: int = Field(default=30, ge=1)
    # Client side: a command's answer (the only bound when the server never sees the query),
    # opening a connection, waiting for a pooled one.
    db_command_timeout_seconds: float = Field(default=12.0, ge=0)
    db_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    # SQLite: how long a writer waits for another one's lock.
    sqlite_busy_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Relay: a publish's confirm (and a connect), the cap of the reconnect backoff, and how often
    # events no queue was bound for are tried again.
    relay_publish_timeout_seconds: float = Field(default=10.0, gt=0)
    relay_reconnect_max_seconds: float = Field(default=5.0, gt=0)
    relay_unroutable_retry_seconds: float = Field(default=30.0, gt=0)
    # --- webhooks (docs/events.md#webhooks): the outbox delivered over HTTP, beside the relay ---
    # Deliver to loopback, private, link-local and other non-public addresses (SSRF guard; off:
    # only public addresses, checked at every connection, so DNS cannot point a receiver inward).
    webhook_allow_private: bool = False
    # One request's whole time (connect, send, answer) before it counts as a failed attempt.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Attempts of one delivery before it fails for good.
    webhook_max_attempts: int = Field(default=12, ge=1, le=100)
    # The first retry's delay; each further one doubles it, up to webhook_retry_max_seconds.
    webhook_retry_initial_seconds: float = Field(default=30.0, gt=0)
    webhook_retry_max_seconds: float = Field(default=21600.0, gt=0)
    # A subscription is disabled after this many deliveries in a row failed for good, or when
    # every attempt has failed for webhook_disable_after_hours.
    webhook_disable_after_failures: int = Field(default=5, ge=1)
    webhook_disable_after_hours: float = Field(default=24.0, gt=0)
    # How often the dispatcher looks for new events and due retries when nothing woke it.
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    # Requests in flight at once (each subscription gets its events one at a time, in order).
    webhook_concurrency: int = Field(default=8, ge=1, le=256)
    # --- outbound mail (docs/outbound.md) ---
    # The relay replies and acknowledgements go out through: smtp://[user:pass@]host[:port]
    # [?starttls=required|opportunistic|none], or smtps://...; unset: the API refuses to send.
    outbound_smtp_url: SecretStr | None = None
    # How long a mail the relay defers (4xx, no connection) is retried before it is failed.
    outbound_retry_hours: float = Field(default=48.0, gt=0)
    # The first retry's delay; each further one doubles it, up to an hour.
    outbound_retry_initial_seconds: float = Field(default=30.0, gt=0, le=60)
    # How often the sender looks for due mail when nothing woke it.
    outbound_poll_seconds: float = Field(default=2.0, gt=0)
    outbound_timeout_seconds: float = Field(default=60.0, gt=0)
    # The domain of our own Message-IDs; default: the domain of the first intake address.
    message_id_domain: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.-]+$")
    # Acknowledge new tickets (default: on when an outbound relay is configured).
    ticket_ack: bool | None = None
    ack_window_minutes: int = Field(default=60, ge=0)
    ticket_ack_language: Literal["de", "en", "de+en"] = "de+en"
    # A text file replacing the built-in acknowledgement: first line "Subject: ...", then a blank
    # line and the body; {ticket}, {subject} and {name} are filled in.
    ticket_ack_template: FilePath | None = None

    # --- logging ---
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # `text` for people, `json` for log collectors (one object per line, uvicorn included).
    log_format: Literal["text", "json"] = "text"
    # One line per API request (method, path, status) through the same handler.
    api_access_log: bool = True

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _case_insensitive(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        return value.upper() if info.field_name == "log_level" else value.lower()

    # --- Sender trust, intake limits and hostile input (docs/trust.md) ---
    # Who may write as one of our users: the level of proof a header From needs.
    sender_verification: Literal["dmarc", "aligned", "off"] = "aligned"
    # authserv-ids whose Authentication-Results headers are believed (all others are ignored).
    trusted_authserv_ids: AddressList = ()
    # Over SMTP, those headers count only from clients in these networks (when any are set).
    trusted_networks: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    dkim_verify: bool = True
    dkim_dns_timeout: float = Field(default=5.0, gt=0, le=60)
    # SMTP AUTH: a file of "address:bcrypt-hash" lines; unset, the intake offers no AUTH.
    smtp_auth_users: FilePath | None = None
    smtp_auth_allow_plaintext: bool = False
    smtp_max_connections: int = Field(default=200, ge=1)
    smtp_max_connections_per_ip: int = Field(default=50, ge=1)
    smtp_max_concurrent_data: int = Field(default=20, ge=1)
    smtp_data_slot_wait: float = Field(default=30.0, ge=0)
    smtp_max_line_bytes: int = Field(default=65536, ge=1001)
    smtp_max_header_count: int = Field(default=1000, ge=10)
    smtp_max_header_bytes: int = Field(default=512 * 1024, ge=4096)
    smtp_idle_timeout: float = Field(default=300.0, gt=0)
    smtp_data_timeout: float = Field(default=600.0, gt=0)
    mime_max_depth: int = Field(default=30, ge=1)
    mime_max_parts: int = Field(default=1000, ge=1)
    mime_max_attachments: int = Field(default=500, ge=0)
    mime_max_decoded_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    # --- API security and privacy (docs/api.md, docs/privacy.md) ---
    # Largest request body the API reads (413 beyond, checked before and while reading).
    api_max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # Failed authentications a client may make at once; afterwards one per
    # window / failures seconds, 429 in between.
    api_auth_failures: int = Field(default=10, ge=1)
    api_auth_failure_window_seconds: float = Field(default=60.0, gt=0)
    # With API keys set, these are open without a key only when switched on.
    api_public_docs: bool = False
    metrics_public: bool = False
    readyz_detail_public: bool = False
    # Raw bytes and bodies of mail older than this many days are removed (unset: kept).
    retention_days: int | None = Field(default=None, ge=1)
    retention_interval_seconds: float = Field(default=3600.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _imap_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("imap_config"):
            listed = data.get("imap_mailboxes") or []
            if isinstance(listed, str | bytes):
                raise ValueError("imap_mailboxes must be a JSON list")
            from_file = _read_imap_config(str(data["imap_config"]))
            data = {**data, "imap_mailboxes": [*listed, *from_file]}
        return data

    @field_validator(
        "bcc_address", "sales_address", "support_address", "internal_domains", "api_keys",
        "trusted_authserv_ids", "trusted_networks", "loop_guard_allow", mode="before",
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("api_keys")
    @classmethod
    def _api_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for key in value:
            parse_configured_key(key)
        return value

    @field_validator("ticket_assignees")
    @classmethod
    def _assignees(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        """Types and addresses compare lower-case; each address must look like one."""
        cleaned: dict[str, tuple[str, ...]] = {}
        for ticket_type, addresses in value.items():
            for address in addresses:
                if "@" not in address.strip(" @"):
                    raise ValueError(f"{address!r} (type {ticket_type!r}) is not an e-mail address")
            cleaned[ticket_type.strip().lower()] = tuple(a.strip().lower() for a in addresses)
        return cleaned

    @field_validator("bcc_address", "sales_address", "support_address")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            local, at, domain = address.partition("@")
            if not ((local and at and "." in domain) or domain == "localhost"):
                raise ValueError(f"{address!r} is not an e-mail address")
        return tuple(address.lower() for address in value)

    @field_validator("lmtp_socket_mode", mode="before")
    @classmethod
    def _octal_mode(cls, value: object) -> object:
        """A file mode is written in octal (0660), as chmod takes it."""
        if isinstance(value, str):
            try:
                return int(value.strip(), 8)
            except ValueError:
                raise ValueError(f"{value!r} is not an octal file mode such as 0660") from None
        return value

    @field_validator("trusted_authserv_ids")
    @classmethod
    def _authserv_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(item.lower() for item in value)

    @model_validator(mode="after")
    def _smtp_auth(self) -> Settings:
        if (
            self.smtp_auth_users is not None and self.smtp_tls_cert is None
            and not self.smtp_auth_allow_plaintext
        ):
            raise ValueError(
                "MAILSVC_SMTP_AUTH_USERS needs MAILSVC_SMTP_TLS_CERT and _KEY (AUTH only over "
                "TLS), or MAILSVC_SMTP_AUTH_ALLOW_PLAINTEXT=true for a closed test set-up"
            )
        return self

    @field_validator("loop_guard_allow")
    @classmethod
    def _allow(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Addresses (``noc@example.com``) or domains (``example.com``, subdomains included)."""
        cleaned = tuple(item.strip().lower().lstrip("@") for item in value)
        for item in cleaned:
            if not item or " " in item or "." not in item.rpartition("@")[2]:
                raise ValueError(f"{item!r} is neither an e-mail address nor a domain")
        return cleaned

    @field_validator("internal_domains")
    @classmethod
    def _domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(domain.lower().lstrip("@") for domain in value)

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            value = "postgresql+asyncpg://" + value.split("://", 1)[1]
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "use sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db"
            )
        return value

    @field_validator("outbound_smtp_url")
    @classmethod
    def _outbound_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from mailsvc.relay_url import parse_relay_url

            parse_relay_url(value.get_secret_value())  # ValueError names what is wrong
        return value

    @property
    def outbound_message_id_domain(self) -> str:
        """Our Message-IDs' domain: MAILSVC_MESSAGE_ID_DOMAIN, else the first intake address's."""
        return self.outbound.effective_message_id_domain(self.linking)

    @property
    def ticket_ack_enabled(self) -> bool:
        return self.outbound.ticket_ack_enabled

    @model_validator(mode="after")
    def _smtp_tls(self) -> Settings:
        if (self.smtp_tls_cert is None) != (self.smtp_tls_key is None):
            raise ValueError("set both MAILSVC_SMTP_TLS_CERT and MAILSVC_SMTP_TLS_KEY, or neither")
        if self.smtp_require_tls and self.smtp_tls_cert is None:
            raise ValueError("MAILSVC_SMTP_REQUIRE_TLS needs MAILSVC_SMTP_TLS_CERT and _KEY")
        return self

    @model_validator(mode="after")
    def _roles_are_distinct(self) -> Settings:
        seen: dict[str, str] = {}
        for role, addresses in self.role_addresses.items():
            for address in addresses:
                if address in seen:
                    raise ValueError(
                        f"{address} is both the {seen[address]} and the {role} address"
                    )
                seen[address] = role
        if self.opportunity_prefix.upper() == self.ticket_prefix.upper():
            raise ValueError("opportunity_prefix and ticket_prefix must differ")
        names = [mailbox.name for mailbox in self.imap_mailboxes]
        if len(names) != len(set(names)):
            raise ValueError(f"IMAP mailbox names must be unique: {', '.join(names)}")
        if self.critical_contact_days < self.stale_contact_days:
            raise ValueError("critical_contact_days must not be below stale_contact_days")
        return self

    @property
    def role_addresses(self) -> dict[Role, tuple[str, ...]]:
        """Each intake role's addresses."""
        return self.linking.role_addresses

    @property
    def intake_roles(self) -> IntakeRoles:
        """Intake address (lower case) -> role: ``bcc``, ``sales`` or ``support``; ``role_of``
        also answers for an intake address with an extension (``bcc+OPP-12@...``)."""
        return self.linking.intake_roles

    def record_address(self, role: Role, label: str) -> str | None:
        """A record's own address (``LinkingSettings.record_address``)."""
        return self.linking.record_address(role, label)

    def owner_for(self, role: Role | str) -> str | None:
        """The default owner's address for mail arriving on the intake address of ``role``."""
        return self.linking.owner_for(role)

    @property
    def is_sqlite(self) -> bool:
        return self.store.is_sqlite

    @property
    def effective_decide_jobs(self) -> int:
        """Parsing processes per decide worker: as set, else one per core on SQLite, else 1."""
        return self.intake.effective_decide_jobs(self.store)

    @property
    def effective_decide_workers(self) -> int:
        """Decide worker processes: as set, else 1 on SQLite (one claimer) and one per core on
        PostgreSQL."""
        return self.intake.effective_decide_workers(self.store)

    # --- the groups: each part of mailsvc is handed only the group(s) it reads ---------------
    # Built once from the flat fields above; every flat field belongs to exactly one group
    # (tests/unit/test_config_groups.py). docs/architecture.md, "Settings".

    @cached_property
    def store(self) -> StoreSettings:
        return _group(StoreSettings, self)

    @cached_property
    def events(self) -> EventsSettings:
        return _group(EventsSettings, self)

    @cached_property
    def smtp(self) -> SmtpSettings:
        return _group(SmtpSettings, self)

    @cached_property
    def imap(self) -> ImapSettings:
        return _group(ImapSettings, self)

    @cached_property
    def intake(self) -> IntakeSettings:
        return _group(IntakeSettings, self)

    @cached_property
    def linking(self) -> LinkingSettings:
        return _group(LinkingSettings, self)

    @cached_property
    def trust(self) -> TrustSettings:
        return _group(TrustSettings, self)

    @cached_property
    def api(self) -> ApiSettings:
        return _group(ApiSettings, self)

    @cached_property
    def outbound(self) -> OutboundSettings:
        return _group(OutboundSettings, self)

    @cached_property
    def logging(self) -> LoggingSettings:
        return _group(LoggingSettings, self)

    @cached_property
    def privacy(self) -> PrivacySettings:
        return _group(PrivacySettings, self)

    def model_copy(
        self, *, update: Mapping[str, Any] | None = None, deep: bool = False
    ) -> Settings:
        """A copy whose groups are built again from its own (updated) flat fields."""
        copied = super().model_copy(update=update, deep=deep)
        for name in GROUPS:
            copied.__dict__.pop(name, None)
        return copied


def _describe(location: tuple[int | str, ...], message: str) -> str:
    message = message.removeprefix("Value error, ")
    if not location:
        return message
    return f"MAILSVC_{'_'.join(str(part) for part in location).upper()}: {message}"


def load_settings(**overrides: object) -> Settings:
    """Read the settings; a wrong value raises ConfigError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(_describe(err["loc"], err["msg"]) for err in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None
    except SettingsError as exc:  # e.g. MAILSVC_IMAP_MAILBOXES that is not JSON
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigError(f"invalid configuration: {exc}{cause}") from None


# ------------------------------------------------------------------------------ setting groups


def flat(name: str) -> dict[str, str]:
    """The metadata of a group field holding the flat setting ``name`` (``MAILSVC_<NAME>``)."""
    return {"flat": name}


def flat_name(group_field: Any) -> str:
    """The flat setting a group field is read from."""
    return str(group_field.metadata["flat"])


_Group = TypeVar("_Group")


def _group(cls: type[_Group], settings: Settings) -> _Group:
    return cls(**{f.name: getattr(settings, flat_name(f)) for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """The database: where it is, its schema, and the bound on every wait on it."""

    url: str = field(metadata=flat("database_url"))
    auto_migrate: bool = field(metadata=flat("auto_migrate"))
    statement_timeout_seconds: float = field(metadata=flat("db_statement_timeout_seconds"))
    lock_timeout_seconds: float = field(metadata=flat("db_lock_timeout_seconds"))
    idle_in_transaction_timeout_seconds: float = field(
        metadata=flat("db_idle_in_transaction_timeout_seconds"))
    tcp_keepalive_seconds: int = field(metadata=flat("db_tcp_keepalive_seconds"))
    command_timeout_seconds: float = field(metadata=flat("db_command_timeout_seconds"))
    connect_timeout_seconds: float = field(metadata=flat("db_connect_timeout_seconds"))
    pool_timeout_seconds: float = field(metadata=flat("db_pool_timeout_seconds"))
    sqlite_busy_timeout_seconds: float = field(metadata=flat("sqlite_busy_timeout_seconds"))

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def timeouts(self) -> Timeouts:
        """The bounds on every database wait (docs/reliability.md)."""
        return Timeouts(
            statement=self.statement_timeout_seconds,
            lock=self.lock_timeout_seconds,
            idle_in_transaction=self.idle_in_transaction_timeout_seconds,
            command=self.command_timeout_seconds,
            connect=self.connect_timeout_seconds,
            pool=self.pool_timeout_seconds,
            keepalive_idle=self.tcp_keepalive_seconds,
            sqlite_busy=self.sqlite_busy_timeout_seconds,
        )


@dataclass(frozen=True, slots=True)
class EventsSettings:
    """Where events go: the broker the outbox relay publishes to (its pace and bounds), and
    webhooks."""

    amqp_url: SecretStr | None = field(metadata=flat("amqp_url"))
    exchange: str = field(metadata=flat("amqp_exchange"))
    batch_size: int = field(metadata=flat("relay_batch_size"))
    poll_seconds: float = field(metadata=flat("relay_poll_seconds"))
    publish_timeout_seconds: float = field(metadata=flat("relay_publish_timeout_seconds"))
    reconnect_max_seconds: float = field(metadata=flat("relay_reconnect_max_seconds"))
    unroutable_retry_seconds: float = field(metadata=flat("relay_unroutable_retry_seconds"))
    # Webhooks, fed from the same outbox (docs/events.md#webhooks).
    webhook_allow_private: bool = field(metadata=flat("webhook_allow_private"))
    webhook_timeout_seconds: float = field(metadata=flat("webhook_timeout_seconds"))
    webhook_max_attempts: int = field(metadata=flat("webhook_max_attempts"))
    webhook_retry_initial_seconds: float = field(metadata=flat("webhook_retry_initial_seconds"))
    webhook_retry_max_seconds: float = field(metadata=flat("webhook_retry_max_seconds"))
    webhook_disable_after_failures: int = field(
        metadata=flat("webhook_disable_after_failures"))
    webhook_disable_after_hours: float = field(metadata=flat("webhook_disable_after_hours"))
    webhook_poll_seconds: float = field(metadata=flat("webhook_poll_seconds"))
    webhook_concurrency: int = field(metadata=flat("webhook_concurrency"))


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """The SMTP and LMTP intake: where they listen, TLS and AUTH, and the limits per
    connection."""

    host: str = field(metadata=flat("smtp_host"))
    port: int = field(metadata=flat("smtp_port"))
    hostname: str = field(metadata=flat("smtp_hostname"))
    tls_cert: Path | None = field(metadata=flat("smtp_tls_cert"))
    tls_key: Path | None = field(metadata=flat("smtp_tls_key"))
    require_tls: bool = field(metadata=flat("smtp_require_tls"))
    reuse_port: bool = field(metadata=flat("smtp_reuse_port"))
    auth_users: Path | None = field(metadata=flat("smtp_auth_users"))
    auth_allow_plaintext: bool = field(metadata=flat("smtp_auth_allow_plaintext"))
    max_recipients: int = field(metadata=flat("max_recipients"))
    max_connections: int = field(metadata=flat("smtp_max_connections"))
    max_connections_per_ip: int = field(metadata=flat("smtp_max_connections_per_ip"))
    max_concurrent_data: int = field(metadata=flat("smtp_max_concurrent_data"))
    data_slot_wait: float = field(metadata=flat("smtp_data_slot_wait"))
    max_line_bytes: int = field(metadata=flat("smtp_max_line_bytes"))
    max_header_count: int = field(metadata=flat("smtp_max_header_count"))
    max_header_bytes: int = field(metadata=flat("smtp_max_header_bytes"))
    idle_timeout: float = field(metadata=flat("smtp_idle_timeout"))
    data_timeout: float = field(metadata=flat("smtp_data_timeout"))
    # The LMTP listener (same intake, same limits): TCP when a port is set, a unix socket.
    lmtp_host: str = field(metadata=flat("lmtp_host"))
    lmtp_port: int | None = field(metadata=flat("lmtp_port"))
    lmtp_socket: Path | None = field(metadata=flat("lmtp_socket"))
    lmtp_socket_mode: int = field(metadata=flat("lmtp_socket_mode"))


@dataclass(frozen=True, slots=True)
class ImapSettings:
    """The IMAP mailboxes the pollers watch."""

    mailboxes: tuple[ImapMailbox, ...] = field(metadata=flat("imap_mailboxes"))
    config: Path | None = field(metadata=flat("imap_config"))


@dataclass(frozen=True, slots=True)
class IntakeSettings:
    """The staged intake every adapter feeds: size limits, accept batching, the decide workers,
    and the `mailsvc serve` processes."""

    workers: int = field(metadata=flat("workers"))
    max_message_bytes: int = field(metadata=flat("max_message_bytes"))
    max_received_headers: int = field(metadata=flat("max_received_headers"))
    batch_max_size: int = field(metadata=flat("batch_max_size"))
    batch_max_wait_ms: float = field(metadata=flat("batch_max_wait_ms"))
    accept_timeout_seconds: float = field(metadata=flat("accept_timeout_seconds"))
    decide_workers: int | None = field(metadata=flat("decide_workers"))
    decide_batch_size: int = field(metadata=flat("decide_batch_size"))
    decide_poll_ms: float = field(metadata=flat("decide_poll_ms"))
    decide_max_attempts: int = field(metadata=flat("decide_max_attempts"))
    decide_jobs: int | None = field(metadata=flat("decide_jobs"))
    decide_nice: int = field(metadata=flat("decide_nice"))
    ingest_wait_seconds: float = field(metadata=flat("ingest_wait_seconds"))

    def effective_decide_jobs(self, store: StoreSettings) -> int:
        """Parsing processes per decide worker: as set, else one per core on SQLite, else 1."""
        if self.decide_jobs is not None:
            return self.decide_jobs
        return max(1, os.cpu_count() or 1) if store.is_sqlite else 1

    def effective_decide_workers(self, store: StoreSettings) -> int:
        """Decide worker processes: as set, else 1 on SQLite (one claimer) and one per core on
        PostgreSQL."""
        if self.decide_workers is not None:
            return self.decide_workers
        if store.is_sqlite:
            return 1
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)  # no slots: intake_roles is cached
class LinkingSettings:
    """The intake addresses and their roles, our domains, and the records mail is linked to:
    their number prefixes, default owners, how new tickets are assigned, and when a contact is
    overdue."""

    bcc_address: tuple[str, ...] = field(metadata=flat("bcc_address"))
    sales_address: tuple[str, ...] = field(metadata=flat("sales_address"))
    support_address: tuple[str, ...] = field(metadata=flat("support_address"))
    internal_domains: tuple[str, ...] = field(metadata=flat("internal_domains"))
    opportunity_prefix: str = field(metadata=flat("opportunity_prefix"))
    ticket_prefix: str = field(metadata=flat("ticket_prefix"))
    default_owner_email: str | None = field(metadata=flat("default_owner_email"))
    bcc_owner: str | None = field(metadata=flat("bcc_owner"))
    sales_owner: str | None = field(metadata=flat("sales_owner"))
    support_owner: str | None = field(metadata=flat("support_owner"))
    ticket_assignment: Literal["least_open", "off"] = field(metadata=flat("ticket_assignment"))
    ticket_assignees: dict[str, tuple[str, ...]] = field(metadata=flat("ticket_assignees"))
    stale_contact_days: int = field(metadata=flat("stale_contact_days"))
    critical_contact_days: int = field(metadata=flat("critical_contact_days"))
    recipient_delimiter: str = field(metadata=flat("recipient_delimiter"))
    loop_guard_max: int = field(metadata=flat("loop_guard_max"))
    loop_guard_minutes: float = field(metadata=flat("loop_guard_minutes"))
    loop_guard_allow: tuple[str, ...] = field(metadata=flat("loop_guard_allow"))

    @property
    def role_addresses(self) -> dict[Role, tuple[str, ...]]:
        """Each intake role's addresses."""
        return {Role.BCC: self.bcc_address, Role.SALES: self.sales_address,
                Role.SUPPORT: self.support_address}

    @cached_property
    def intake_roles(self) -> IntakeRoles:
        """Intake address (lower case) -> role: ``bcc``, ``sales`` or ``support``; ``role_of``
        also answers for an intake address with an extension (``bcc+OPP-12@...``)."""
        return IntakeRoles(
            ((a, role) for role, addresses in self.role_addresses.items() for a in addresses),
            self.recipient_delimiter,
        )

    def record_address(self, role: Role, label: str) -> str | None:
        """A record's own address: the first intake address of ``role`` with the record's ID
        (``label``, e.g. ``OPP-12``) as extension; None when plus-addressing is off."""
        if not self.recipient_delimiter:
            return None
        local, _, domain = self.role_addresses[role][0].rpartition("@")
        return f"{local}{self.recipient_delimiter[0]}{label}@{domain}"

    def owner_for(self, role: Role | str) -> str | None:
        """The default owner's address for mail arriving on the intake address of ``role``."""
        owners = {Role.BCC: self.bcc_owner, Role.SALES: self.sales_owner,
                  Role.SUPPORT: self.support_owner}
        owner = owners.get(Role(role)) or self.default_owner_email
        return owner.strip().lower() if owner else None


@dataclass(frozen=True, slots=True)
class TrustSettings:
    """Who is believed (sender verification, Authentication-Results, DKIM) and how much hostile
    MIME is parsed (docs/trust.md)."""

    sender_verification: Literal["dmarc", "aligned", "off"] = field(
        metadata=flat("sender_verification"))
    trusted_authserv_ids: tuple[str, ...] = field(metadata=flat("trusted_authserv_ids"))
    trusted_networks: tuple[IPv4Network | IPv6Network, ...] = field(
        metadata=flat("trusted_networks"))
    dkim_verify: bool = field(metadata=flat("dkim_verify"))
    dkim_dns_timeout: float = field(metadata=flat("dkim_dns_timeout"))
    mime_max_depth: int = field(metadata=flat("mime_max_depth"))
    mime_max_parts: int = field(metadata=flat("mime_max_parts"))
    mime_max_attachments: int = field(metadata=flat("mime_max_attachments"))
    mime_max_decoded_bytes: int = field(metadata=flat("mime_max_decoded_bytes"))


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """The REST API and UI: where it listens, keys, request limits, what is open without a
    key."""

    enabled: bool = field(metadata=flat("api_enabled"))
    host: str = field(metadata=flat("api_host"))
    port: int = field(metadata=flat("api_port"))
    keys: tuple[str, ...] = field(metadata=flat("api_keys"))
    max_body_bytes: int = field(metadata=flat("api_max_body_bytes"))
    auth_failures: int = field(metadata=flat("api_auth_failures"))
    auth_failure_window_seconds: float = field(metadata=flat("api_auth_failure_window_seconds"))
    public_docs: bool = field(metadata=flat("api_public_docs"))
    metrics_public: bool = field(metadata=flat("metrics_public"))
    readyz_detail_public: bool = field(metadata=flat("readyz_detail_public"))


@dataclass(frozen=True, slots=True)
class OutboundSettings:
    """Outbound mail: the relay, retries, our Message-IDs and ticket acknowledgements
    (docs/outbound.md)."""

    smtp_url: SecretStr | None = field(metadata=flat("outbound_smtp_url"))
    retry_hours: float = field(metadata=flat("outbound_retry_hours"))
    retry_initial_seconds: float = field(metadata=flat("outbound_retry_initial_seconds"))
    poll_seconds: float = field(metadata=flat("outbound_poll_seconds"))
    timeout_seconds: float = field(metadata=flat("outbound_timeout_seconds"))
    message_id_domain: str | None = field(metadata=flat("message_id_domain"))
    ticket_ack: bool | None = field(metadata=flat("ticket_ack"))
    ack_window_minutes: int = field(metadata=flat("ack_window_minutes"))
    ticket_ack_language: Literal["de", "en", "de+en"] = field(metadata=flat("ticket_ack_language"))
    ticket_ack_template: Path | None = field(metadata=flat("ticket_ack_template"))

    def effective_message_id_domain(self, linking: LinkingSettings) -> str:
        """Our Message-IDs' domain: MAILSVC_MESSAGE_ID_DOMAIN, else the first intake address's."""
        if self.message_id_domain:
            return self.message_id_domain.lower()
        first = (*linking.support_address, *linking.sales_address, *linking.bcc_address)[0]
        return first.rpartition("@")[2]

    @property
    def ticket_ack_enabled(self) -> bool:
        if self.ticket_ack is None:
            return self.smtp_url is not None
        return self.ticket_ack and self.smtp_url is not None


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    """Log level and format, and the API's access log."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = field(
        metadata=flat("log_level"))
    format: Literal["text", "json"] = field(metadata=flat("log_format"))
    api_access_log: bool = field(metadata=flat("api_access_log"))


@dataclass(frozen=True, slots=True)
class PrivacySettings:
    """How long mail content is kept (docs/privacy.md)."""

    retention_days: int | None = field(metadata=flat("retention_days"))
    retention_interval_seconds: float = field(metadata=flat("retention_interval_seconds"))


# Settings attribute -> group class.
GROUPS: dict[str, type] = {
    "store": StoreSettings,
    "events": EventsSettings,
    "smtp": SmtpSettings,
    "imap": ImapSettings,
    "intake": IntakeSettings,
    "linking": LinkingSettings,
    "trust": TrustSettings,
    "api": ApiSettings,
    "outbound": OutboundSettings,
    "logging": LoggingSettings,
    "privacy": PrivacySettings,
}
