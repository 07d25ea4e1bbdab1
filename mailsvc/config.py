"""The one settings object, read from ``MAILSVC_*`` environment variables (and an optional .env)."""

from __future__ import annotations

import tomllib
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

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

from mailsvc.errors import ConfigError

AddressList = Annotated[tuple[str, ...], NoDecode]


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


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
    folder: str = Field(default="INBOX", min_length=1)
    role: Literal["bcc", "sales", "support"] = "bcc"
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
        if (self.password is None) == (self.password_file is None):
            raise ValueError(f"mailbox {self.name!r}: set exactly one of password, password_file")
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

    opportunity_prefix: str = Field(default="OPP", pattern=r"^[A-Za-z][A-Za-z0-9]{0,15}$")
    ticket_prefix: str = Field(default="TCK", pattern=r"^[A-Za-z][A-Za-z0-9]{0,15}$")

    max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    max_recipients: int = Field(default=100, ge=1)
    max_received_headers: int = Field(default=30, ge=5)

    batch_max_size: int = Field(default=200, ge=1)
    batch_max_wait_ms: float = Field(default=2.0, ge=0)
    relay_batch_size: int = Field(default=200, ge=1)
    relay_poll_seconds: float = Field(default=2.0, gt=0)

    default_owner_email: str | None = None
    # The user (by e-mail address) who owns what arrives on each intake address when no record,
    # contact or account names an owner; each falls back to default_owner_email.
    bcc_owner: str | None = None
    sales_owner: str | None = None
    support_owner: str | None = None
    stale_contact_days: int = Field(default=14, ge=1)
    critical_contact_days: int = Field(default=30, ge=1)

    # IMAP mailboxes: a JSON list in MAILSVC_IMAP_MAILBOXES, and/or [[mailbox]] tables in the TOML
    # file MAILSVC_IMAP_CONFIG names (docs/mailboxes.md).
    imap_mailboxes: tuple[ImapMailbox, ...] = ()
    imap_config: Path | None = None

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
        mode="before",
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("bcc_address", "sales_address", "support_address")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            local, at, domain = address.partition("@")
            if not ((local and at and "." in domain) or domain == "localhost"):
                raise ValueError(f"{address!r} is not an e-mail address")
        return tuple(address.lower() for address in value)

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
            from mailsvc.outbound.target import parse_relay_url

            parse_relay_url(value.get_secret_value())  # ValueError names what is wrong
        return value

    @property
    def outbound_message_id_domain(self) -> str:
        """Our Message-IDs' domain: MAILSVC_MESSAGE_ID_DOMAIN, else the first intake address's."""
        if self.message_id_domain:
            return self.message_id_domain.lower()
        first = (*self.support_address, *self.sales_address, *self.bcc_address)[0]
        return first.rpartition("@")[2]

    @property
    def ticket_ack_enabled(self) -> bool:
        if self.ticket_ack is None:
            return self.outbound_smtp_url is not None
        return self.ticket_ack and self.outbound_smtp_url is not None

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
        for role in ("bcc", "sales", "support"):
            for address in getattr(self, f"{role}_address"):
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

    @cached_property
    def intake_roles(self) -> dict[str, str]:
        """Intake address (lower case) -> role: ``bcc``, ``sales`` or ``support``."""
        roles: dict[str, str] = {}
        for role in ("bcc", "sales", "support"):
            for address in getattr(self, f"{role}_address"):
                roles[address] = role
        return roles

    def owner_for(self, role: str) -> str | None:
        """The default owner's address for mail arriving on the intake address of ``role``."""
        owner: str | None = getattr(self, f"{role}_owner", None) or self.default_owner_email
        return owner.strip().lower() if owner else None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


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
