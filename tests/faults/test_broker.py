"""The broker cut and black-holed under load: mail is still accepted (250), /readyz stays ready and
tells the truth about the broker, and once the broker is back every event goes out within seconds,
at least once, with its stable id."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.harness import Load, Stack, check_promises, figures, running, size, wait_until


@pytest.mark.parametrize("fault", ["cut", "blackhole"])
def test_broker_fault_keeps_intake_ready_and_events_catch_up(tmp_path: Path, fault: str) -> None:
    hold = size(ci=3, full=30)
    with Stack(tmp_path) as stack, running(stack) as [serve]:
        assert stack.amqp_proxy is not None
        load = Load([serve.smtp_port], clients=3).start()
        wait_until(lambda: len(load.accepted()) >= 20, within=120, what="mail flowing")

        def broker_state() -> str:
            answer = serve.readyz()
            assert answer is not None
            code, body = answer
            assert code == 200, body  # the broker never makes the instance unready
            return str(body["checks"]["broker"])

        wait_until(lambda: broker_state() == "ok", within=60, what="broker ok")
        began = time.monotonic()
        getattr(stack.amqp_proxy, fault)()
        wait_until(lambda: broker_state() != "ok", within=60, what="/readyz to see the broker gone")
        noticed = time.monotonic() - began
        accepted_before = len(load.accepted())
        wait_until(lambda: len(load.accepted()) >= accepted_before + 20, within=120,
                   what="mail accepted while the broker is away")
        time.sleep(hold)
        assert broker_state() != "ok"
        load.stop()

        restored = time.monotonic()
        stack.amqp_proxy.forward()

        def drained() -> bool:
            return all(row["sent_at"] is not None for row in stack.outbox())

        wait_until(drained, within=120, what="the outbox drained after the broker returned",
                   every=0.2)
        caught_up = time.monotonic() - restored
        wait_until(lambda: broker_state() == "ok", within=60, what="broker ok again")
        figures(f"broker {fault}", {
            "readyz_noticed_s": round(noticed, 1),
            "outbox_drained_after_restore_s": round(caught_up, 1),
            "codes_during_fault": {str(k): v for k, v in load.codes().items()},
        })
        check_promises(stack, load)
