/**
 * The page in a real browser (headless Chromium through playwright-core): two
 * people chatting, HTML shown as text, Chinese, and a server restart. This file
 * also holds the harness the other browser tests (tests/page_*_test.ts) import;
 * its own tests register only when it is the module under test, so importing it
 * does not run them twice.
 *
 * Needs /usr/bin/chromium. Without it the tests are skipped, except on CI
 * (CI=true), where a missing browser is a failure.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  type Browser,
  type BrowserContext,
  type BrowserContextOptions,
  chromium,
  type Locator,
  type Page,
} from "npm:playwright-core@1";
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
const isMain = Deno.mainModule === import.meta.url;

if (!hasChromium && isMain) {
  if (onCi) {
    Deno.test("Chromium is installed at /usr/bin/chromium (required on CI)", () => {
      throw new Error(`${CHROMIUM} is missing: install the chromium package`);
    });
  } else {
    console.warn(`browser tests skipped: ${CHROMIUM} is missing (apt-get install chromium)`);
  }
}

/** Options of {@linkcode Harness.open}: a browser context's, and a script to run first. */
export interface OpenOptions extends BrowserContextOptions {
  /** Runs in every page of the context before the page's own scripts (source or function). */
  initScript?: string | (() => void);
  /** Runs on the page before it first loads (e.g. to route its WebSocket). */
  setup?: (page: Page) => Promise<void> | void;
}

/** What a browser test gets: a way to open pages, and the errors they raised. */
export interface Harness {
  /**
   * A fresh browser context (its own localStorage) with one page at `origin`.
   * English (en-US) unless `options.locale` says otherwise.
   */
  open(origin: string, options?: OpenOptions): Promise<Page>;
  /** Uncaught exceptions and console errors of every page, with the page's label. */
  problems: string[];
}

/** The launch arguments for Debian's Chromium in a container. */
export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

