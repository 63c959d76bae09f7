// The dashboard at / in Debian's chromium, headless, driven by playwright-core. Run by
// crates/ozbus/tests/http_dashboard.rs, which starts ozbus, drives SDMP traffic and reads this
// script's stdout: each line `step <name>` tells it how far the page got, so that it can act
// (start the traffic, re-issue a transaction) and check what SDMP clients observe.
//
// Owns what is asserted on what a user sees: no console error and no failed request, the
// outcomes the test sends, rates and backlogs that move, ending a transaction from the table
// with the keyboard only, a phone-sized viewport without horizontal scrolling; and the
// screenshots. Never: talks to ozbus other than through the page (the Rust test does), or
// leaves chromium running (it is closed whatever happens).
//
// Usage: node dashboard.mjs <base URL> <artifact directory>
//        node dashboard.mjs <base URL> <artifact directory> <user:password> <shown> <hidden>
// The second form logs in with HTTP Basic (as a browser asks for it) and checks that the page
// shows the campaign and transaction named <shown> and never anything named <hidden>.

import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [base, artifacts, credentials, shown, hidden] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error("usage: node dashboard.mjs <base URL> <artifact directory> [user:password]");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const TIMEOUT = 20_000;
const step = (name) => console.log("step " + name);
const problems = [];

