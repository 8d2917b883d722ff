/**
 * Connection slots: `--max-connections-per-user` and `--max-connections-per-ip`
 * count open sockets, so a socket that closes must give its place back. A
 * user who reloads a tab many times (or a NAT full of people coming and
 * going) would otherwise be locked out for good.
 */

import assert from "node:assert/strict";
import { isPresence, TestClient } from "./_client.ts";
import { startServer } from "./_server.ts";

/** Opens a chat.v1 connection and waits for its welcome (or fails, saying why). */
async function welcomed(origin: string, user: string): Promise<TestClient> {
  return (await TestClient.join(origin, user))[0];
}

/** Fills `limit` slots, closes them all (the client waits for each close), `rounds` times. */
async function churn(
  origin: string,
  users: (round: number, i: number) => string,
  limit: number,
  rounds: number,
): Promise<void> {
  for (let round = 0; round < rounds; round++) {
    const open: TestClient[] = [];
    try {
      for (let i = 0; i < limit; i++) {
        open.push(
          await welcomed(origin, users(round, i)).catch((error) => {
            throw new Error(`round ${round}, connection ${i + 1} of ${limit}: ${error.message}`);
          }),
        );
      }
    } finally {
      await Promise.allSettled(open.map((c) => c.close()));
    }
  }
}

Deno.test({
  name: "closing and reconnecting many times never runs out of --max-connections-per-user slots",
  timeout: 60_000,
  async fn() {
    await using srv = await startServer({ settings: { maxConnectionsPerUser: 2 } });
    await churn(srv.origin, () => "alice", 2, 15);
    // Still at the limit, not below it: a third concurrent socket is refused with 429.
    await using _a = await welcomed(srv.origin, "alice");
    await using _b = await welcomed(srv.origin, "alice");
    await assert.rejects(TestClient.connect(srv.origin, "alice"), /could not connect/);
  },
});

Deno.test({
  name: "closing and reconnecting many times never runs out of --max-connections-per-ip slots",
  timeout: 60_000,
  async fn() {
    await using srv = await startServer({ settings: { maxConnectionsPerIp: 3 } });
    await churn(srv.origin, (round, i) => `u${round}x${i}`, 3, 15);
    await using _a = await welcomed(srv.origin, "a");
    await using _b = await welcomed(srv.origin, "b");
    await using _c = await welcomed(srv.origin, "c");
    await assert.rejects(TestClient.connect(srv.origin, "d"), /could not connect/);
  },
});

Deno.test({
  name:
    "a closed socket leaves: others see its user go offline with the last tab, and /healthz stops counting it",
  timeout: 30_000,
  async fn() {
    await using srv = await startServer();
    const health = async () => {
      const res = await fetch(`${srv.origin}/healthz`);
      const { connections, usersOnline } = await res.json();
      return { connections, usersOnline };
    };
    await using bob = await welcomed(srv.origin, "bob");
    const tab1 = await welcomed(srv.origin, "alice");
    const tab2 = await welcomed(srv.origin, "alice");
    try {
      await bob.next(isPresence("alice", true));
      assert.deepEqual(await health(), { connections: 3, usersOnline: 2 });
      await tab1.close();
      // One tab left: alice is still online, so nobody is told otherwise.
      bob.send({ type: "ping" });
      await bob.next((f) => f.type === "pong");
      assert.deepEqual(bob.queued.filter((f) => f.type === "presence"), []);
      assert.deepEqual(await health(), { connections: 2, usersOnline: 2 });
      await tab2.close();
      await bob.next(isPresence("alice", false));
      assert.deepEqual(await health(), { connections: 1, usersOnline: 1 });
    } finally {
      await Promise.allSettled([tab1.close(), tab2.close()]);
    }
  },
});
