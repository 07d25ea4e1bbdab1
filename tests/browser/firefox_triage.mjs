// The triage page in Firefox (Debian's firefox-esr, driven over WebDriver BiDi by puppeteer-core):
// a wrong key is refused, German from the browser's language, sign in, find the mail that needs
// attention, link it to an opportunity by hand. Run by tests/integration/test_triage_firefox.py:
//   node firefox_triage.mjs API_URL KEY EMAIL_ID OPPORTUNITY_ID
// Prints one JSON line per step; exits 1 with the reason on the first failure.
import puppeteer from "puppeteer-core";

const [api, key, emailId, opportunityId] = process.argv.slice(2);
const firefox = process.env.MAILSVC_TEST_FIREFOX || "/usr/bin/firefox-esr";
const DEADLINE = 120_000; // generous: CI shares two cores

function step(name, detail = {}) {
  console.log(JSON.stringify({ step: name, ...detail }));
}

async function text(page, selector) {
  await page.waitForSelector(selector, { timeout: DEADLINE });
  return page.$eval(selector, (element) => element.textContent.trim());
}

async function submit(page, selector) {
  await Promise.all([page.waitForNavigation({ timeout: DEADLINE }), page.click(selector)]);
}

async function expectText(page, selector, wanted) {
  const seen = await text(page, selector);
  if (!seen.includes(wanted)) throw new Error(`${selector}: wanted "${wanted}", saw "${seen}"`);
}

const browser = await puppeteer.launch({
  browser: "firefox", executablePath: firefox, headless: true, protocolTimeout: DEADLINE,
  extraPrefsFirefox: { "intl.accept_languages": "de-DE, de" },
});
try {
  step("launched", { version: await browser.version() });
  const page = await browser.newPage();
  page.setDefaultTimeout(DEADLINE);

  await page.goto(`${api}/ui/inbox`);
  await page.type("input[name=key]", "not-the-key");
  await submit(page, "button[type=submit]");
  await expectText(page, ".error", "Dieser Schlüssel ist ungültig.");
  step("wrong key refused, in German");

  await page.type("input[name=key]", key);
  await submit(page, "button[type=submit]");
  await expectText(page, "h1", "Posteingang");
  step("signed in");

  const row = `tr[data-email-id='${emailId}']`;
  await expectText(page, row, "unknown_id:OPP-999");
  await submit(page, `${row} a`);
  step("mail opened", { url: page.url() });

  await page.select("#target-type", "opportunity");
  await page.type("#target-id", String(opportunityId));
  await submit(page, ".link-form button[type=submit]");
  await expectText(page, "#links", `opportunity ${opportunityId}`);
  step("linked");
} catch (error) {
  console.log(JSON.stringify({ step: "failed", error: String(error && error.stack || error) }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
