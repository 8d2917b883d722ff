/**
 * Hostile input in the page: names and text that try to be markup, code or
 * object keys; links that try to be anything but http(s); text too long to fit.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Page } from "npm:playwright-core@1";
import { startServer } from "./_server.ts";
import { TestClient } from "./_client.ts";
import {
  browserTest,
  logIn,
  messages,
  openConversation,
  say,
  seeOnce,
  waitStatus,
} from "./_browser.ts";

/** Elements no message may bring into the page, and a flag no script may set. */
async function assertInert(page: Page): Promise<void> {
  assert.equal(
    await page.locator(
      "#app img, #app script, #app iframe, #app b, #app svg, #app object, #app [onerror], #app [onclick], #app [style]",
    ).count(),
    0,
    "no element injected",
  );
  assert.equal(await page.evaluate(() => "__pwned" in globalThis), false, "no script ran");
}

browserTest(
  "hostile names and hostile text show as plain text: no script runs and no element is injected",
  async (h) => {
    await using server = await startServer();
    const [victim] = await h.people(server.origin, ["victim"]);
    // Names that are valid but are also JavaScript object keys, or pile up combining marks.
    const names = ["__proto__", "constructor", "toString", "Z̷̢͎a̵̛̟l̶̨g̷̣o̸̗"];
    const evil = [
      `<script>window.__pwned=1</script>`,
      `<img src=x onerror="window.__pwned=1">`,
      `"><svg onload=window.__pwned=1>`,
      `[click me](javascript:window.__pwned=1)`,
      `{{constructor.constructor('window.__pwned=1')()}}`,
      `<b style="color:red" onclick="window.__pwned=1">bold?</b>`,
    ];
    for (const [i, name] of names.entries()) {
      const page = await h.open(server.origin);
      await logIn(page, name);
      assert.equal(await page.locator("#me").textContent(), name);
      await say(page, evil[i]);
    }
    const [raw] = await TestClient.join(server.origin, "rawclient");
    await using _raw = raw;
    for (const text of evil.slice(names.length)) {
      raw.send({ type: "send", room: "lobby", text, cid: crypto.randomUUID() });
    }

    for (const text of evil) {
      const shown = await seeOnce(victim, text);
      assert.equal(await shown.locator(".text").textContent(), text);
    }
    for (const name of names) {
      const person = victim.locator("#users li").filter({
        has: victim.getByText(name, { exact: true }),
      });
      await person.waitFor();
      assert.equal(await person.getAttribute("data-user"), name);
    }
    await assertInert(victim);

    // A DM with "__proto__" is a conversation like any other.
    await openConversation(victim, "user", "__proto__");
    await say(victim, "hello, __proto__");
    await victim.reload();
    await waitStatus(victim, "connected");
    await seeOnce(victim, "hello, __proto__");
    await victim.locator('#rooms li[data-room="lobby"] .open').click();
    for (const text of evil) await seeOnce(victim, text);
    await assertInert(victim);
    assert.deepEqual(h.problems, []);
  },
);

browserTest(
  "links in messages are http or https only, and open in a new tab without opener or referrer",
  async (h) => {
    await using server = await startServer();
    const [alice, bob] = await h.people(server.origin, ["alice", "bob"]);

    const here = `${server.origin}/healthz`;
    const text = [
      `see https://example.com/a_(b) and http://example.org/path?q=1&r=2, or (https://example.net).`,
      `not these: javascript:alert(1) data:text/html,hi ftp://example.com/x file:///etc/passwd`,
      `vbscript:x https:/broken www.example.com mailto:a@example.com`,
      `这里：https://example.com/中文路径。and ours: ${here}`,
    ].join("\n");
    await say(alice, text);
    const shown = await seeOnce(bob, text);
    assert.equal(await shown.locator(".text").textContent(), text, "the text is intact");
    const links = await shown.locator("a").evaluateAll((as) =>
      as.map((a) => ({
        href: a.getAttribute("href"),
        text: a.textContent,
        target: a.getAttribute("target"),
        rel: a.getAttribute("rel"),
      }))
    );
    const expected = [
      ["https://example.com/a_(b)", "https://example.com/a_(b)"],
      ["http://example.org/path?q=1&r=2", "http://example.org/path?q=1&r=2"],
      ["https://example.net/", "https://example.net"],
      [
        "https://example.com/%E4%B8%AD%E6%96%87%E8%B7%AF%E5%BE%84",
        "https://example.com/中文路径",
      ],
      [here, here],
    ];
    assert.deepEqual(
      links,
      expected.map(([href, text]) => ({
        href,
        text,
        target: "_blank",
        rel: "noopener noreferrer",
      })),
    );

    // Following one opens a new tab that cannot reach back to the chat.
    const [popup] = await Promise.all([
      bob.context().waitForEvent("page"),
      shown.locator(`a[href="${here}"]`).click(),
    ]);
    await popup.waitForLoadState();
    assert.equal(await popup.evaluate("window.opener"), null);
    assert.equal(await popup.evaluate("document.referrer"), "");
    await popup.close();
    assert.deepEqual(h.problems, []);
  },
);

browserTest("long words and long links wrap inside the message, on a phone too", async (h) => {
  await using server = await startServer();
  const page = await h.open(server.origin, { viewport: { width: 360, height: 700 } });
  await logIn(page, "wrapper");
  const long = [
    "x".repeat(400),
    `https://example.com/${"segment/".repeat(40)}end`,
    "长".repeat(200),
  ];
  for (const text of long) {
    await say(page, text);
    const box = await messages(page, text).boundingBox();
    const list = await page.locator("#messages").boundingBox();
    assert.ok(box && list && box.x >= list.x && box.x + box.width <= list.x + list.width + 0.5);
  }
  assert.equal(
    await page.locator("#messages").evaluate((e) => e.scrollWidth <= e.clientWidth),
    true,
    "nothing scrolls sideways",
  );
  assert.equal(await page.evaluate("document.documentElement.scrollWidth <= innerWidth"), true);
  assert.deepEqual(h.problems, []);
});
