/**
 * The chaos test across instances: three real main.ts processes on one real
 * PostgreSQL; clients chat in two rooms and in DMs, each connected to a
 * random instance and reconnecting to a random one whenever cut off, while
 * connections drop at random, instances are SIGKILLed (and started again),
 * and PostgreSQL itself is SIGKILLed and restarted mid-traffic. Afterwards
 * every client's view of every conversation must equal the stored history:
 * nothing lost, nothing twice, nothing out of order.
 */

import assert from "node:assert/strict";
import { ignoreWithoutPostgres, startPostgres } from "./_pg.ts";
import { arrive, random, ResilientClient, storedHistory, tally } from "./_resilient.ts";
import { type SpawnedServer, spawnServer } from "./_server.ts";

Deno.test({
  name:
    "chaos across three instances: SIGKILLed instances, a SIGKILLed PostgreSQL and random drops lose, repeat and reorder no acknowledged message",
  ignore: ignoreWithoutPostgres(),
  async fn() {
    const seed = Number(Deno.env.get("CHAOS_SEED") ?? Date.now() % 1_000_000);
    const rand = random(seed);
    // First, so that a run that fails (a timeout, say) can be replayed with CHAOS_SEED.
    console.log(`chaos on PostgreSQL: seed ${seed}`);
    await using pg = await startPostgres();
    const USERS = 6, MESSAGES_PER_USER = 100, INSTANCE_KILLS = 3, PG_CRASHES = 2;
    // A short TTL, so killed instances' entries do not linger through the test.
    const args = ["--presence-ttl", "2"];
    const servers: Array<SpawnedServer | undefined> = [await spawnServer({ data: pg.url, args })];
    servers.push(...await Promise.all([1, 2].map(() => spawnServer({ data: pg.url, args }))));
    const ports = servers.map((s) => s!.port);
    const origin = () => {
      const alive = servers.filter((s) => s !== undefined);
      // While one is down, a client may still pick its address (as behind a proxy): it retries.
      return (alive[Math.floor(Math.random() * alive.length)] ?? servers.find(Boolean))?.origin ??
        `http://127.0.0.1:${ports[0]}`;
    };
    const clients = Array.from({ length: USERS }, (_, i) => new ResilientClient(`u${i}`, origin));
    let kills = 0, crashes = 0;
    try {
      await arrive(clients, "den");

      const total = USERS * MESSAGES_PER_USER;
      // The disasters, spread over the run, one at a time, each while traffic goes on.
      const events = [
        ...Array.from({ length: INSTANCE_KILLS }, () => "instance" as const),
        ...Array.from({ length: PG_CRASHES }, () => "postgres" as const),
      ].sort(() => rand() - 0.5);
      const at = events.map((_, i) => Math.floor((total * (i + 1)) / (events.length + 1)));
      let disaster: Promise<void> = Promise.resolve();
      let sent = 0;
      while (sent < total) {
        const c = clients[Math.floor(rand() * USERS)];
        const peer = clients[Math.floor(rand() * USERS)];
        const pick = rand();
        const where = pick < 0.35 ? { room: "lobby" } : pick < 0.7 ? { room: "den" } : {
          to: peer.user,
        };
        c.send(where, `#${sent} from ${c.user} ${"·".repeat(Math.floor(rand() * 40))}`);
        sent++;
        if (rand() < 0.05) clients[Math.floor(rand() * USERS)].drop();
        const next = at.indexOf(sent);
        if (next !== -1) {
          await disaster;
          if (events[next] === "instance") {
            const i = Math.floor(rand() * servers.length);
            disaster = (async () => {
              const victim = servers[i]!;
              servers[i] = undefined;
              await victim.kill("SIGKILL");
              kills++;
              // Down for a moment while traffic carries on elsewhere, then back on its address.
              await new Promise((r) => setTimeout(r, 300));
              servers[i] = await spawnServer({ data: pg.url, port: ports[i], args });
            })();
          } else {
            disaster = (async () => {
              await pg.crash();
              crashes++;
              await new Promise((r) => setTimeout(r, 300));
              await pg.restart();
            })();
          }
        }
        await c.until(() => c.pending.size < 4, "room in the send window");
      }
      await disaster;

      await Promise.all(clients.map((c) => c.until(() => c.pending.size === 0, "all acks")));
      const stored = await storedHistory(pg.url);
      const { acked, stored: storedCount, lost, duplicated, outOfOrder, reconnects, stray } =
        await tally(
          clients,
          stored,
        );
      const refused = clients.reduce((n, c) => n + c.storeFailures, 0);
      console.log(
        `chaos on PostgreSQL, 3 instances (seed ${seed}): ${acked} acknowledged, ${storedCount} stored, ` +
          `${kills} instance SIGKILLs, ${crashes} PostgreSQL SIGKILLs, ${reconnects} reconnects (${stray} stray socket events), ` +
          `${refused} store_failed re-sent: lost ${lost}, duplicated ${duplicated}, out of order ${outOfOrder}`,
      );
      assert.equal(kills, INSTANCE_KILLS);
      assert.equal(crashes, PG_CRASHES);
      assert.equal(acked, total + USERS);
      assert.equal(storedCount, acked);
      assert.deepEqual({ lost, duplicated, outOfOrder }, { lost: 0, duplicated: 0, outOfOrder: 0 });
    } finally {
      await Promise.all(clients.map((c) => c.stop()));
      await Promise.all(servers.map((s) => s?.close()));
    }
  },
});
