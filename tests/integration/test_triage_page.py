"""The triage page in a real browser (Debian's Chromium driven by Playwright) against a real
`mailsvc serve`: sign in, find the mail that needs attention, link it to an opportunity, and see
the link in the REST API and the event on RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import subprocess
import sys
import time
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, TypeVar

import aio_pika
import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import AMQP_URL, BCC, SALES, SUPPORT
from tests.integration.test_serve import free_port, wait_until_listening

CHROMIUM = os.environ.get("MAILSVC_TEST_CHROMIUM", "/usr/bin/chromium")
KEY = "triage-test-key"
DEADLINE = 120.0

pytestmark = [pytest.mark.rabbitmq]
T = TypeVar("T")


@dataclass
class Served:
    api: str
    smtp_port: int
    exchange: str


def mailsvc_env(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"], "MAILSVC_DATABASE_URL": database_url,
        "MAILSVC_BCC_ADDRESS": BCC, "MAILSVC_SALES_ADDRESS": SALES,
        "MAILSVC_SUPPORT_ADDRESS": SUPPORT, "MAILSVC_LOG_LEVEL": "WARNING", **extra,
    }


@pytest.fixture
def browser(served: Served) -> Iterator[Browser]:
    """Started after the service: Playwright's sync API keeps an event loop running in this
    thread while it is open, which the database fixtures' own asyncio.run must not meet."""
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        yield browser
        browser.close()


def wait(probe: Any, what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {DEADLINE}s waiting for {what}")


@pytest.fixture
def served(database_url: str) -> Iterator[Served]:
    seeded = subprocess.run([sys.executable, "-m", "mailsvc", "seed-demo"],
                            env=mailsvc_env(database_url), capture_output=True, check=False)
    assert seeded.returncode == 0, seeded.stderr.decode()
    smtp_port, api_port = free_port(), free_port()
    exchange = f"mailsvc.test.{uuid.uuid4().hex[:8]}"
    process = subprocess.Popen(
        [sys.executable, "-m", "mailsvc", "serve"], stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=mailsvc_env(database_url, MAILSVC_SMTP_PORT=str(smtp_port),
                        MAILSVC_API_PORT=str(api_port), MAILSVC_API_KEYS=KEY,
                        MAILSVC_AMQP_URL=AMQP_URL, MAILSVC_AMQP_EXCHANGE=exchange,
                        MAILSVC_RELAY_POLL_SECONDS="0.2"),
    )
    try:
        wait_until_listening(smtp_port, process, timeout=DEADLINE)
        wait_until_listening(api_port, process, timeout=DEADLINE)
        yield Served(f"http://127.0.0.1:{api_port}", smtp_port, exchange)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=DEADLINE)


def send_unclear_mail(served: Served) -> str:
    """A customer's mail naming an opportunity that does not exist: a person must decide."""
    message = EmailMessage()
    message["From"] = "Paula Prospect <paula@prospect.example>"
    message["To"] = BCC
    message["Subject"] = "Question about OPP-999"
    message["Message-ID"] = f"<{uuid.uuid4().hex}@prospect.example>"
    message.set_content("Hello, what about our offer?")
    with smtplib.SMTP("127.0.0.1", served.smtp_port) as smtp:
        smtp.send_message(message)
    return str(message["Message-ID"]).strip("<>")


def api(served: Served, path: str) -> Any:
    response = httpx.get(served.api + path, headers={"Authorization": f"Bearer {KEY}"})
    response.raise_for_status()
    return response.json()


def sign_in(page: Page, served: Served) -> None:
    page.goto(served.api + "/ui/")
    expect(page).to_have_url(f"{served.api}/ui/login?next=/ui/inbox")
    page.fill("input[name=key]", KEY)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{served.api}/ui/inbox")


def test_link_a_mail_that_needs_attention(served: Served, browser: Browser) -> None:
    message_id = send_unclear_mail(served)

    def stored() -> Any:
        items = api(served, "/api/v1/emails?limit=50")["items"]
        return next((e for e in items if e["message_id"] == message_id), None)

    email = wait(stored, "the mail to be stored")

    queue = run_async(_bind(served.exchange))
    page = browser.new_page(locale="en-GB")
    sign_in(page, served)
    row = page.locator(f"tr[data-email-id='{email['id']}']")
    expect(row).to_contain_text("unknown_id:OPP-999")
    row.get_by_role("link").click()
    page.select_option("#target-type", "opportunity")
    page.fill("#target-id", "1")
    expect(page.locator("#record-choices option")).to_have_count(1)
    page.click(".link-form button[type=submit]")
    expect(page.locator("#links")).to_contain_text("opportunity 1")
    screenshot(page, "mail")

    detail = api(served, f"/api/v1/emails/{email['id']}")
    assert {"target_type": "opportunity", "target_id": 1, "rule": "manual"}.items() <= next(
        link for link in detail["links"] if link["target_type"] == "opportunity"
    ).items()
    events = run_async(_events(queue, email["id"]))
    assert any(e["data"].get("rule") == "manual" and e["data"].get("target_id") == 1
               for e in events), events


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Playwright's sync API runs a loop in this thread: broker work runs in another."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _bind(exchange: str) -> str:
    """A queue bound to the service's exchange before the action, so no event is missed."""
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        bound = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC,
                                               durable=True)
        queue = await channel.declare_queue(f"{exchange}.ui", auto_delete=False)
        await queue.bind(bound, "email.linked")
        return queue.name


