/**
 * The page in a real browser (headless Chromium through playwright-core): two
 * people chatting, HTML shown as text, Chinese, and a server restart. The
 * harness is in `_browser.ts`; more page tests are in `page_*_test.ts`.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  badge,
  browserTest,
  messages,
  realProblems,
  say,
  seeOnce,
  waitStatus,
  waitTitle,
} from "./_browser.ts";
import { spawnServer, startServer } from "./_server.ts";
browserTest("two people chat in the lobby and by DM, and history survives a reload", async (h) => {
  await using server = await startServer();
  const [alice, bob] = await h.people(server.origin, ["alice", "bob"]);

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

browserTest("a message holding HTML and script shows as literal text", async (h) => {
  await using server = await startServer();
  const [mallory, victim] = await h.people(server.origin, ["mallory", "victim"]);

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
  const [xiaoming, reader] = await h.people(server.origin, ["小明", "reader"]);
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

browserTest(
  "after the server dies the page counts down to reconnecting, keeps what was typed, and resumes",
  async (h) => {
    const dir = await Deno.makeTempDir({ prefix: "chat-browser-" });
    const data = `${dir}/chat.db`;
    let server = await spawnServer({ data });
    try {
      const [carol, dave] = await h.people(server.origin, ["carol", "dave"]);
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

browserTest(
  "with the network gone the page says offline, and reconnects as soon as it is back",
  async (h) => {
    const dir = await Deno.makeTempDir({ prefix: "chat-browser-" });
    const data = `${dir}/chat.db`;
    let server = await spawnServer({ data });
    try {
      const [page] = await h.people(server.origin, ["erin"]);
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
  },
);
