/**
 * Writing in the page: Enter and Shift+Enter, pending until acknowledged,
 * refused and retried, typing indicators both ways.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Locator, Page } from "npm:playwright-core@1";
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

browserTest("Enter sends, Shift+Enter starts a new line in the same message", async (h) => {
  await using server = await startServer();
  const [alice, bob] = await h.people(server.origin, ["alice", "bob"]);

  await say(alice, "one line");
  await alice.locator("#composer").click();
  await alice.keyboard.type("first line");
  await alice.keyboard.press("Shift+Enter");
  await alice.keyboard.type("second line");
  assert.equal(await alice.inputValue("#composer"), "first line\nsecond line");
  await alice.keyboard.press("Enter");
  await messages(alice, "first line\nsecond line").and(alice.locator("[data-id]")).waitFor();
  assert.equal(await alice.inputValue("#composer"), "", "the composer is empty again");
  const seen = await seeOnce(bob, "first line\nsecond line");
  // Shown on two lines.
  const height = (l: Locator) =>
    l.locator(".text").evaluate((e) => e.getBoundingClientRect().height);
  const one = await seeOnce(bob, "one line");
  assert.equal(Math.round(await height(seen) / await height(one)), 2);
  assert.deepEqual(h.problems, []);
});

browserTest(
  "a message shows as sending until the server acknowledges it, survives a reload meanwhile, and is stored once",
  async (h) => {
    await using server = await startServer();
    // Acknowledgements of "held back" wait until the test lets them through.
    let release = () => {};
    const released = new Promise<void>((resolve) => release = resolve);
    const hold = async (page: Page) => {
      await page.routeWebSocket(/\/ws\//, (ws) => {
        const upstream = ws.connectToServer();
        ws.onMessage((m) => upstream.send(m));
        upstream.onMessage(async (m) => {
          if (String(m).includes('"held back"')) await released;
          try {
            ws.send(m);
          } catch { /* that page is gone */ }
        });
      });
    };
    const alice = await h.open(server.origin, { setup: hold });
    const bob = await h.open(server.origin);
    await logIn(alice, "alice");
    await logIn(bob, "bob");

    await alice.fill("#composer", "held back");
    await alice.press("#composer", "Enter");
    const mine = messages(alice, "held back");
    await mine.and(alice.locator(".pending")).waitFor();
    assert.equal(await mine.locator(".state").textContent(), "sending…");
    assert.equal(await mine.getAttribute("data-id"), null);
    // Stored already: bob has it.
    await seeOnce(bob, "held back");

    // A reload before the acknowledgement: still pending, and sent again (same cid).
    await alice.reload();
    await waitStatus(alice, "connected");
    await mine.and(alice.locator(".pending")).waitFor();

    release();
    await mine.and(alice.locator('[data-id="1"]:not(.pending)')).waitFor();
    assert.equal(await mine.locator(".state").textContent(), "");
    await seeOnce(alice, "held back");
    await seeOnce(bob, "held back");
    assert.equal(await bob.locator("#messages .msg").count(), 1, "stored once");
    assert.deepEqual(h.problems, []);
  },
);

// Needs the server's send rate limit (`rate_limited` with `retry_after`).
browserTest(
  "a message refused for going too fast shows as failed, and Retry sends it once the server allows",
  async (h) => {
    // Two at once, then one every 4 s: the third of three quick sends is refused however slow
    // the machine, and Retry succeeds within the test's time.
    await using server = await startServer({ settings: { sendRate: 0.25, sendBurst: 2 } });
    const [alice] = await h.people(server.origin, ["alice"]);

    for (const text of ["one", "two", "three"]) {
      await alice.fill("#composer", text);
      await alice.press("#composer", "Enter");
    }
    const third = messages(alice, "three");
    await third.and(alice.locator(".failed")).waitFor();
    assert.match(
      await third.locator(".state").textContent() ?? "",
      /^not sent \(too fast: retry in \d+s\)/,
    );
    await messages(alice, "two").and(alice.locator("[data-id]")).waitFor();

    await third.locator("button.retry:enabled").click();
    await third.and(alice.locator('[data-id="3"]')).waitFor();
    assert.equal(await alice.locator("#messages .msg").count(), 3);
    assert.equal(await alice.locator("#messages .failed, #messages .pending").count(), 0);
    assert.deepEqual(h.problems, []);
  },
);

