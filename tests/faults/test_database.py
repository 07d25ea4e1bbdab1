"""The database cut, black-holed and half-open under load: senders get 451 (never silence) within a
bounded time, /readyz says 503 while the database does not answer, and intake recovers by itself
once the database is back, with every promise kept."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.faults.harness import (
    Load,
    Serve,
    Stack,
    check_promises,
    figures,
    running,
    size,
    wait_until,
)


class ReadyzWatch:
    """Polls /readyz in the background and remembers (time, status code, seconds it took)."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.seen: list[tuple[float, int | None, float]] = []
        self.broker: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> ReadyzWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _poll(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            answer = self.serve.readyz()
            self.seen.append((started, answer[0] if answer else None, time.monotonic() - started))
            if answer is not None:
                self.broker.append((started, str(answer[1]["checks"].get("broker"))))
            self._stop.wait(0.25)

    def first(self, code: int, after: float) -> float | None:
        return next((t for t, c, _ in self.seen if c == code and t >= after), None)

    def slowest(self, after: float) -> float:
        return max((s for t, _, s in self.seen if t >= after), default=0.0)


@pytest.mark.parametrize("fault", ["cut", "blackhole", "half_open"])
def test_database_fault_gives_451_then_recovers_without_restart(
    tmp_path: Path, fault: str
) -> None:
    hold = size(ci=5, full=30)  # seconds the fault lasts after it showed
    with Stack(tmp_path) as stack, running(stack) as [serve], ReadyzWatch(serve) as readyz:
        load = Load([serve.smtp_port], clients=3).start()
        wait_until(lambda: len(load.accepted()) >= 20, within=120, what="mail flowing")
        wait_until(lambda: readyz.first(200, 0) is not None, within=60, what="/readyz 200")

        began = time.monotonic()
        getattr(stack.db_proxy, fault)()
        if fault == "half_open":
            # Only the connections open at that moment are dead; new ones work. The writer must
            # notice its dead connection (client timeout), answer 451 and carry on.
            wait_until(lambda: any(a.code == 250 and a.at - a.seconds > began + 1
                                   for a in load.since(began)),
                       within=180, what="250 on a fresh connection after the half-open fault")
        else:
            wait_until(lambda: any(a.code == 451 for a in load.since(began)), within=180,
                       what="451 while the database is away")
            wait_until(lambda: readyz.first(503, began) is not None, within=60,
                       what="/readyz 503 while the database is away")
        time.sleep(hold)  # a fault that lasts: senders keep getting 451, never silence
        restored = time.monotonic()
        stack.db_proxy.forward()
        wait_until(lambda: any(a.code == 250 and a.at - a.seconds >= restored
                               for a in load.since(restored)),
                   within=180, what="250 again after the database returned")
        wait_until(lambda: readyz.first(200, restored) is not None, within=60,
                   what="/readyz 200 again")
        recovered = time.monotonic()
        load.stop()

        during = [a for a in load.since(began) if a.at - a.seconds < restored]
        silent = [a for a in during if a.code is None]
        assert not silent, f"no reply at all: {silent[:3]}"
        first_451 = min((a.at - began for a in during if a.code == 451), default=None)
        first_503 = readyz.first(503, began)
        figures(f"database {fault}", {
            "first_451_s": None if first_451 is None else round(first_451, 1),
            "slowest_reply_during_fault_s": round(max((a.seconds for a in during), default=0), 1),
            "readyz_503_after_s": None if first_503 is None else round(first_503 - began, 1),
            "readyz_slowest_s": round(readyz.slowest(began), 1),
            "recovered_after_restore_s": round(recovered - restored, 1),
            "codes_during_fault": {str(k): sum(1 for a in during if a.code == k)
                                   for k in {a.code for a in during}},
        })
        assert readyz.slowest(began) < 30  # never hangs (its own deadline is a few seconds)
        # The broker is fine all along: a lost database must not be reported as a lost broker.
        assert {state for t, state in readyz.broker if t >= began} == {"ok"}
        check_promises(stack, load)
