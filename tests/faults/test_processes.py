"""Several `mailsvc serve` processes on one PostgreSQL: the same mail racing into two processes is
answered `duplicate` (never 451) and stored once; load spread over the processes keeps every
promise; processes cold-starting together on an empty database all come up."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from tests.faults.harness import (
    Attempt,
    Load,
    Stack,
    check_promises,
    figures,
    make_mail,
    running,
    send_once,
    size,
    wait_until,
)


def race(ports: list[int], tag: str, mails: int, burst: int) -> list[tuple[str, Attempt]]:
    """Each mail sent to every port at the same moment, ``burst`` mails at a time in random
    order (so the processes' group commits hold the same keys in different orders)."""
    results: list[tuple[str, Attempt]] = []
    lock = threading.Lock()
    for start in range(0, mails, burst):
        jobs = [(n, port) for n in range(start, min(start + burst, mails)) for port in ports]
        random.shuffle(jobs)
        barrier = threading.Barrier(len(jobs))

        def send(n: int, port: int, barrier: threading.Barrier = barrier) -> None:
            message_id, data = make_mail(tag, n)
            barrier.wait()
            attempt = send_once(port, message_id, data)
            with lock:
                results.append((message_id, attempt))

        threads = [threading.Thread(target=send, args=job) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    return results


def test_the_same_mail_racing_into_two_processes_is_a_duplicate_not_451(tmp_path: Path) -> None:
    mails = size(ci=60, full=600)
    with Stack(tmp_path, broker=False) as stack, running(stack, 2) as processes:
        results = race([p.smtp_port for p in processes], "race", mails, burst=10)
        codes = [a.code for _, a in results]
        failed = [a for _, a in results if a.code != 250]
        figures("two processes, same mail", {
            "pairs": mails, "451": codes.count(451), "other": len(failed) - codes.count(451),
            "duplicates": sum(1 for _, a in results if "duplicate" in a.reply),
        })
        assert not failed, f"{len(failed)} not accepted, e.g. {failed[:3]}"
        wait_until(lambda: stack.undecided() == 0, within=180, what="every accepted mail decided",
                   every=0.5)
        stored = stack.stored()
        assert len(stored) == mails
        assert set(stored.values()) == {1}
        # Of every pair, exactly one stored the mail and the other answered duplicate.
        duplicates = {m for m, a in results if "duplicate" in a.reply}
        assert len(duplicates) == mails


@pytest.mark.parametrize("count", [2, 4])
def test_several_processes_share_the_load_and_keep_every_promise(
    tmp_path: Path, count: int
) -> None:
    mails = size(ci=40 * count, full=1000 * count)
    with Stack(tmp_path) as stack, running(stack, count) as processes:
        load = Load([p.smtp_port for p in processes], clients=2 * count).start(limit=mails)
        load.join()
        verdict = check_promises(stack, load)
        assert verdict.accepted == mails


def test_processes_cold_starting_on_an_empty_database_all_come_up(tmp_path: Path) -> None:
    count = size(ci=2, full=4)
    with Stack(tmp_path, broker=False) as stack:
        processes = [stack.serve() for _ in range(count)]  # together, on an empty database
        for process in processes:
            process.wait_ready()
        load = Load([p.smtp_port for p in processes], clients=count).start(limit=10 * count)
        load.join()
        check_promises(stack, load, events=False)
        assert all(p.process is not None and p.process.poll() is None for p in processes)
        wait_until(lambda: all((r := p.readyz()) is not None and r[0] == 200 for p in processes),
                   within=60, what="every process ready")


def test_concurrent_upgrades_of_an_empty_database_all_succeed(tmp_path: Path) -> None:
    import asyncio

    from mailsvc.crmstore.db import create_engine
    from mailsvc.crmstore.migrate import current_revision, head_revision, upgrade

    async def go(url: str) -> set[str | None]:
        engines = [create_engine(url) for _ in range(4)]
        try:
            await asyncio.gather(*(upgrade(engine) for engine in engines))
            return {await current_revision(e) for e in engines}
        finally:
            for engine in engines:
                await engine.dispose()

    with Stack(tmp_path, broker=False) as stack:
        assert asyncio.run(go(stack.database_url(direct=True))) == {head_revision()}