browserTest(
  "typing shows '<name> is typing…' to the others, sent at most once per three seconds, and clears when the message comes",
  async (h) => {
    await using server = await startServer();
    const [bob] = await TestClient.join(server.origin, "bob");
    await using _bob = bob;
    const [ming] = await TestClient.join(server.origin, "小明");
    await using _ming = ming;
    const [alice] = await h.people(server.origin, ["alice"]);

    // Out: a burst of keystrokes makes one typing frame.
    await alice.locator("#composer").click();
    await alice.keyboard.type("hello there, how are you?");
    await alice.keyboard.press("Enter");
    await bob.next((f) => f.type === "message" && f.text === "hello there, how are you?");
    const typing = bob.queued.filter((f) => f.type === "typing" && f.from === "alice");
    assert.deepEqual(typing, [{ type: "typing", room: "lobby", from: "alice" }]);

    // In: one, then two people typing; a message ends its sender's indicator.
    const indicator = alice.locator("#typing");
    ming.send({ type: "typing", room: "lobby" });
    await indicator.filter({ hasText: /^小明 is typing…$/ }).waitFor();
    bob.send({ type: "typing", room: "lobby" });
    await indicator.filter({ hasText: /^小明 and bob are typing…$/ }).waitFor();
    bob.send({ type: "send", room: "lobby", text: "done typing", cid: "b1" });
    await indicator.filter({ hasText: /^小明 is typing…$/ }).waitFor();
    // Typing in a DM shows in that DM.
    bob.send({ type: "typing", to: "alice" });
    await openConversation(alice, "user", "bob");
    await indicator.filter({ hasText: /^bob is typing…$/ }).waitFor();
    await openConversation(alice, "room", "lobby");
    // And an indicator goes by itself a few seconds after the last typing frame.
    await indicator.filter({ hasText: /^$/ }).waitFor({ timeout: 10_000 });
    assert.deepEqual(h.problems, []);
  },
);

browserTest(
  "the page gives each message a UUIDv7 client id, later ones sorting after earlier ones, on http too",
  async (h) => {
    await using server = await startServer();
    const [bob] = await TestClient.join(server.origin, "bob");
    await using _bob = bob;
    // Plain http on 127.0.0.1 is a secure context; on a LAN address it is not, and the page
    // has no crypto.randomUUID there. Ids must not depend on it.
    const alice = await h.open(server.origin, {
      initScript: () => delete (Crypto.prototype as { randomUUID?: unknown }).randomUUID,
    });
    await logIn(alice, "alice");
    const texts = ["one", "two", "three", "four", "five"];
    // Typed in one go: several fall in the same millisecond, where the counter orders them.
    for (const text of texts) {
      await alice.fill("#composer", text);
      await alice.press("#composer", "Enter");
    }
    const ids: string[] = [];
    for (const text of texts) {
      const frame = await bob.next((f) => f.type === "message" && f.text === text);
      ids.push(frame.cid);
    }
    const v7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
    for (const id of ids) assert.match(id, v7);
    assert.deepEqual([...ids].sort(), ids, "in the order they were sent");
    assert.equal(new Set(ids).size, ids.length);
    // The first 48 bits are the time it was sent, in milliseconds.
    const ms = parseInt(ids[0].replaceAll("-", "").slice(0, 12), 16);
    assert.ok(Math.abs(ms - Date.now()) < 60_000, `${ms} is now`);
    assert.deepEqual(h.problems, []);
  },
);
