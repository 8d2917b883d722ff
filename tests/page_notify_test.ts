/**
 * Desktop notifications (asked for once, politely; only for a DM or a mention
 * while the tab is hidden), and the page's weight.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Page } from "npm:playwright-core@1";
import { startServer } from "./_server.ts";
import { TestClient } from "./_client.ts";
import { badge, browserTest, logIn, openConversation, waitStatus } from "./_browser.ts";

/**
 * A stand-in for the Notification API (headless Chromium shows none): it records
 * what the page shows and asks, and keeps the permission in localStorage. The tab
 * counts as hidden while `window.__hidden` is true.
 */
const FAKE_NOTIFICATIONS = `(() => {
  const KEY = "test.notification.permission";
  window.__shown = [];
  window.__asked = 0;
  window.Notification = class {
    static get permission() { return localStorage.getItem(KEY) ?? "default"; }
    static requestPermission() {
      window.__asked++;
      localStorage.setItem(KEY, "granted");
      return Promise.resolve("granted");
    }
    constructor(title, options = {}) { window.__shown.push({ title, body: options.body }); }
    close() {}
  };
  Object.defineProperty(document, "visibilityState", {
    get: () => (window.__hidden ? "hidden" : "visible"),
  });
})()`;

const shown = (page: Page) =>
  page.evaluate("window.__shown") as Promise<Array<{ title: string; body: string }>>;

// For waitForFunction: a function (the page's CSP forbids evaluating strings while polling).
const shownCount = (n: number) =>
  (globalThis as unknown as { __shown: unknown[] }).__shown.length === n;

async function setHidden(page: Page, hidden: boolean): Promise<void> {
  await page.evaluate(`window.__hidden = ${hidden};
    document.dispatchEvent(new Event("visibilitychange"));`);
}

browserTest(
  "notifications are asked for once, politely, and then come for a DM or a mention only while the tab is hidden",
  async (h) => {
    await using server = await startServer();
    const [bob] = await TestClient.join(server.origin, "bob");
    await using _bob = bob;
    const alice = await h.open(server.origin, { initScript: FAKE_NOTIFICATIONS });
    await logIn(alice, "alice");

    // A line offers it; the browser's own prompt only comes when asked to.
    await alice.locator("#ask-notify").waitFor();
    assert.equal(await alice.evaluate("window.__asked"), 0);
    await alice.click("#notify-yes");
    await alice.locator("#ask-notify").waitFor({ state: "hidden" });
    assert.equal(await alice.evaluate("window.__asked"), 1);
    await alice.reload();
    await waitStatus(alice, "connected");
    assert.equal(await alice.locator("#ask-notify").isVisible(), false, "asked once only");
    assert.equal(await alice.evaluate("window.__asked"), 0);

    await setHidden(alice, true);
    bob.send({ type: "send", to: "alice", text: "ping in private", cid: "1" });
    await alice.waitForFunction(shownCount, 1);
    assert.deepEqual(await shown(alice), [{ title: "bob", body: "ping in private" }]);

    bob.send({ type: "send", room: "lobby", text: "nothing for alice here", cid: "2" });
    bob.send({ type: "send", room: "lobby", text: "@alice, a look?", cid: "3" });
    await alice.waitForFunction(shownCount, 2);
    assert.deepEqual((await shown(alice))[1], { title: "bob in #lobby", body: "@alice, a look?" });

    // Back in view (the lobby, open all along, is read now): no notification.
    await setHidden(alice, false);
    await badge(alice, "room", "lobby").waitFor({ state: "hidden" });
    await openConversation(alice, "user", "bob");
    bob.send({ type: "send", room: "lobby", text: "@alice again", cid: "4" });
    await badge(alice, "room", "lobby").filter({ hasText: "1" }).waitFor();
    assert.equal((await shown(alice)).length, 2);
    assert.deepEqual(h.problems, []);
  },
);

browserTest("'Not now' puts the notification offer away for good", async (h) => {
  await using server = await startServer();
  const page = await h.open(server.origin, { initScript: FAKE_NOTIFICATIONS });
  await logIn(page, "carol");
  await page.click("#notify-no");
  await page.locator("#ask-notify").waitFor({ state: "hidden" });
  await page.reload();
  await waitStatus(page, "connected");
  assert.equal(await page.locator("#ask-notify").isVisible(), false);
  assert.equal(await page.evaluate("window.__asked"), 0);
  // Still possible from the account panel.
  await page.click("#me");
  await page.click("#notify-enable");
  await page.locator("#notify-state").filter({ hasText: /^On:/ }).waitFor();
  assert.equal(await page.evaluate("window.__asked"), 1);
  assert.deepEqual(h.problems, []);
});

browserTest("the page weighs under 100 KB, fonts aside", async (h) => {
  await using server = await startServer();
  const sizes = new Map<string, number>();
  const page = await h.open(server.origin, {
    setup: (p) => {
      p.on("response", async (r) => {
        if (r.request().resourceType() === "websocket") return;
        sizes.set(new URL(r.url()).pathname, (await r.body()).byteLength);
      });
    },
  });
  await logIn(page, "weigher");
  await page.waitForLoadState("load");
  while (sizes.size < 3) await page.waitForEvent("requestfinished");
  const total = [...sizes.values()].reduce((a, b) => a + b, 0);
  console.log(
    `page size: ${[...sizes].map(([p, n]) => `${p} ${n} B`).join(", ")}; total ${total} B`,
  );
  assert.deepEqual([...sizes.keys()].sort(), ["/", "/app.js", "/style.css"]);
  assert.ok(total < 100_000, `${total} bytes`);
  assert.deepEqual(h.problems, []);
});
