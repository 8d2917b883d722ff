/**
 * The page in a real browser (headless Chromium through playwright-core):
 * two people chatting, HTML shown as text, Chinese, and a server restart.
 *
 * Needs /usr/bin/chromium. Without it the tests are skipped, except on CI
 * (CI=true), where a missing browser is a failure.
 */

import assert from "node:assert/strict";
import { type Browser, type BrowserContext, chromium, type Page } from "npm:playwright-core@1";
import { spawnServer, startServer } from "./_server.ts";

const CHROMIUM = "/usr/bin/chromium";
const hasChromium = (() => {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
})();
const onCi = Deno.env.get("CI") === "true";

if (!hasChromium) {
  if (onCi) {
    Deno.test("Chromium is installed at /usr/bin/chromium (required on CI)", () => {
      throw new Error(`${CHROMIUM} is missing: install the chromium package`);
    });
  } else {
    console.warn(`browser tests skipped: ${CHROMIUM} is missing (apt-get install chromium)`);
  }
}

/** What a browser test gets: a way to open pages, and the errors they raised. */
interface Harness {
  /** A fresh browser context (its own localStorage) with one page at `origin`. */
  open(origin: string): Promise<Page>;
  /** Uncaught exceptions and console errors of every page, with the page's label. */
  problems: string[];
}

function browserTest(name: string, fn: (h: Harness) => Promise<void>): void {
  Deno.test({
    name,
    ignore: !hasChromium,
    async fn() {
      const browser: Browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: [
          "--no-sandbox",
          "--disable-gpu",
          "--disable-background-networking",
          "--disable-component-update",
          "--disable-sync",
          "--no-first-run",
        ],
      });
      const contexts: BrowserContext[] = [];
      const problems: string[] = [];
      try {
        await fn({
          problems,
          async open(origin) {
            const context = await browser.newContext({ locale: "en-US" });
            contexts.push(context);
            const page = await context.newPage();
            page.setDefaultTimeout(30_000);
            page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
            page.on("console", (m) => {
              if (m.type() === "error") problems.push(`console: ${m.text()}`);
            });
            await page.goto(origin);
            return page;
          },
        });
      } finally {
        for (const context of contexts) await context.close();
        await browser.close();
      }
    },
  });
}

/** Waits until the status element says exactly `text` (or matches it). */
async function waitStatus(page: Page, text: string | RegExp): Promise<void> {
  const pattern = typeof text === "string" ? new RegExp(`^${RegExp.escape(text)}$`) : text;
  await page.locator("#status").filter({ hasText: pattern }).waitFor();
}

/** Waits until the open conversation is `name`. */
async function waitTitle(page: Page, name: string): Promise<void> {
  await page.locator("#title").filter({ hasText: new RegExp(`^${RegExp.escape(name)}$`) })
    .waitFor();
}

async function logIn(page: Page, name: string): Promise<void> {
  await page.fill("#name", name);
  await page.click('#login button[type="submit"]');
  await page.locator("#app").waitFor({ state: "visible" });
  await waitStatus(page, "connected");
}

/** The `.msg` elements of the open conversation whose text is exactly `text`. */
function messages(page: Page, text: string) {
  return page.locator("#messages .msg").filter({
    has: page.locator(".text").getByText(text, { exact: true }),
  });
}

/** Types into the composer, presses Enter, and waits for the server's acknowledgement. */
async function say(page: Page, text: string): Promise<void> {
  await page.fill("#composer", text);
  await page.press("#composer", "Enter");
  await messages(page, text).and(page.locator(".mine[data-id]:not(.pending)")).waitFor();
}

/** Waits until exactly one message with `text` shows, and returns it. */
async function seeOnce(page: Page, text: string) {
  const found = messages(page, text);
  await found.first().waitFor();
  assert.equal(await found.count(), 1, `"${text}" shows once`);
  return found.first();
}

