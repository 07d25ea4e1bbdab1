"""The bounds on database waits: what each connection is told, and which errors count as what."""

from __future__ import annotations

from mailsvc.config import load_settings
from mailsvc.crmstore.db import is_retryable, is_timeout
from mailsvc.crmstore.timeouts import Timeouts, postgres_connect_args


def test_every_postgres_connection_gets_server_and_client_bounds() -> None:
    args = postgres_connect_args(Timeouts())
    assert args["command_timeout"] == 12.0
    assert args["timeout"] == 5.0
    assert args["server_settings"] == {
        "statement_timeout": "10000",
        "lock_timeout": "5000",
        "idle_in_transaction_session_timeout": "60000",
        "tcp_keepalives_idle": "30",
        "tcp_keepalives_interval": "10",
        "tcp_keepalives_count": "3",
        "application_name": "mailsvc",  # how a worker knows which stalled sessions are ours
    }


def test_the_client_gives_up_after_the_server_would() -> None:
    bounds = Timeouts()
    assert bounds.command > bounds.statement  # a slow but alive server answers with its error


def test_zero_means_no_bound() -> None:
    args = postgres_connect_args(Timeouts(statement=0, command=0))
    assert args["command_timeout"] is None
    assert args["server_settings"]["statement_timeout"] == "0"


def test_migrations_have_no_statement_bound_but_wait_for_the_lock_at_most_ten_minutes() -> None:
    bounds = Timeouts().for_migrations()
    assert (bounds.statement, bounds.command, bounds.lock) == (0.0, 0.0, 600.0)


def test_settings_reach_the_bounds() -> None:
    settings = load_settings(_env_file=None, db_command_timeout_seconds=3,
                             db_statement_timeout_seconds=2, sqlite_busy_timeout_seconds=1)
    bounds = settings.store.timeouts()
    assert (bounds.command, bounds.statement, bounds.sqlite_busy) == (3, 2, 1)


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


class _Wrapped(Exception):
    def __init__(self, orig: BaseException) -> None:
        super().__init__(str(orig))
        self.orig = orig


def test_deadlocks_and_serialization_failures_may_be_retried_nothing_else() -> None:
    assert is_retryable(_Wrapped(_PgError("40P01")))
    assert is_retryable(_Wrapped(_PgError("40001")))
    assert not is_retryable(_Wrapped(_PgError("23505")))  # unique violation: a duplicate
    assert not is_retryable(ValueError("x"))


def test_a_timeout_is_found_in_the_chain() -> None:
    try:
        try:
            raise TimeoutError
        except TimeoutError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        assert is_timeout(outer)
    assert not is_timeout(ValueError("x"))
