"""How long any wait on the database may take, and how a PostgreSQL connection is opened.

Kept apart from the engine (``db.py``) so that a process that only accepts mail (`mailsvc
ingest` handing a mail to the running service) connects with the same bounds without loading
SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

APPLICATION_NAME = "mailsvc"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Bounds on every database wait, in seconds (0 = no bound). Defaults: README, Configuration."""

    statement: float = 10.0  # server: one statement (statement_timeout)
    lock: float = 5.0  # server: waiting for a row or table lock (lock_timeout)
    idle_in_transaction: float = 60.0  # server: a transaction left open by a vanished client
    command: float = 12.0  # client: one command's answer (the only bound if the server is away)
    connect: float = 5.0  # client: opening a connection
    pool: float = 10.0  # client: waiting for a free pooled connection
    keepalive_idle: int = 30  # TCP keepalive, both ends: first probe after this idle time
    keepalive_interval: int = 10  # between probes
    keepalive_count: int = 3  # unanswered probes before the connection counts as dead
    sqlite_busy: float = 10.0  # SQLite: waiting for another writer's lock

    def for_migrations(self) -> Timeouts:
        """Schema changes may legitimately run long and wait for another migrator's lock."""
        return replace(self, statement=0.0, command=0.0, lock=600.0)


def postgres_connect_args(
    timeouts: Timeouts, application_name: str = APPLICATION_NAME
) -> dict[str, Any]:
    """asyncpg ``connect()`` arguments: client timeouts and the server-side session settings."""
    return {
        "timeout": timeouts.connect or None,
        "command_timeout": timeouts.command or None,
        "server_settings": {
            "statement_timeout": _ms(timeouts.statement),
            "lock_timeout": _ms(timeouts.lock),
            "idle_in_transaction_session_timeout": _ms(timeouts.idle_in_transaction),
            "tcp_keepalives_idle": str(timeouts.keepalive_idle),
            "tcp_keepalives_interval": str(timeouts.keepalive_interval),
            "tcp_keepalives_count": str(timeouts.keepalive_count),
            "application_name": application_name,
        },
    }


def _ms(seconds: float) -> str:
    return str(round(seconds * 1000))