browserTest("two people chat in the lobby and by DM, and history survives a reload", async (h) => {
  await using server = await startServer();
  const alice = await h.open(server.origin);
  const bob = await h.open(server.origin);
  await logIn(alice, "alice");
  await logIn(bob, "bob");

  await say(alice, "hello everyone");
  const lobbyMsg = await seeOnce(bob, "hello everyone");
  assert.equal(await lobbyMsg.locator(".from").textContent(), "alice");
  assert.match(await lobbyMsg.locator(".time").textContent() ?? "", /\d/);
  assert.equal(await lobbyMsg.evaluate((e) => e.classList.contains("mine")), false);

  await alice.click('#users [data-user="bob"]');
  await waitTitle(alice, "bob");
  await say(alice, "psst, bob");

  const badge = bob.locator('#dms [data-dm="alice"] .badge');
  await badge.waitFor({ state: "visible" });
  assert.equal(await badge.textContent(), "1");
  assert.equal(await bob.title(), "(1) Chat");

  await bob.click('#dms [data-dm="alice"]');
  await seeOnce(bob, "psst, bob");
  await badge.waitFor({ state: "hidden" });
  assert.equal(await bob.title(), "Chat");

  await say(bob, "hi alice");
  await seeOnce(alice, "hi alice");

  await alice.reload();
  await waitStatus(alice, "connected");
  assert.equal(await alice.locator("#login").isVisible(), false, "still logged in");
  assert.equal(await alice.locator("#me").textContent(), "alice");
  await waitTitle(alice, "bob");
  await seeOnce(alice, "psst, bob");
  await seeOnce(alice, "hi alice");
  await alice.click('#rooms [data-room="lobby"]');
  const own = await seeOnce(alice, "hello everyone");
  assert.equal(await own.evaluate((e) => e.classList.contains("mine")), true);

  assert.deepEqual(h.problems, []);
});

browserTest("a message holding HTML and script shows as literal text", async (h) => {
  await using server = await startServer();
  const mallory = await h.open(server.origin);
  const victim = await h.open(server.origin);
  await logIn(mallory, "mallory");
  await logIn(victim, "victim");

  const evil = `<img src=x onerror=window.__pwned=1><b>x</b>`;
  await say(mallory, evil);
  for (const page of [victim, mallory]) {
    const shown = await seeOnce(page, evil);
    assert.equal(await shown.locator(".text").textContent(), evil);
    assert.equal(await page.locator("#messages img, #messages b").count(), 0);
    assert.equal(await page.evaluate(() => "__pwned" in globalThis), false);
  }

  // History takes another path into the page: it must be just as inert.
  await victim.reload();
  await waitStatus(victim, "connected");
  await seeOnce(victim, evil);
  assert.equal(await victim.locator("#messages img, #messages b").count(), 0);
  assert.equal(await victim.evaluate(() => "__pwned" in globalThis), false);

  assert.deepEqual(h.problems, []);
});

browserTest("a Chinese name and Chinese text display as typed", async (h) => {
  await using server = await startServer();
  const xiaoming = await h.open(server.origin);
  const reader = await h.open(server.origin);
  await logIn(xiaoming, "小明");
  await logIn(reader, "reader");
  assert.equal(await xiaoming.locator("#me").textContent(), "小明");
  assert.equal(await xiaoming.evaluate("document.characterSet"), "UTF-8");

  await reader.locator('#users [data-user="小明"]').waitFor();
  await say(xiaoming, "你好，世界");
  const seen = await seeOnce(reader, "你好，世界");
  assert.equal(await seen.locator(".from").textContent(), "小明");

  // A DM to a Chinese name goes through the URL-free path too.
  await reader.click('#users [data-user="小明"]');
  await say(reader, "你好，小明！");
  await xiaoming.locator('#dms [data-dm="reader"] .badge').waitFor({ state: "visible" });
  await xiaoming.click('#dms [data-dm="reader"]');
  await seeOnce(xiaoming, "你好，小明！");

  assert.deepEqual(h.problems, []);
});

browserTest(
  "the page reconnects after the server dies and restarts, keeping history",
  async (h) => {
    const dir = await Deno.makeTempDir({ prefix: "chat-browser-" });
    const data = `${dir}/chat.kv`;
    let server = await spawnServer({ data });
    try {
      const page = await h.open(server.origin);
      await logIn(page, "carol");
      await say(page, "before the crash");

      await server.kill("SIGKILL");
      await waitStatus(page, /^reconnecting in \d+s…$/);

      // Written while offline: shown as pending, delivered after reconnecting.
      await page.fill("#composer", "written while offline");
      await page.press("#composer", "Enter");
      await messages(page, "written while offline").and(page.locator(".pending")).waitFor();

      server = await spawnServer({ data, port: server.port });
      await waitStatus(page, "connected");
      await seeOnce(page, "before the crash");
      const sent = await seeOnce(page, "written while offline");
      await page.locator('.msg.mine[data-id="2"]:not(.pending)').waitFor();
      assert.equal(await sent.getAttribute("data-id"), "2");
      assert.equal(await page.locator("#messages .msg").count(), 2);
      assert.deepEqual(
        h.problems.filter((p) => !/WebSocket|ERR_CONNECTION_REFUSED/.test(p)),
        [],
      );
    } finally {
      await server.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
);
