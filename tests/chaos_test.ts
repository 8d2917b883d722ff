/**
 * The promise of issue 3, tested the hard way: clients chat in the lobby and
 * in DMs while the server (the real main.ts, a child process) is killed with
 * SIGKILL and restarted, and while clients drop and reconnect at random.
 * Afterwards every client's view of every conversation must equal the stored
 * history: nothing lost, nothing twice, nothing out of order.
 */

import assert from "node:assert/strict";
import { type SpawnedServer, spawnServer } from "./_server.ts";
import type { Frame } from "./_client.ts";
import { random, ResilientClient, storedHistory } from "./_resilient.ts";

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
    for (const c of clients) c.connect();
    // Everyone exists (has connected once) before anyone DMs them.
    await Promise.all(clients.map((c, i) => {
      c.send({ room: "lobby" }, `${c.user} is here`);
      return c.until(() => c.acked.size === 1, `first ack of u${i}`);
    }));
    // A second room, joined by all: its replay and live traffic are checked like the lobby's.
    await Promise.all(clients.map((c) => c.join("den")));

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
    const expectedFor = (c: ResilientClient) => {
      const out = new Map<string, Frame[]>();
      for (const [key, messages] of stored) {
        const [kind, a, b] = key.split("/");
        if (kind === "r") out.set(`room:${a}`, messages);
        else if (a === c.user || b === c.user) out.set(`dm:${a === c.user ? b : a}`, messages);
      }
      return out;
    };
    await Promise.all(clients.map((c) => {
      const expected = expectedFor(c);
      return c.until(
        () =>
          [...expected].every(([conv, msgs]) =>
            (c.views.get(conv)?.at(-1)?.id ?? 0) >= msgs.at(-1)!.id
          ),
        "catching up",
      );
    }));

    let lost = 0, duplicated = 0, outOfOrder = 0, acked = 0, storedCount = 0;
    for (const c of clients) {
      duplicated += c.duplicates;
      outOfOrder += c.outOfOrder;
      acked += c.acked.size;
      for (const [conv, msgs] of expectedFor(c)) {
        const seen = new Set((c.views.get(conv) ?? []).map((m) => m.id));
        lost += msgs.filter((m) => !seen.has(m.id)).length;
      }
    }
    for (const msgs of stored.values()) storedCount += msgs.length;
    // Every acknowledged cid is stored exactly once, under the id it was acknowledged with.
    const byCid = new Map<string, number>();
    for (const [key, msgs] of stored) {
      for (const m of msgs) {
        assert.equal(byCid.has(m.cid), false, `cid ${m.cid} stored twice`);
        byCid.set(m.cid, m.id);
        assert.deepEqual(
          msgs.map((x) => x.id),
          msgs.map((_, i) => i + 1),
          `ids of ${key} are 1..n`,
        );
      }
    }
    for (const c of clients) {
      for (const [cid, { id }] of c.acked) {
        assert.equal(byCid.get(cid), id, `acked ${cid} is stored as ${id}`);
      }
    }
    const reconnects = clients.reduce((n, c) => n + c.reconnects, 0);
    console.log(
      `chaos (seed ${seed}): ${acked} acknowledged, ${storedCount} stored, ${kills} SIGKILLs, ` +
        `${reconnects} reconnects: lost ${lost}, duplicated ${duplicated}, out of order ${outOfOrder}`,
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