async function waitFor(what, check, timeout = TIMEOUT) {
  const until = Date.now() + timeout;
  let last;
  while (Date.now() < until) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

const numberIn = (text) => Number(String(text).replace(/[^0-9.]/g, "")) || 0;

const profile = mkdtempSync(join(tmpdir(), "ozbus-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1440, height: 1000 },
  deviceScaleFactor: 1,
  colorScheme: "light",
  reducedMotion: "reduce",
  httpCredentials: credentials
    ? { username: credentials.slice(0, credentials.indexOf(":")), password: credentials.slice(credentials.indexOf(":") + 1) }
    : undefined,
});
let watching = true;
try {
  const page = browser.pages()[0] || (await browser.newPage());
  page.setDefaultTimeout(TIMEOUT);
  page.on("console", (message) => {
    if (watching && message.type() === "error") problems.push("console error: " + message.text());
  });
  page.on("pageerror", (error) => watching && problems.push("page error: " + error.message));
  page.on("requestfailed", (request) => {
    if (watching) problems.push(`request failed: ${request.method()} ${request.url()}: ${request.failure()?.errorText}`);
  });
  page.on("response", (response) => {
    // With users, the browser's Basic challenge is the protocol working: a 401 that asks
    // for Basic credentials, answered by the browser with them.
    const challenge = credentials && response.status() === 401 &&
      /basic/i.test(response.headers()["www-authenticate"] || "");
    if (challenge) console.log(`challenge: ${response.request().method()} ${response.url()}`);
    else if (watching && response.status() >= 400) problems.push(`HTTP ${response.status()}: ${response.request().method()} ${response.url()}`);
  });
  if (credentials) {
    await tenantOnly(page);
  } else {
    await everything(page);
  }
  watching = false;
  if (problems.length) throw new Error("the page had problems:\n  " + problems.join("\n  "));
  step("done");
} catch (error) {
  console.error(error.stack || String(error));
  if (problems.length) console.error("problems seen:\n  " + problems.join("\n  "));
  process.exitCode = 1;
} finally {
  watching = false;
  await browser.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}

/** With users: a supervisor sees its tenant's outcomes and transactions, no other's. */
async function tenantOnly(page) {
  // The page polls with a bearer token it took with the browser's Basic credentials.
  const bearers = [];
  page.on("request", (request) => {
    if (request.url().includes("/v1/summary")) bearers.push(/^Bearer /.test(request.headers()["authorization"] || ""));
  });
  const loaded = await page.goto(base + "/");
  if (loaded.status() !== 200) throw new Error("GET / answered " + loaded.status());
  await page.getByRole("status").getByText("live", { exact: true }).waitFor();
  step("ready");
  await page.getByRole("table", { name: /latest outcomes/i }).getByText(shown, { exact: true }).first().waitFor();
  await page.locator(`tr[data-key$="${shown}"]`).waitFor();
  await waitFor("a rate above zero", async () => numberIn(await page.locator("#kpi-total").textContent()));
  await page.getByRole("button", { name: "By campaign" }).click();
  await waitFor("the campaign in the legend", async () => (await page.locator("#legend").textContent()).includes(shown));
  // The other tenant's traffic flows meanwhile: a few refreshes more, and still none of it.
  await page.waitForTimeout(2500);
  const text = await page.locator("body").innerText();
  if (text.includes(hidden)) throw new Error(`the page shows ${hidden}, of another tenant`);
  if (!bearers.length || !bearers.every(Boolean)) throw new Error("/v1/summary was polled without a bearer token: " + bearers);
  console.log(`summary polled ${bearers.length} times with a bearer token`);
  const tenantShot = join(artifacts, "dashboard-tenant.png");
  await page.screenshot({ path: tenantShot, fullPage: true });
  console.log("screenshot " + tenantShot);
}

/** Without users: everything, under load, with the keyboard, and on a phone. */
async function everything(page) {

  // 1. The page loads and goes live; nothing has been reported yet.
  const loaded = await page.goto(base + "/");
  if (loaded.status() !== 200) throw new Error("GET / answered " + loaded.status());
  await page.getByRole("status").getByText("live", { exact: true }).waitFor();
  await page.getByRole("main").waitFor();
  await waitFor("the store's state", async () => (await page.locator("#store-state").textContent()) === "Writable");
  await waitFor("the transaction crm in the table", () => page.locator('tr[data-key$="crm"]').count());
  const before = numberIn(await page.locator("#kpi-total").textContent());
  if (before !== 0) throw new Error("outcomes per second before any traffic: " + before);
  step("ready");

  // 2. Traffic: the outcomes appear, the rate goes up, the released transaction's backlog grows.
  await page.getByRole("table", { name: /latest outcomes/i }).getByText("Sales1", { exact: true }).first().waitFor();
  await page.getByRole("table", { name: /latest outcomes/i }).getByText("Joe", { exact: true }).first().waitFor();
  const rate = await waitFor("a rate above zero", async () => numberIn(await page.locator("#kpi-total").textContent()));
  console.log("outcomes per second shown: " + rate);
  await waitFor("a line in the chart", async () => (await page.locator("#chart polyline").count()) >= 3);
  const crmBacklog = page.locator('tr[data-key$="crm"] .backlog');
  const first = numberIn(await crmBacklog.textContent());
  const grown = await waitFor("crm's backlog to grow", async () => {
    const now = numberIn(await crmBacklog.textContent());
    return now > first + 10 && now;
  });
  console.log(`backlog of crm: ${first} then ${grown}`);
  step("backlog-grew");

  // 3. The test re-issues crm slowly: its roll-forward shows; a screenshot under load.
  const rolling = page.locator('tr[data-key$="crm"]').getByText(/left at/);
  const left = numberIn((await rolling.textContent()).split(" left")[0]);
  await waitFor("crm's roll-forward to progress", async () =>
    numberIn((await rolling.textContent()).split(" left")[0]) < left);
  await page.getByRole("button", { name: "By campaign" }).click();
  await waitFor("the campaigns in the legend", async () =>
    (await page.locator("#legend").textContent()).includes("Retention"));
  await page.getByRole("button", { name: "By class" }).click();
  await waitFor("the rejections table", () => page.getByRole("table", { name: /refusals by error code/i }).getByText("410").count());
  // OZBUS_DASHBOARD_SOAK=<seconds>: that long under load first, for a screenshot with
  // history in its chart (docs/dashboard.png); the test itself does not wait.
  const soak = Number(process.env.OZBUS_DASHBOARD_SOAK || 0);
  if (soak > 0) await page.waitForTimeout(soak * 1000);
  const desktop = join(artifacts, "dashboard-desktop.png");
  await page.screenshot({ path: desktop, fullPage: true });
  console.log("screenshot " + desktop);

  // 4. End billing with the keyboard only: Tab to its button, Enter, Tab, Enter.
  await page.locator("body").click({ position: { x: 1, y: 1 } }).catch(() => {});
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  let reached = false;
  for (let i = 0; i < 80 && !reached; i++) {
    await page.keyboard.press("Tab");
    const label = await page.evaluate(() => document.activeElement?.getAttribute("aria-label") || "");
    reached = label.startsWith("End transaction billing");
  }
  if (!reached) throw new Error("Tab never reached the End button of billing");
  const focusRing = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  if (focusRing === "none") throw new Error("the focused End button shows no focus ring");
  await page.keyboard.press("Enter");
  const dialog = page.getByRole("dialog", { name: "End transaction?" });
  await dialog.waitFor();
  if (!(await dialog.textContent()).includes("billing")) throw new Error("the dialog does not name billing");
  await page.keyboard.press("Tab");
  const confirm = await page.evaluate(() => document.activeElement?.textContent);
  if (confirm !== "End transaction") throw new Error("Tab from Cancel went to " + confirm);
  await page.keyboard.press("Enter");
  await dialog.waitFor({ state: "hidden" });
  await page.locator('tr[data-key$="billing"]').waitFor({ state: "detached" });
  await page.waitForTimeout(300);
  const focused = await page.evaluate(() => ({
    what: document.activeElement?.getAttribute("aria-label") || document.activeElement?.id || document.activeElement?.tagName,
    inTable: !!document.activeElement?.closest('section[aria-labelledby="tx-title"]'),
  }));
  console.log("focus after ending: " + focused.what);
  if (!focused.inTable) throw new Error("after ending, the focus left the transactions: " + focused.what);
  step("ended billing");

  // 5. A phone: no horizontal scrolling, and a screenshot.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(1200);
  const overflow = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    width: document.documentElement.clientWidth,
  }));
  if (overflow.scroll > overflow.width) {
    throw new Error(`horizontal scrolling on a phone: ${overflow.scroll} px wide in ${overflow.width}`);
  }
  const phone = join(artifacts, "dashboard-phone.png");
  await page.evaluate(() => { window.scrollTo(0, 0); document.activeElement?.blur(); });
  await page.screenshot({ path: phone });
  console.log("screenshot " + phone);

}

