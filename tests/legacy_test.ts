/**
 * The original Flask demo's page, byte for byte but for its hard-coded
 * address, in headless Chromium against our server: it must still log in,
 * send private messages and show what it receives as `from_user:msg`, and
 * talk with `chat.v1` clients.
 *
 * The page comes from the article the product descends from
 * (shared/seed/000_7f52692642683dec.txt, beside the repository). It is opened
 * as its users open it: from our own origin (by request interception, so
 * `location.host` is the server), saved to a file and opened from `file://`
 * (Origin `null`), and from another static server on another port; the last
 * two with our address written in, as a user would edit it.
 *
 * Needs /usr/bin/chromium. Without it the test is skipped, except on CI
 * (CI=true), where a missing browser is a failure.
 */

import assert from "node:assert/strict";
import { type Browser, chromium, type Page } from "npm:playwright-core@1";
import { CHROMIUM, CHROMIUM_ARGS, hasChromium } from "./_browser.ts";
import { isPresence, TestClient } from "./_client.ts";
import { startServer } from "./_server.ts";

const SEED = "shared/seed/000_7f52692642683dec.txt";
/** The article beside the repository (or beside the folder of worktrees that holds it). */
const ARTICLE =
  [new URL(`../../${SEED}`, import.meta.url), new URL(`../../../${SEED}`, import.meta.url)]
    .find((url) => {
      try {
        return Deno.statSync(url).isFile;
      } catch {
        return false;
      }
    }) ?? new URL(`../../${SEED}`, import.meta.url);
/** The address the original page hard-codes: the demo author's LAN machine. */
const ORIGINAL_HOST = "192.168.13.195:9527";
/** What stands in for it: the script then connects to the host that served the page. */
const OWN_HOST = `"+location.host+"`;

/** The original page from the article, and the same page pointed at its own host (or `host`). */
function originalPage(host = OWN_HOST): { original: string; patched: string } {
  const article = Deno.readTextFileSync(ARTICLE);
  const start = article.indexOf("<!DOCTYPE html>");
  const end = article.indexOf("</html>", start);
  assert.ok(start !== -1 && end !== -1, `no <!DOCTYPE html>…</html> page in ${ARTICLE.pathname}`);
  const original = article.slice(start, end + "</html>".length);
  assert.equal(original.split(ORIGINAL_HOST).length, 2, "the page names its host exactly once");
  assert.ok(original.includes(`new WebSocket("ws://${ORIGINAL_HOST}/ws/"+username)`));
  const patched = original.replace(ORIGINAL_HOST, host);
  // Nothing else changed: putting the address back gives the original.
  assert.equal(patched.replace(host, ORIGINAL_HOST), original);
  return { original, patched };
}

/** Launches Chromium for the original page (which reaches loopback from foreign origins). */
async function launch(): Promise<Browser> {
  return await chromium.launch({
    executablePath: CHROMIUM,
    // Without this, a page from file:// or another origin may not reach loopback.
    args: [...CHROMIUM_ARGS, "--disable-features=LocalNetworkAccessChecks"],
  });
}

