/**
 * Reading in the page: unread badges and the tab title, mentions, the "new
 * messages" line, and history that loads while scrolling up.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { WebSocketRoute } from "npm:playwright-core@1";
import { startServer } from "./_server.ts";
import { openStore } from "../lib/sql/open.ts";
import { TestClient } from "./_client.ts";
import {
  badge,
  browserTest,
  logIn,
  messages,
  openConversation,
  realProblems,
  say,
  seeOnce,
  waitPageTitle,
  waitStatus,
  waitTitle,
} from "./_browser.ts";

browserTest(
  "unread badges count per conversation, the tab title shows the total, and reading clears both in every tab",
  async (h) => {
    await using server = await startServer();
    const [alice, bob] = await h.people(server.origin, ["alice", "bob"]);
    // Alice looks at her DM with bob, so the lobby is not in view.
    await openConversation(alice, "user", "bob");

    await say(bob, "one");
    await say(bob, "two");
    await badge(alice, "room", "lobby").filter({ hasText: "2" }).waitFor();
    await waitPageTitle(alice, "(2) Chat");

    await openConversation(bob, "user", "alice");
    await say(bob, "a word in private");
    // In view in alice's open DM: read at once, no badge.
    await seeOnce(alice, "a word in private");
    await waitPageTitle(alice, "(2) Chat");

    // A second tab of alice (same browser, so same login) sees the same counts.
    const alice2 = await alice.context().newPage();
    await alice2.goto(server.origin);
    await waitStatus(alice2, "connected");
    await badge(alice2, "room", "lobby").filter({ hasText: "2" }).waitFor();

    await openConversation(alice, "room", "lobby");
    await badge(alice, "room", "lobby").waitFor({ state: "hidden" });
    await waitPageTitle(alice, "Chat");
    // Read in one tab, read in all.
    await badge(alice2, "room", "lobby").waitFor({ state: "hidden" });
    await waitPageTitle(alice2, "Chat");

    // Counts survive a reload (they are the server's).
    await alice2.close();
    await openConversation(alice, "user", "bob");
    await openConversation(bob, "room", "lobby");
    await say(bob, "three");
    await badge(alice, "room", "lobby").filter({ hasText: "1" }).waitFor();
    await alice.reload();
    await waitStatus(alice, "connected");
    await badge(alice, "room", "lobby").filter({ hasText: "1" }).waitFor();
    await waitPageTitle(alice, "(1) Chat");
    assert.deepEqual(h.problems, []);
  },
);

browserTest(
  "a mention of me is highlighted and counts as an important unread with its own badge",
  async (h) => {
    await using server = await startServer();
    const [alice, bob] = await h.people(server.origin, ["alice", "bob"]);
    await openConversation(alice, "user", "bob");

    await say(bob, "hey @alice, look at this");
    await say(bob, "@bob talks to himself");
    await say(bob, "write to alice@example.com");
    const lobby = alice.locator('#rooms li[data-room="lobby"]');
    await lobby.locator(".badge").filter({ hasText: "3" }).waitFor();
    await lobby.locator(".mentions").filter({ hasText: /^@$/ }).waitFor();
    assert.match(await lobby.locator(".open").getAttribute("aria-label") ?? "", /1 mentioning you/);
    await waitPageTitle(alice, "(3) @ Chat");

    await openConversation(alice, "room", "lobby");
    const mention = await seeOnce(alice, "hey @alice, look at this");
    assert.equal(await mention.evaluate((e) => e.classList.contains("at-me")), true);
    assert.equal(await mention.locator(".mention.me").textContent(), "@alice");
    const other = await seeOnce(alice, "@bob talks to himself");
    assert.equal(await other.evaluate((e) => e.classList.contains("at-me")), false);
    assert.equal(await other.locator(".mention:not(.me)").textContent(), "@bob");
    const mail = await seeOnce(alice, "write to alice@example.com");
    assert.equal(await mail.locator(".mention").count(), 0, "an e-mail address is no mention");

    await lobby.locator(".mentions").waitFor({ state: "hidden" });
    await waitPageTitle(alice, "Chat");
    assert.deepEqual(h.problems, []);
  },
);

browserTest(
  "a 'New messages' line marks the first unread message until I write",
  async (h) => {
    await using server = await startServer();
    const [alice, bob] = await h.people(server.origin, ["alice", "bob"]);
    await say(alice, "I was here");
    await seeOnce(bob, "I was here");
    await openConversation(alice, "user", "bob");

    await say(bob, "first new");
    await say(bob, "second new");
    await badge(alice, "room", "lobby").filter({ hasText: "2" }).waitFor();
    await openConversation(alice, "room", "lobby");
    await seeOnce(alice, "second new");
    const line = alice.locator("#messages .divider");
    assert.equal(await line.textContent(), "New messages");
    assert.equal(
      await line.evaluate((e) => e.nextElementSibling?.querySelector(".text")?.textContent),
      "first new",
    );
    assert.equal(
      await line.evaluate((e) => e.previousElementSibling?.querySelector(".text")?.textContent),
      "I was here",
    );

    // One sender's run of messages is one group: the name shows once (to the eye).
    const cont = (text: string) =>
      alice.locator("#messages .msg").filter({ hasText: text }).evaluate((e) =>
        e.classList.contains("cont")
      );
    assert.equal(await cont("first new"), false, "a group starts after the line");
    assert.equal(await cont("second new"), true, "and goes on");
    assert.equal(await alice.locator("#messages .day").count(), 1, "one day, one heading");

    await say(alice, "caught up");
    await line.waitFor({ state: "detached" });
    assert.deepEqual(h.problems, []);
  },
);

browserTest(
  "scrolling up loads older history without moving the messages in view, and 'Jump to latest' goes back down",
  async (h) => {
    // A short replay, so most of the history comes by scrolling.
    await using server = await startServer({ settings: { replayLimit: 40 } });
    const [bob] = await TestClient.join(server.origin, "bob");
    await using _bob = bob;
    const total = 230;
    for (let i = 1; i <= total; i++) {
      bob.send({ type: "send", room: "lobby", text: `message ${i}`, cid: `c${i}` });
    }
    await bob.next((f) => f.type === "message" && f.cid === `c${total}`);

    const [alice] = await h.people(server.origin, ["alice"]);
    const list = alice.locator("#messages");
    await messages(alice, `message ${total}`).waitFor();
    await alice.locator('#messages[aria-busy="false"]').waitFor();
    await list.evaluate((e) => e.scrollTop = e.scrollHeight);
    await alice.locator("#latest").waitFor({ state: "hidden" });

    const ids = () =>
      list.locator(".msg").evaluateAll((els) => els.map((e) => Number(e.getAttribute("data-id"))));
    // Scroll to the top again and again: each time older messages come in above,
    // and the message that was at the top stays exactly where it was on screen.
    let rounds = 0;
    while ((await ids())[0] !== 1) {
      await alice.locator('#messages[aria-busy="false"]').waitFor();
      const oldest = (await ids())[0];
      const anchor = list.locator(`.msg[data-id="${oldest}"] .text`);
      await list.evaluate((e) => e.scrollTop = 0);
      const before = await anchor.evaluate((e) => e.getBoundingClientRect().top);
      await list.locator(`.msg[data-id="${oldest - 1}"]`).waitFor({ state: "attached" });
      const after = await anchor.evaluate((e) => e.getBoundingClientRect().top);
      assert.ok(Math.abs(after - before) < 2, `the view moved by ${after - before}px`);
      assert.ok(++rounds < 20, "history keeps loading");
    }
    assert.deepEqual(await ids(), Array.from({ length: total }, (_, i) => i + 1));
    await alice.locator("#messages .top-note").filter({ hasText: "Start of the conversation" })
      .waitFor();

    await alice.locator("#latest").click();
    await alice.locator("#latest").waitFor({ state: "hidden" });
    assert.ok(
      await list.evaluate((e) => e.scrollHeight - e.scrollTop - e.clientHeight < 2),
      "at the newest message",
    );
    await waitTitle(alice, "lobby");
    assert.deepEqual(h.problems, []);
  },
);

browserTest(
  "after a gap longer than the server replays, the page shows the newest and pages the rest in, each message once",
  async (h) => {
    await using server = await startServer({ settings: { replayLimit: 20 } });
    const [bob] = await TestClient.join(server.origin, "bob");
    await using _bob = bob;
    const sendAll = async (from: number, to: number) => {
      for (let i = from; i <= to; i++) {
        bob.send({ type: "send", room: "lobby", text: `message ${i}`, cid: `c${i}` });
      }
      await bob.next((f) => f.type === "message" && f.cid === `c${to}`);
    };
    await sendAll(1, 5);

    // Alice's socket goes through a gate the test can shut and open.
    const routes: WebSocketRoute[] = [];
    let open: () => void = () => {};
    let gate = Promise.resolve();
    const alice = await h.open(server.origin, {
      setup: (page) =>
        page.routeWebSocket(/\/ws\//, async (ws) => {
          routes.push(ws);
          await gate;
          ws.connectToServer();
        }),
    });
    await logIn(alice, "alice");
    await seeOnce(alice, "message 5");

    gate = new Promise((resolve) => open = resolve);
    await routes[0].close({ code: 4000, reason: "test: cut" });
    await waitStatus(alice, /^(reconnecting|connecting)/);
    await sendAll(6, 65);
    open();
    await waitStatus(alice, "connected");
    await seeOnce(alice, "message 65");

    const list = alice.locator("#messages");
    const ids = () =>
      list.locator(".msg").evaluateAll((els) => els.map((e) => Number(e.getAttribute("data-id"))));
    // The run from before the gap went; the newest replayed are shown.
    assert.deepEqual(await ids(), Array.from({ length: 20 }, (_, i) => 46 + i));
    for (let rounds = 0; (await ids())[0] !== 1; rounds++) {
      assert.ok(rounds < 10, "history keeps loading");
      await alice.locator('#messages[aria-busy="false"]').waitFor();
      const oldest = (await ids())[0];
      await list.evaluate((e) => e.scrollTop = 0);
      await list.locator(`.msg[data-id="${oldest - 1}"]`).waitFor({ state: "attached" });
    }
    assert.deepEqual(await ids(), Array.from({ length: 65 }, (_, i) => i + 1));
    assert.deepEqual(realProblems(h.problems), []);
  },
);

browserTest(
  "DMs past the welcome's first page are listed with their unread badges, and open with their messages",
  async (h) => {
    await using store = await openStore(":memory:");
    // Two DMs a welcome: the five come as the welcome's two, then pages of the rest.
    await using server = await startServer({ store, settings: { welcomeDms: 2 } });
    const partners = ["p1", "p2", "p3", "p4", "p5"];
    for (const [i, from] of partners.entries()) {
      for (let n = 0; n <= i; n++) await store.append({ to: "alice", from, text: `${from} #${n}` });
    }
    const [alice] = await h.people(server.origin, ["alice"]);
    for (const [i, p] of partners.entries()) {
      await badge(alice, "dm", p).filter({ hasText: String(i + 1) }).waitFor();
    }
    await openConversation(alice, "dm", "p5");
    await seeOnce(alice, "p5 #4");
    await badge(alice, "dm", "p5").waitFor({ state: "hidden" });
    assert.deepEqual(realProblems(h.problems), []);
  },
);
