/**
 * The harness of the browser tests: Debian's Chromium through playwright-core,
 * one browser per test, pages in separate contexts (their own localStorage),
 * and helpers that wait on what a user would see.
 *
 * Needs /usr/bin/chromium. Without it the tests are ignored, except on CI
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

import { CHROMIUM, CHROMIUM_ARGS, hasChromium } from "../tools/chromium.ts";

export { CHROMIUM, CHROMIUM_ARGS, hasChromium };

const onCi = Deno.env.get("CI") === "true";

// Once per run, however many test files import this: say why browser tests do not run.
if (!hasChromium) {
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
  /** One fresh page per name at `origin`, each logged in (in order) and connected. */
  people(origin: string, names: string[]): Promise<Page[]>;
}

/** The longest one browser test may run, in milliseconds. */
export const BROWSER_TEST_TIMEOUT_MS = 180_000;

/** Runs a wait; if it fails, says what was expected and what the page showed instead. */
async function expect(
  expected: string,
  shown: () => Promise<string>,
  wait: () => Promise<unknown>,
): Promise<void> {
  try {
    await wait();
  } catch (error) {
    const actual = await shown().catch((e) => `(could not read the page: ${e})`);
    throw new Error(`expected ${expected}; the page shows ${actual}`, { cause: error });
  }
}

/** Registers a test that gets its own Chromium. */
export function browserTest(name: string, fn: (h: Harness) => Promise<void>): void {
  Deno.test({
    name,
    ignore: !hasChromium,
    // Every wait below has its own deadline (30 s); this bounds a test that stacks many of them.
    timeout: BROWSER_TEST_TIMEOUT_MS,
    async fn() {
      const browser: Browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: [...CHROMIUM_ARGS],
      });
      const contexts: BrowserContext[] = [];
      const problems: string[] = [];
      try {
        const harness: Harness = {
          problems,
          async people(origin, names) {
            const pages: Page[] = [];
            for (const _ of names) pages.push(await harness.open(origin));
            for (const [i, name] of names.entries()) await logIn(pages[i], name);
            return pages;
          },
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
        };
        await fn(harness);
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
  const status = page.locator("#status");
  await expect(
    `the status ${text}`,
    async () => JSON.stringify(await status.textContent({ timeout: 1000 })),
    () => status.filter({ hasText: typeof text === "string" ? exact(text) : text }).waitFor(),
  );
}

/** Waits until the open conversation is `name`. */
export async function waitTitle(page: Page, name: string): Promise<void> {
  const title = page.locator("#title");
  await expect(
    `the conversation ${JSON.stringify(name)}`,
    async () => JSON.stringify(await title.textContent({ timeout: 1000 })),
    () => title.filter({ hasText: exact(name) }).waitFor(),
  );
}

/** Waits until the tab's title is `title`. */
export async function waitPageTitle(page: Page, title: string): Promise<void> {
  // A function, not a string: the page's CSP forbids evaluating strings while polling.
  await expect(
    `the tab title ${JSON.stringify(title)}`,
    async () => JSON.stringify(await page.title()),
    () =>
      page.waitForFunction(
        (t) => (globalThis as unknown as { document: { title: string } }).document.title === t,
        title,
      ),
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
  await expect(
    `${JSON.stringify(text)} acknowledged (mine, with an id, not pending)`,
    () => shownMessages(page),
    () => messages(page, text).and(page.locator(".mine[data-id]:not(.pending)")).waitFor(),
  );
}

/** The open conversation's last messages, for an error message. */
async function shownMessages(page: Page): Promise<string> {
  const all = await page.locator("#messages .msg").evaluateAll((els) =>
    els.slice(-10).map((el) => `[${el.className}] ${el.textContent?.trim().slice(0, 60)}`)
  );
  return all.length === 0 ? "no messages" : all.join(" | ");
}

/** Waits until exactly one message with `text` shows, and returns it. */
export async function seeOnce(page: Page, text: string): Promise<Locator> {
  const found = messages(page, text);
  await expect(
    `${JSON.stringify(text)} shown`,
    () => shownMessages(page),
    () => found.first().waitFor(),
  );
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
