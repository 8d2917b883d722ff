/**
 * The page in three browsers, each on another instance of one chat (three
 * main.ts processes on one PostgreSQL), as the multi-instance story goes:
 * what one person says shows for the others, once, wherever they are.
 *
 * @module
 */

import assert from "node:assert/strict";
import { badge, browserTest, say, seeOnce, waitTitle } from "./_browser.ts";
import { ignoreWithoutPostgres, startPostgres } from "./_pg.ts";
import { type SpawnedServer, spawnServer } from "./_server.ts";

if (!ignoreWithoutPostgres()) {
  browserTest(
    "three people on three instances: lobby messages, a DM with its badge, and who is online",
    async (h) => {
      await using pg = await startPostgres();
      const servers: SpawnedServer[] = [await spawnServer({ data: pg.url })];
      try {
        servers.push(...await Promise.all([1, 2].map(() => spawnServer({ data: pg.url }))));
        const [alice] = await h.people(servers[0].origin, ["alice"]);
        const [bob] = await h.people(servers[1].origin, ["bob"]);
        const [carol] = await h.people(servers[2].origin, ["carol"]);

        // Everyone sees everyone online, whichever instance they are on.
        for (
          const [page, others] of [[alice, ["bob", "carol"]], [carol, ["alice", "bob"]]] as const
        ) {
          for (const other of others) await page.locator(`#users [data-user="${other}"]`).waitFor();
        }

        await say(alice, "hello from the first instance");
        for (const page of [bob, carol]) await seeOnce(page, "hello from the first instance");

        await alice.click('#users [data-user="bob"] .open');
        await waitTitle(alice, "bob");
        await say(alice, "psst, bob");
        const dmBadge = badge(bob, "dm", "alice");
        await dmBadge.waitFor({ state: "visible" });
        assert.equal(await dmBadge.textContent(), "1");
        await bob.click('#dms [data-dm="alice"] .open');
        await seeOnce(bob, "psst, bob");
        await say(bob, "hi alice, from the second");
        await seeOnce(alice, "hi alice, from the second");
        assert.deepEqual(h.problems, []);
      } finally {
        await Promise.all(servers.map((s) => s.close()));
      }
    },
  );
}
