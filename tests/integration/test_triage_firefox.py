"""The triage page in Firefox: Debian's firefox-esr driven over WebDriver BiDi by puppeteer-core
(tests/browser/firefox_triage.mjs), against the same real `mailsvc serve` as the Chromium tests.
Playwright's own Firefox build cannot be downloaded here, and Debian ships no geckodriver;
Firefox's built-in WebDriver BiDi needs neither."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_triage_page import (
    DEADLINE,
    KEY,
    Served,
    api,
    send_unclear_mail,
    served,  # noqa: F401  (the fixture)
    wait,
)

BROWSER_TESTS = Path(__file__).resolve().parent.parent / "browser"
pytestmark = [pytest.mark.rabbitmq]
FIREFOX = os.environ.get("MAILSVC_TEST_FIREFOX", "/usr/bin/firefox-esr")


def test_sign_in_in_german_and_link_a_mail_in_firefox(served: Served) -> None:  # noqa: F811
    assert os.path.exists(FIREFOX), f"{FIREFOX} is missing: apt-get install firefox-esr"
    node = shutil.which("node")
    assert node, "node is missing: apt-get install nodejs"
    assert (BROWSER_TESTS / "node_modules" / "puppeteer-core").is_dir(), (
        "run: npm ci --prefix tests/browser"
    )
    message_id = send_unclear_mail(served)

    def stored() -> Any:
        items = api(served, "/api/v1/emails?limit=50")["items"]
        return next((e for e in items if e["message_id"] == message_id), None)

    email = wait(stored, "the mail to be stored")
    run = subprocess.run(
        [node, str(BROWSER_TESTS / "firefox_triage.mjs"), served.api, KEY, str(email["id"]), "1"],
        capture_output=True, timeout=4 * DEADLINE, check=False,
        env={**os.environ, "MAILSVC_TEST_FIREFOX": FIREFOX},
    )
    steps = [json.loads(line) for line in run.stdout.decode().splitlines() if line.startswith("{")]
    assert run.returncode == 0, (steps, run.stderr.decode()[-2000:])
    assert [s["step"] for s in steps] == [
        "launched", "wrong key refused, in German", "signed in", "mail opened", "linked",
    ]
    assert steps[0]["version"].startswith("firefox/")
    detail = api(served, f"/api/v1/emails/{email['id']}")
    assert {"target_type": "opportunity", "target_id": 1, "rule": "manual"}.items() <= next(
        link for link in detail["links"] if link["target_type"] == "opportunity"
    ).items()
