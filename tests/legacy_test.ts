/**
 * The original Flask demo's page, byte for byte but for its hard-coded
 * address, in headless Chromium against our server: it must still log in,
 * send private messages and show what it receives as `from_user:msg`, and
 * talk with `chat.v1` clients.
 *
 * The page comes from the article the product descends from
 * (shared/seed/000_7f52692642683dec.txt, beside the repository). It is served
 * by request interception on the test server's own origin, so `location.host`
 * is the server and the page's socket goes to it.
 *
 * Needs /usr/bin/chromium. Without it the test is skipped, except on CI
 * (CI=true), where a missing browser is a failure.
 */

import assert from "node:assert/strict";
import { type Browser, chromium, type Page } from "npm:playwright-core@1";
import { CHROMIUM, CHROMIUM_ARGS, hasChromium } from "./_browser.ts";
import { TestClient } from "./_client.ts";
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

/** The original page from the article, and the same page pointed at its own host. */
function originalPage(): { original: string; patched: string } {
  const article = Deno.readTextFileSync(ARTICLE);
  const start = article.indexOf("<!DOCTYPE html>");
  const end = article.indexOf("</html>", start);
  assert.ok(start !== -1 && end !== -1, `no <!DOCTYPE html>…</html> page in ${ARTICLE.pathname}`);
  const original = article.slice(start, end + "</html>".length);
  assert.equal(original.split(ORIGINAL_HOST).length, 2, "the page names its host exactly once");
  assert.ok(original.includes(`new WebSocket("ws://${ORIGINAL_HOST}/ws/"+username)`));
  const patched = original.replace(ORIGINAL_HOST, OWN_HOST);
  // Nothing else changed: putting the address back gives the original.
  assert.equal(patched.replace(OWN_HOST, ORIGINAL_HOST), original);
  return { original, patched };
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

    const browser: Browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        ...CHROMIUM_ARGS,
        // The page is faked by interception; without this it may not reach loopback.
        "--disable-features=LocalNetworkAccessChecks",
      ],
    });
    const problems: string[] = [];
    try {
      /** Opens the original page as served from the test server's origin. */
      const open = async (label: string): Promise<Page> => {
        const context = await browser.newContext();
        const page = await context.newPage();
        page.setDefaultTimeout(20_000);
        page.on("pageerror", (e) => problems.push(`${label} pageerror: ${e.message}`));
        page.on("console", (m) => {
          if (m.type() === "error") problems.push(`${label} console: ${m.text()}`);
        });
        await page.route(`${origin}/original.html`, (route) =>
          route.fulfill({
            status: 200,
            contentType: "text/html; charset=utf-8",
            body: patched,
          }));
        await page.goto(`${origin}/original.html`);
        return page;
      };

      /** Logs in as the original page does, and waits until the server has the user online. */
      const logIn = async (page: Page, name: string): Promise<void> => {
        const online = carol.next((f) =>
          f.type === "presence" && f.user === name && f.online === true
        );
        await page.fill("#username", name);
        await page.getByRole("button", { name: "登录聊天室" }).click();
        await page.waitForFunction("window.ws !== null && window.ws.readyState === 1");
        // Open in the browser is not yet online in the hub; presence is published once it is.
        await online;
      };

      /** Sends as the original page does: recipient, text, the send button. */
      const send = async (page: Page, to: string, msg: string): Promise<void> => {
        await page.fill("#to_user", to);
        await page.fill("#msg", msg);
        await page.getByRole("button", { name: "发送", exact: true }).click();
      };

      /** Waits until the page's #chat_list shows a paragraph reading exactly `text`. */
      const sees = async (page: Page, text: string): Promise<void> => {
        await page.locator("#chat_list p").getByText(text, { exact: true }).waitFor();
      };

      const alice = await open("alice");
      const bob = await open("bob");
      await logIn(alice, "alice");
      await logIn(bob, "bob");

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
