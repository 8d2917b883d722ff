/**
 * Rooms and people in the page: making, finding, joining, leaving and inviting
 * to rooms; starting a DM from the people list.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Page } from "npm:playwright-core@1";
import { startServer } from "./_server.ts";
import { TestClient } from "./_client.ts";
import { browserTest, logIn, openConversation, say, seeOnce, waitTitle } from "./_browser.ts";

/** Opens the rooms dialog and asks for `room` (joined if it exists, made if not). */
async function goToRoom(page: Page, room: string, isPrivate = false): Promise<void> {
  await page.click("#browse");
  await page.locator("#rooms-dialog").waitFor();
  await page.fill("#create-name", room);
  if (isPrivate) await page.check("#create-private");
  await page.click('#create-form button[type="submit"]');
}

browserTest(
  "a room made from the rooms dialog opens at once; another person joins it by name; leaving drops it",
  async (h) => {
    await using server = await startServer();
    const [alice, bob] = await h.people(server.origin, ["alice", "bob"]);

    await goToRoom(alice, "plans");
    await waitTitle(alice, "plans");
    assert.equal(await alice.locator("#rooms-dialog").isVisible(), false, "the dialog closed");
    await alice.locator('#rooms li[data-room="plans"] .open[aria-current="true"]').waitFor();

    await goToRoom(bob, "plans");
    await waitTitle(bob, "plans");
    await say(alice, "see you in plans");
    await seeOnce(bob, "see you in plans");
    assert.equal(await alice.locator("#title").getAttribute("class"), "room", "no lock: public");

    await bob.locator('#rooms li[data-room="plans"] .leave').click();
    await bob.locator('#rooms li[data-room="plans"]').waitFor({ state: "detached" });
    await waitTitle(bob, "lobby");
    // The lobby cannot be left.
    assert.equal(await bob.locator('#rooms li[data-room="lobby"] .leave').count(), 0);
    assert.deepEqual(h.problems, []);
  },
);

// Needs the server's `create` and `rooms` frames.
browserTest(
  "the rooms dialog lists public rooms with their member counts, and a click joins one",
  async (h) => {
    await using server = await startServer();
    const [alice, bob] = await h.people(server.origin, ["alice", "bob"]);
    await goToRoom(alice, "garden");
    await waitTitle(alice, "garden");

    await bob.click("#browse");
    const item = bob.locator('#public-rooms li[data-room="garden"]');
    await item.waitFor();
    assert.equal(await item.locator(".help").textContent(), "1 member");
    assert.equal(await item.locator("button").textContent(), "Join");
    await item.locator("button").click();
    await waitTitle(bob, "garden");
    await say(bob, "nice garden");
    await seeOnce(alice, "nice garden");

    // Listed again, the room now has two members, and is one of alice's own.
    await alice.click("#browse");
    const again = alice.locator('#public-rooms li[data-room="garden"]');
    await again.filter({ hasText: "2 members" }).waitFor();
    assert.equal(await again.locator("button").textContent(), "Open");
    assert.deepEqual(h.problems, []);
  },
);

