"""SIGKILL of `mailsvc serve` under load, several times: nothing acknowledged is lost, nothing is
stored twice, every event goes out (at least once, with its stable id)."""

from __future__ import annotations

import random
import time
from pathlib import Path

from tests.faults.harness import Load, Stack, check_promises, running, size, wait_until


def test_sigkill_under_load_loses_nothing_and_stores_nothing_twice(tmp_path: Path) -> None:
    kills = size(ci=2, full=15)
    with Stack(tmp_path) as stack, running(stack) as [serve]:
        load = Load([serve.smtp_port], clients=4).start()
        for _ in range(kills):
            before = len(load.accepted())
            # Kill at a random moment once mail flows: mid-DATA, mid-commit, after the commit and
            # before the reply all happen over several kills.
            wait_until(lambda b=before: len(load.accepted()) >= b + 20, within=120,
                       what="mail flowing before the kill")
            time.sleep(random.uniform(0, 0.5))
            serve.restart()
        wait_until(lambda: len(load.accepted()) >= 20 * (kills + 1), within=120,
                   what="mail flowing after the last restart")
        load.stop()
        verdict = check_promises(stack, load)
        assert serve.kills == kills
        assert verdict.accepted == len(load.sent())  # every mail got its 250 in the end
