"""Waiting on a condition with a deadline, instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_for(
    probe: Callable[[], Awaitable[T]], *, within: float = 10.0, interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


async def undecided(services: Any) -> int:
    """Mails accepted and not decided yet (rows in the intake, wherever the store keeps it)."""
    count, _ = await services.pipeline.writer.backlog()
    return int(count)


async def intake_rows(services: Any) -> list[Any]:
    """The intake's rows (``IntakeRecord``), in arrival order."""
    return list(await services.pipeline.writer.pending(0, 100_000))


async def settled(services: Any, within: float = 120.0) -> None:
    """Wait until every accepted mail is decided (the intake is empty): an SMTP 250 means
    accepted, and a decide worker stores the mail right after."""

    async def empty() -> bool:
        return not await undecided(services)

    await wait_for(empty, within=within, interval=0.05, what="every accepted mail decided")