// Needs the server's private rooms (`create` with private, `invite`, `invited`, `forbidden`).
browserTest(
  "a private room shows a lock; the invited person gets an invitation and joins; others are refused",
  async (h) => {
    await using server = await startServer();
    const [alice, bob, carol] = await h.people(server.origin, ["alice", "bob", "carol"]);

    await goToRoom(alice, "plaza");
    await waitTitle(alice, "plaza");
    await goToRoom(alice, "secret", true);
    await waitTitle(alice, "secret");
    await alice.locator('#rooms li.private[data-room="secret"]').waitFor();
    assert.match(await alice.locator("#title").getAttribute("class") ?? "", /\bprivate\b/);

    await alice.click("#invite");
    await alice.fill("#invite-user", "bob");
    await alice.press("#invite-user", "Enter");
    await alice.locator("#invite-msg").filter({ hasText: "Invitation sent to bob." }).waitFor();
    await alice.click("#invite-dialog .close");

    const invitation = bob.locator('#invites li[data-invite="secret"]');
    await invitation.waitFor();
    assert.equal(await invitation.locator(".label").textContent(), "#secret, from alice");
    await invitation.locator('button[data-action="accept"]').click();
    await waitTitle(bob, "secret");
    await bob.locator('#rooms li.private[data-room="secret"]').waitFor();
    await invitation.waitFor({ state: "detached" });
    await say(bob, "thanks for the invite");
    await seeOnce(alice, "thanks for the invite");

    // Not listed, and not joinable without an invitation.
    await carol.click("#browse");
    await carol.locator('#public-rooms li[data-room="plaza"]').waitFor();
    assert.equal(await carol.locator('#public-rooms li[data-room="secret"]').count(), 0);
    await carol.fill("#create-name", "secret");
    await carol.press("#create-name", "Enter");
    await carol.locator("#create-msg").filter({ hasText: "#secret is private" }).waitFor();
    assert.equal(await carol.locator('#rooms li[data-room="secret"]').count(), 0);
    assert.deepEqual(h.problems, []);
  },
);

browserTest(
  "people are listed online first with presence dots, and clicking one starts a DM",
  async (h) => {
    await using server = await startServer();
    const alice = await h.open(server.origin);
    const aaron = await h.open(server.origin);
    const zoe = await h.open(server.origin);
    await logIn(aaron, "aaron");
    await logIn(zoe, "zoe");
    await logIn(alice, "alice");
    await alice.locator('#users li.online[data-user="aaron"]').waitFor();

    // Aaron leaves: still listed, but after everyone online, and without a filled dot.
    await aaron.context().close();
    await alice.locator('#users li[data-user="aaron"]:not(.online)').waitFor();
    const people = await alice.locator("#users li").evaluateAll((lis) =>
      lis.map((li) => `${li.getAttribute("data-user")}:${li.classList.contains("online")}`)
    );
    assert.deepEqual(people, ["zoe:true", "aaron:false"]);
    assert.match(
      await alice.locator('#users li[data-user="aaron"] .open').getAttribute("aria-label") ?? "",
      /offline/,
    );

    await openConversation(alice, "user", "zoe");
    assert.equal(await alice.locator("#title").getAttribute("class"), "dm");
    await alice.locator('#dms li.online[data-dm="zoe"] .open[aria-current="true"]').waitFor();
    await say(alice, "hi zoe, a word in private");
    await openConversation(zoe, "dm", "alice");
    await seeOnce(zoe, "hi zoe, a word in private");
    assert.deepEqual(h.problems, []);
  },
);

browserTest(
  "beyond --welcome-online the people list says how many are online and lists the rest on asking",
  async (h) => {
    await using server = await startServer({ settings: { welcomeOnline: 2 } });
    const crowd = ["u1", "u2", "u3", "u4"];
    const clients = await Promise.all(
      crowd.map(async (u) => (await TestClient.join(server.origin, u))[0]),
    );
    try {
      const alice = await h.open(server.origin);
      await logIn(alice, "alice");
      // The welcome named two (alice herself and u1) of the five online.
      await alice.locator("#users-count").filter({ hasText: "5 online" }).waitFor();
      await alice.locator('#users li.online[data-user="u1"]').waitFor();
      assert.equal(await alice.locator("#users li").count(), 1);
      await alice.getByRole("button", { name: "Show more" }).click();
      await alice.locator('#users li.online[data-user="u4"]').waitFor();
      const people = await alice.locator("#users li").evaluateAll((lis) =>
        lis.map((li) => li.getAttribute("data-user"))
      );
      assert.deepEqual(people, crowd);
      // All listed: no count, nothing more to ask for.
      await alice.locator("#users-more").waitFor({ state: "hidden" });
      assert.equal(await alice.locator("#users-count").isVisible(), false);
      assert.deepEqual(h.problems, []);
    } finally {
      await Promise.all(clients.map((c) => c.close()));
    }
  },
);
