/**
 * An instance announces what it stored (so that the others deliver it to
 * their members) in the commit itself: an instance that dies between
 * acknowledging a message and announcing it must not leave the message
 * undelivered on the others while their members stay connected.
 */

import assert from "node:assert/strict";
import postgres from "npm:postgres@^3.4.9";
import { ignoreWithoutPostgres, instances } from "./_pg.ts";
import { ResilientClient } from "./_resilient.ts";

Deno.test({
  name:
    "a DM acknowledged by an instance that dies before anything else it does reaches its recipient on another instance",
  ignore: ignoreWithoutPostgres(),
  async fn() {
    await using cluster = await instances(2);
    const [a, b] = cluster.servers;
    let aliceAt = a.origin;
    const alice = new ResilientClient("alice", () => aliceAt);
    const bob = new ResilientClient("bob", () => b.origin);
    const db = postgres(cluster.pg.url, { max: 1, onnotice: () => {} });
    try {
      for (const c of [alice, bob]) {
        c.connect();
        c.send({ room: "lobby" }, `${c.user} is here`);
        await c.until(() => c.acked.size === 1, "first ack");
      }
      // Alice and bob know each other's conversation (the DM's first message is not the case).
      alice.send({ to: "bob" }, "hello");
      await bob.until(() => (bob.views.get("dm:alice")?.length ?? 0) === 1, "the first DM");

      // The positions' table refuses every write for a while, as a database that went away
      // right after a commit would refuse what comes after it.
      await db.unsafe(`
        CREATE FUNCTION refuse_positions() RETURNS trigger LANGUAGE plpgsql AS
          $$ BEGIN RAISE EXCEPTION 'positions refused (test)'; END $$;
        CREATE TRIGGER refuse_positions BEFORE INSERT OR UPDATE ON chat_positions
          FOR EACH ROW EXECUTE FUNCTION refuse_positions()`);
      alice.send({ to: "bob" }, "are you there?");
      // Instance a stored it and cannot announce it, or could not store it.
      await alice.until(() => alice.pending.size === 0 || alice.storeFailures > 0, "an answer");
      await a.kill("SIGKILL");
      await db.unsafe(`DROP TRIGGER refuse_positions ON chat_positions`);
      // Alice comes back on b, and re-sends what a did not acknowledge.
      aliceAt = b.origin;
      await alice.until(() => alice.pending.size === 0, "every DM acknowledged");
      const acked = [...alice.acked.values()].filter((m) => m.conv === "dm:bob");
      assert.equal(acked.length, 2);
      // Bob never disconnected: what reaches him now came to b live.
      await bob.until(
        () => (bob.views.get("dm:alice")?.at(-1)?.id ?? 0) >= Math.max(...acked.map((m) => m.id)),
        "the acknowledged DMs",
        10_000,
      );
      assert.deepEqual(
        bob.views.get("dm:alice")!.map((m) => m.text),
        ["hello", "are you there?"],
      );
      assert.equal(bob.reconnects, 0);
    } finally {
      await Promise.all([alice.stop(), bob.stop()]);
      await db.end();
    }
  },
});