/** A fresh page that reports its errors into `problems`. */
async function newPage(browser: Browser, label: string, problems: string[]): Promise<Page> {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  page.on("pageerror", (e) => problems.push(`${label} pageerror: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`${label} console: ${m.text()}`);
  });
  return page;
}

/**
 * Logs in as the original page does, and waits until the server has the user
 * online (a chat.v1 `watcher` sees its presence).
 */
async function logIn(page: Page, name: string, watcher: TestClient): Promise<void> {
  const online = watcher.next(isPresence(name, true));
  // Both awaited together, so the one that fails first is the one reported.
  await Promise.all([
    online,
    (async () => {
      await page.fill("#username", name);
      await page.getByRole("button", { name: "登录聊天室" }).click();
      await page.waitForFunction("window.ws !== null && window.ws.readyState === 1");
    })(),
  ]);
}

/** Sends as the original page does: recipient, text, the send button. */
async function send(page: Page, to: string, msg: string): Promise<void> {
  await page.fill("#to_user", to);
  await page.fill("#msg", msg);
  await page.getByRole("button", { name: "发送", exact: true }).click();
}

/** Waits until the page's #chat_list shows a paragraph reading exactly `text`. */
async function sees(page: Page, text: string): Promise<void> {
  await page.locator("#chat_list p").getByText(text, { exact: true }).waitFor();
}

/** The original page, logged in as `name`, and a chat.v1 user write to each other. */
async function converse(page: Page, name: string, carol: TestClient): Promise<void> {
  await logIn(page, name, carol);
  carol.send({ type: "send", to: name, text: "carol 说：你好" });
  await sees(page, "carol:carol 说：你好");
  await send(page, "carol", `你好, carol, from ${name}`);
  const reply = await carol.next((f) => f.type === "message" && f.from === name);
  assert.equal(reply.text, `你好, carol, from ${name}`);
  assert.deepEqual(await page.locator("#chat_list p").allInnerTexts(), ["carol:carol 说：你好"]);
}

Deno.test({
  name: hasChromium
    ? "the original page chats by DM with itself and with chat.v1 clients, Chinese included"
    : `the original page in a browser (ignored: ${CHROMIUM} is missing; apt-get install chromium)`,
  ignore: !hasChromium,
  async fn() {
    const { patched } = originalPage();
    await using server = await startServer();
    const origin = server.origin;
    // A chat.v1 user, online first: its presence frames say when a page's login is done.
    await using carol = (await TestClient.join(origin, "carol"))[0];

    const browser = await launch();
    const problems: string[] = [];
    try {
      /** Opens the original page as served from the test server's origin. */
      const open = async (label: string): Promise<Page> => {
        const page = await newPage(browser, label, problems);
        await page.route(`${origin}/original.html`, (route) =>
          route.fulfill({
            status: 200,
            contentType: "text/html; charset=utf-8",
            body: patched,
          }));
        await page.goto(`${origin}/original.html`);
        return page;
      };

      const alice = await open("alice");
      const bob = await open("bob");
      await logIn(alice, "alice", carol);
      await logIn(bob, "bob", carol);

      // Two original pages, a private message each way.
      await send(alice, "bob", "hello bob, 你好");
      await sees(bob, "alice:hello bob, 你好");
      await send(bob, "alice", "你好 alice! 👋");
      await sees(alice, "bob:你好 alice! 👋");

      // A chat.v1 user writes to an original page…
      carol.send({ type: "send", to: "alice", text: "carol 说：你好" });
      await sees(alice, "carol:carol 说：你好");

      // …and the original page answers it.
      await send(alice, "carol", "你好, carol");
      const reply = await carol.next((f) =>
        f.type === "message" && f.from === "alice" && f.to === "carol"
      );
      assert.equal(reply.text, "你好, carol");
      assert.equal(typeof reply.id, "number");
      assert.equal(typeof reply.ts, "number");

      // Exactly these, in order: no echo of a page's own words, no error paragraphs.
      assert.deepEqual(await alice.locator("#chat_list p").allInnerTexts(), [
        "bob:你好 alice! 👋",
        "carol:carol 说：你好",
      ]);
      assert.deepEqual(await bob.locator("#chat_list p").allInnerTexts(), [
        "alice:hello bob, 你好",
      ]);
      assert.deepEqual(problems, []);
    } finally {
      await browser.close();
    }
  },
});

Deno.test({
  name: hasChromium
    ? "the original page saved to a file, our address written in, chats from file:// with no flag"
    : `the original page from file:// (ignored: ${CHROMIUM} is missing)`,
  ignore: !hasChromium,
  async fn() {
    await using server = await startServer();
    await using carol = (await TestClient.join(server.origin, "carol"))[0];
    const { patched } = originalPage(`127.0.0.1:${server.port}`);
    const dir = await Deno.makeTempDir({ prefix: "original-page-" });
    const file = `${dir}/chat.html`;
    await Deno.writeTextFile(file, patched);
    const browser = await launch();
    const problems: string[] = [];
    try {
      const page = await newPage(browser, "file", problems);
      await page.goto(`file://${file}`);
      await converse(page, "dora", carol);
      assert.deepEqual(problems, []);
    } finally {
      await browser.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: hasChromium
    ? "the original page served by another static server on another port chats with no flag"
    : `the original page from another origin (ignored: ${CHROMIUM} is missing)`,
  ignore: !hasChromium,
  async fn() {
    await using server = await startServer();
    await using carol = (await TestClient.join(server.origin, "carol"))[0];
    const { patched } = originalPage(`127.0.0.1:${server.port}`);
    // Any static server: here a second tiny one, so the page's origin is another port.
    await using statics = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      () => new Response(patched, { headers: { "content-type": "text/html; charset=utf-8" } }),
    );
    assert.notEqual(statics.addr.port, server.port);
    const browser = await launch();
    const problems: string[] = [];
    try {
      const page = await newPage(browser, "static", problems);
      await page.goto(`http://127.0.0.1:${statics.addr.port}/chat.html`);
      await converse(page, "erin", carol);
      assert.deepEqual(problems, []);
    } finally {
      await browser.close();
    }
  },
});
