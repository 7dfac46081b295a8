// The dashboard in a real browser, driven by tests/dashboard.rs:
//
//   node tests/browser/dashboard.mjs URL KEY SKU LOCATION ON_HAND_AFTER ALERT_KIND SCREENSHOT
//
// Opens URL/dashboard, enters KEY, loads SKU and waits for its level at LOCATION; then
// prints READY (the Rust test then posts a movement through the API) and waits, at most
// CHANGE_MS (2 s) from then, for the on_hand cell to show ON_HAND_AFTER and for an alert of
// ALERT_KIND about SKU@LOCATION to be listed, without a reload; acknowledges it with its
// button, then saves a screenshot. Exits 0 on success, 1 with the reason on stderr otherwise.
// CHROMIUM (default /usr/bin/chromium) names the browser.
import { chromium } from "playwright-core";

const [url, key, sku, location, onHandAfter, alertKind, screenshot] = process.argv.slice(2);
if (!screenshot) {
  console.error("usage: dashboard.mjs URL KEY SKU LOCATION ON_HAND_AFTER ALERT_KIND SCREENSHOT");
  process.exit(2);
}
const WAIT_MS = 60_000;
const CHANGE_MS = Number(process.env.CHANGE_MS || 2_000);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    // A failed load is reported with its address below.
    if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
      problems.push(`console error: ${message.text()}`);
    }
  });
  page.on("response", (response) => {
    if (response.status() >= 400) problems.push(`${response.status()} for ${response.url()}`);
  });

  await page.goto(`${url}/dashboard`);
  await page.fill("#api-key", key);
  await page.click("#connect");
  await page.waitForSelector("#status[data-state=live]", { timeout: WAIT_MS });

  await page.fill("#watch-skus", sku);
  await page.click("#watch-form button");
  const onHand = `td[data-sku="${sku}"][data-location="${location}"][data-field="on_hand"]`;
  await page.waitForSelector(onHand, { timeout: WAIT_MS });
  const before = await page.textContent(onHand);
  console.log(`READY ${before}`);
  const ready = Date.now();

  await page.waitForFunction(
    ([selector, expected]) => document.querySelector(selector)?.textContent === expected,
    [onHand, onHandAfter],
    { timeout: CHANGE_MS },
  );
  const changedMs = Date.now() - ready;
  const alert = `#alerts li[data-kind="${alertKind}"][data-state="open"]`;
  await page.waitForFunction(
    ([selector, subject]) => [...document.querySelectorAll(selector)].some((li) => li.querySelector(".subject")?.textContent === subject),
    [alert, `${sku}@${location}`],
    { timeout: Math.max(CHANGE_MS - changedMs, 1) },
  );
  const alertMs = Date.now() - ready;
  // The level over time is drawn from the database, and the propagation told.
  await page.waitForSelector("#history-card:not([hidden])", { timeout: WAIT_MS });
  const propagation = await page.textContent("#propagation");
  if (!propagation.includes("median")) throw new Error(`no propagation figures: ${propagation}`);
  const alertText = await page.textContent(alert);
  await page.click(`${alert} button.ack`);
  await page.waitForSelector(`#alerts li[data-kind="${alertKind}"][data-state="acknowledged"]`, { timeout: WAIT_MS });
  // The key stays in this tab: a reload connects again without asking.
  const kept = await page.evaluate(() => sessionStorage.getItem("onhand.dashboard.key"));
  if (kept !== key) throw new Error("the key is not kept in sessionStorage");

  // Let the chart draw a second with the change in it.
  await page.waitForTimeout(1200);
  await page.screenshot({ path: screenshot, fullPage: true });
  const allowed = (p) => p.includes("chart.umd.min.js.map"); // a source map the page does not need
  const serious = problems.filter((p) => !allowed(p));
  if (serious.length) throw new Error(serious.join("\n"));
  console.log(`OK on_hand ${before} -> ${onHandAfter} in ${changedMs} ms; alert in ${alertMs} ms: ${alertText.trim()}`);
} catch (error) {
  failed = true;
  console.error(`FAILED: ${error.message}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