/** Registers a test that gets its own Chromium. */
export function browserTest(name: string, fn: (h: Harness) => Promise<void>): void {
  Deno.test({
    name,
    ignore: !hasChromium,
    async fn() {
      const browser: Browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: CHROMIUM_ARGS,
      });
      const contexts: BrowserContext[] = [];
      const problems: string[] = [];
      try {
        await fn({
          problems,
          async open(origin, options = {}) {
            const { initScript, setup, ...contextOptions } = options;
            const context = await browser.newContext({ locale: "en-US", ...contextOptions });
            contexts.push(context);
            if (initScript) await context.addInitScript(initScript);
            const page = await context.newPage();
            watch(page, problems);
            await setup?.(page);
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

/** Collects a page's uncaught exceptions and console errors into `problems`. */
export function watch(page: Page, problems: string[]): void {
  page.setDefaultTimeout(30_000);
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console: ${m.text()}`);
  });
}

/** Problems other than the connection errors a server restart or refusal causes. */
export function realProblems(problems: string[]): string[] {
  return problems.filter((p) => !/WebSocket|ERR_CONNECTION_REFUSED|status of 40[13]/.test(p));
}

const exact = (text: string) => new RegExp(`^${RegExp.escape(text)}$`);

/** Waits until the status element says exactly `text` (or matches it). */
export async function waitStatus(page: Page, text: string | RegExp): Promise<void> {
  await page.locator("#status").filter({ hasText: typeof text === "string" ? exact(text) : text })
    .waitFor();
}

/** Waits until the open conversation is `name`. */
export async function waitTitle(page: Page, name: string): Promise<void> {
  await page.locator("#title").filter({ hasText: exact(name) }).waitFor();
}

/** Waits until the tab's title is `title`. */
export async function waitPageTitle(page: Page, title: string): Promise<void> {
  // A function, not a string: the page's CSP forbids evaluating strings while polling.
  await page.waitForFunction(
    (t) => (globalThis as unknown as { document: { title: string } }).document.title === t,
    title,
  );
}

/** Logs in through the form (with a password when given) and waits until connected. */
export async function logIn(page: Page, name: string, password?: string): Promise<void> {
  await page.fill("#name", name);
  if (password !== undefined) await page.fill("#password", password);
  await page.click('#login button[type="submit"]');
  await page.locator("#app").waitFor({ state: "visible" });
  await page.locator('#status[data-state="connected"]').waitFor();
}

/** The `.msg` elements of the open conversation whose text is exactly `text`. */
export function messages(page: Page, text: string): Locator {
  return page.locator("#messages .msg").filter({
    has: page.locator(".text").getByText(text, { exact: true }),
  });
}

/** Types into the composer, presses Enter, and waits for the server's acknowledgement. */
export async function say(page: Page, text: string): Promise<void> {
  await page.fill("#composer", text);
  await page.press("#composer", "Enter");
  await messages(page, text).and(page.locator(".mine[data-id]:not(.pending)")).waitFor();
}

/** Waits until exactly one message with `text` shows, and returns it. */
export async function seeOnce(page: Page, text: string): Promise<Locator> {
  const found = messages(page, text);
  await found.first().waitFor();
  assert.equal(await found.count(), 1, `"${text}" shows once`);
  return found.first();
}

/** Opens a conversation from the sidebar (a room, a DM, or a person) and waits for it. */
export async function openConversation(
  page: Page,
  kind: "room" | "dm" | "user",
  name: string,
): Promise<void> {
  const list = kind === "room" ? "#rooms" : kind === "dm" ? "#dms" : "#users";
  await page.locator(`${list} li[data-${kind}="${name}"] .open`).click();
  await waitTitle(page, name);
}

/** The unread badge of a sidebar item (`#rooms`/`#dms` and the data attribute's value). */
export function badge(page: Page, kind: "room" | "dm", name: string): Locator {
  return page.locator(`#${kind === "room" ? "rooms" : "dms"} li[data-${kind}="${name}"] .badge`);
}

const test = isMain ? browserTest : () => {};

test("two people chat in the lobby and by DM, and history survives a reload", async (h) => {
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

  await alice.click('#users [data-user="bob"] .open');
  await waitTitle(alice, "bob");
  await say(alice, "psst, bob");

  const dmBadge = badge(bob, "dm", "alice");
  await dmBadge.waitFor({ state: "visible" });
  assert.equal(await dmBadge.textContent(), "1");
  assert.equal(await bob.title(), "(1) Chat");

  await bob.click('#dms [data-dm="alice"] .open');
  await seeOnce(bob, "psst, bob");
  await dmBadge.waitFor({ state: "hidden" });
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
  await alice.click('#rooms [data-room="lobby"] .open');
  const own = await seeOnce(alice, "hello everyone");
  assert.equal(await own.evaluate((e) => e.classList.contains("mine")), true);

  assert.deepEqual(h.problems, []);
});

test("a message holding HTML and script shows as literal text", async (h) => {
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

test("a Chinese name and Chinese text display as typed", async (h) => {
  await using server = await startServer();
  const xiaoming = await h.open(server.origin);
  const reader = await h.open(server.origin);
  await logIn(xiaoming, "小明");
  await logIn(reader, "reader");
  assert.equal(await xiaoming.locator("#me").textContent(), "小明");
  assert.equal(await xiaoming.evaluate("document.characterSet"), "UTF-8");

  await reader.locator('#users [data-user="小明"].online').waitFor();
  await say(xiaoming, "你好，世界");
  const seen = await seeOnce(reader, "你好，世界");
  assert.equal(await seen.locator(".from").textContent(), "小明");

  // A DM to a Chinese name goes through the URL-free path too.
  await reader.click('#users [data-user="小明"] .open');
  await say(reader, "你好，小明！");
  await badge(xiaoming, "dm", "reader").waitFor({ state: "visible" });
  await xiaoming.click('#dms [data-dm="reader"] .open');
  await seeOnce(xiaoming, "你好，小明！");

  assert.deepEqual(h.problems, []);
});

test(
  "after the server dies the page counts down to reconnecting, keeps what was typed, and resumes",
  async (h) => {
    const dir = await Deno.makeTempDir({ prefix: "chat-browser-" });
    const data = `${dir}/chat.kv`;
    let server = await spawnServer({ data });
    try {
      const carol = await h.open(server.origin);
      const dave = await h.open(server.origin);
      await logIn(carol, "carol");
      await logIn(dave, "dave");
      await say(carol, "before the crash");
      await seeOnce(dave, "before the crash");

      await server.kill("SIGKILL");
      await waitStatus(carol, /^reconnecting in \d+s…$/);
      assert.equal(await carol.locator("#reconnect").isVisible(), true, "a way to retry now");

      // Written while offline: shown as pending, delivered after reconnecting.
      await carol.fill("#composer", "written while offline");
      await carol.press("#composer", "Enter");
      await messages(carol, "written while offline").and(carol.locator(".pending")).waitFor();
      // A draft half-written during the outage stays in the composer.
      await carol.fill("#composer", "a draft in progress");

      server = await spawnServer({ data, port: server.port });
      await waitStatus(carol, "connected");
      await waitStatus(dave, "connected");
      await seeOnce(carol, "before the crash");
      const sent = await seeOnce(carol, "written while offline");
      await carol.locator('.msg.mine[data-id="2"]:not(.pending)').waitFor();
      assert.equal(await sent.getAttribute("data-id"), "2");
      assert.equal(await carol.locator("#messages .msg").count(), 2);
      assert.equal(await carol.inputValue("#composer"), "a draft in progress");

      // Dave missed it while both were away: the resume brings it, once.
      await seeOnce(dave, "written while offline");
      // And live traffic flows again both ways.
      await say(dave, "back again");
      await seeOnce(carol, "back again");
      assert.deepEqual(realProblems(h.problems), []);
    } finally {
      await server.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

test("with the network gone the page says offline, and reconnects as soon as it is back", async (h) => {
  const dir = await Deno.makeTempDir({ prefix: "chat-browser-" });
  const data = `${dir}/chat.kv`;
  let server = await spawnServer({ data });
  try {
    const page = await h.open(server.origin);
    await logIn(page, "erin");
    await page.context().setOffline(true);
    await server.kill("SIGKILL");
    await waitStatus(page, "offline");
    await page.locator("#status-live").filter({ hasText: /^Offline\./ }).waitFor({
      state: "attached",
    });
    await page.fill("#composer", "queued while offline");
    await page.press("#composer", "Enter");
    await messages(page, "queued while offline").and(page.locator(".pending")).waitFor();

    server = await spawnServer({ data, port: server.port });
    await page.context().setOffline(false);
    await waitStatus(page, "connected");
    await messages(page, "queued while offline").and(page.locator('[data-id="1"]')).waitFor();
    assert.deepEqual(realProblems(h.problems), []);
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});
