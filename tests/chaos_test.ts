/**
 * The promise of issue 3, tested the hard way: clients chat in the lobby and
 * in DMs while the server (the real main.ts, a child process) is killed with
 * SIGKILL and restarted, and while clients drop and reconnect at random.
 * Afterwards every client's view of every conversation must equal the stored
 * history: nothing lost, nothing twice, nothing out of order.
 */

import assert from "node:assert/strict";
import { type SpawnedServer, spawnServer } from "./_server.ts";
import { arrive, random, ResilientClient, storedHistory, tally } from "./_resilient.ts";

Deno.test("chaos: SIGKILL restarts and random drops lose, repeat and reorder no acknowledged message in rooms or DMs", async () => {
  const seed = Number(Deno.env.get("CHAOS_SEED") ?? Date.now() % 1_000_000);
  const rand = random(seed);
  const dir = await Deno.makeTempDir({ prefix: "chat-chaos-" });
  const data = `${dir}/chat.db`;
  const USERS = 6, MESSAGES_PER_USER = 150, KILLS = 4;
  let server: SpawnedServer = await spawnServer({ data });
  const port = server.port;
  const origin = () => server.origin;
  const clients = Array.from({ length: USERS }, (_, i) => new ResilientClient(`u${i}`, origin));
  try {
    await arrive(clients, "den");

    const total = USERS * MESSAGES_PER_USER;
    let sent = 0;
    let kills = 0;
    while (sent < total) {
      const c = clients[Math.floor(rand() * USERS)];
      const peer = clients[Math.floor(rand() * USERS)];
      const pick = rand();
      const where = pick < 0.35
        ? { room: "lobby" }
        : pick < 0.7
        ? { room: "den" }
        : { to: peer.user };
      c.send(where, `#${sent} from ${c.user} ${"·".repeat(Math.floor(rand() * 40))}`);
      sent++;
      if (rand() < 0.05) clients[Math.floor(rand() * USERS)].drop();
      if (kills < KILLS && sent === Math.floor((total * (kills + 1)) / (KILLS + 1))) {
        // Kill the server mid-stream, with sends in flight, and start it again on the same data.
        await server.kill("SIGKILL");
        kills++;
        server = await spawnServer({ data, port });
      }
      // Pace by acknowledgements: at most a few sends in flight per client.
      await c.until(() => c.pending.size < 4, "room in the send window");
    }

    // Every send is acknowledged in the end (re-sent with its cid after each cut).
    await Promise.all(clients.map((c) => c.until(() => c.pending.size === 0, "all acks")));
    await server.kill("SIGKILL");
    const stored = await storedHistory(data);
    server = await spawnServer({ data, port });

    // Every client catches up to the stored history of each of its conversations.
    const { acked, stored: storedCount, lost, duplicated, outOfOrder, reconnects, stray } =
      await tally(
        clients,
        stored,
      );
    console.log(
      `chaos (seed ${seed}): ${acked} acknowledged, ${storedCount} stored, ${kills} SIGKILLs, ` +
        `${reconnects} reconnects (${stray} stray socket events): lost ${lost}, duplicated ${duplicated}, out of order ${outOfOrder}`,
    );
    assert.equal(acked, total + USERS);
    assert.equal(storedCount, acked);
    assert.deepEqual({ lost, duplicated, outOfOrder }, { lost: 0, duplicated: 0, outOfOrder: 0 });
  } finally {
    await Promise.all(clients.map((c) => c.stop()));
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});