async def _events(queue_name: str, email_id: int) -> list[dict[str, Any]]:
    """The manual email.linked events of the mail, waited for with a generous deadline."""
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, auto_delete=False, passive=True)
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and not found:
            message = await queue.get(fail=False)
            if message is None:
                await asyncio.sleep(0.1)
                continue
            await message.ack()
            event = json.loads(message.body)
            manual = event["data"].get("rule") == "manual"
            if event.get("subject") == f"email/{email_id}" and manual:
                found.append(event)
        await channel.queue_delete(queue_name)
        return found


def test_german_from_the_browser_language_and_a_wrong_key_refused(
    served: Served, browser: Browser
) -> None:
    page = browser.new_page(locale="de-DE")
    page.goto(served.api + "/ui/inbox")
    page.fill("input[name=key]", "not-the-key")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_have_text("Dieser Schlüssel ist ungültig.")
    page.fill("input[name=key]", KEY)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Posteingang")
    for link, heading in (("Inbox-Leads", "Inbox-Leads"), ("Tickets", "Tickets"),
                          ("Quarantäne", "Quarantäne"), ("Zustand", "Zustand")):
        page.click(f"nav >> text={link}")
        expect(page.locator("h1")).to_have_text(heading)
    expect(page.locator("#outbox")).to_be_visible()
    page.click("text=English")
    expect(page.locator("h1")).to_have_text("Health")


def test_a_form_without_its_csrf_token_changes_nothing(served: Served) -> None:
    message_id = send_unclear_mail(served)

    def stored() -> Any:
        items = api(served, "/api/v1/emails?limit=50")["items"]
        return next((e for e in items if e["message_id"] == message_id), None)

    email = wait(stored, "the mail to be stored")
    signed_in = httpx.post(served.api + "/ui/login", data={"key": KEY, "next": "/ui/inbox"})
    assert signed_in.status_code == 303
    cookie = signed_in.headers["set-cookie"].split(";", 1)[0]
    assert "HttpOnly" in signed_in.headers["set-cookie"]
    assert "SameSite=strict" in signed_in.headers["set-cookie"]
    forged = httpx.post(
        f"{served.api}/ui/mail/{email['id']}/link", headers={"Cookie": cookie},
        data={"csrf": "guessed", "target_type": "opportunity", "target_id": "1"},
    )
    assert forged.status_code == 303 and forged.headers["location"].startswith("/ui/login")
    links = api(served, f"/api/v1/emails/{email['id']}")["links"]
    assert not any(link["rule"] == "manual" for link in links)


def screenshot(page: Page, name: str) -> None:
    """With MAILSVC_UI_SCREENSHOTS=DIR the pages are saved there (docs/ui.md shows them)."""
    folder = os.environ.get("MAILSVC_UI_SCREENSHOTS")
    if folder:
        page.screenshot(path=os.path.join(folder, f"{name}.png"), full_page=True)


def send(served: Served, raw: bytes, to: str) -> None:
    with smtplib.SMTP("127.0.0.1", served.smtp_port) as smtp:
        smtp.sendmail("someone@outside.example", [to], raw)


def test_convert_a_lead_and_retry_quarantined_mail(served: Served, browser: Browser) -> None:
    lead_mail = (b"From: Olga Neu <olga@neukunde.example>\r\nTo: sales@crm.example\r\n"
                 b"Subject: Angebot gesucht\r\nMessage-ID: <lead-ui@neukunde.example>\r\n\r\n"
                 b"Guten Tag, wir brauchen ein Angebot.\r\n")
    send(served, lead_mail, SALES)
    send(served, b"\x00\x01\x02\x03 binary, not a mail\r\n", SALES)

    def lead() -> Any:
        items = api(served, "/api/v1/inbox-leads?limit=50")["items"]
        return next((i for i in items if i["email"] == "olga@neukunde.example"), None)

    found = wait(lead, "the inbox lead")
    page = browser.new_page(locale="en-GB")
    sign_in(page, served)
    screenshot(page, "inbox")
    page.click("nav >> text=Inbox leads")
    row = page.locator("tr", has_text="olga@neukunde.example")
    screenshot(page, "leads")
    row.get_by_role("button").click()
    expect(page.locator(".message")).to_have_text("Done.")
    converted = api(served, f"/api/v1/inbox-leads/{found['id']}")
    assert converted["opportunity_id"] is not None

    def quarantined_row() -> Any:
        page.goto(served.api + "/ui/quarantine")
        return page.locator("tbody tr").count() > 0

    wait(quarantined_row, "the quarantined mail on the page")
    screenshot(page, "quarantine")
    page.locator("tbody tr").first.get_by_role("button", name="Retry").click()
    expect(page.locator(".message")).to_contain_text("quarantined")  # still not a mail
    page.click("nav >> text=Health")
    expect(page.locator("#quarantine")).to_have_text("1")
    screenshot(page, "health")

    # Dropping asks first; declined, nothing happens; accepted, the mail is gone.
    page.click("nav >> text=Quarantine")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.locator("tbody tr").first.get_by_role("button", name="Drop").click()
    expect(page.locator("tbody tr")).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("tbody tr").first.get_by_role("button", name="Drop").click()
    expect(page.locator(".message")).to_have_text("dropped")
    expect(page.locator("tbody tr")).to_have_count(0)
    page.click("nav >> text=Health")
    expect(page.locator("#quarantine")).to_have_text("0")
