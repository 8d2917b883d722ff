/**
 * PgBus on a real PostgreSQL, two buses as two instances would hold them:
 * what a hub is handed, in which order, when notifications and the
 * instance's own messages cross.
 */

import assert from "node:assert/strict";
import postgres from "npm:postgres@^3.4.9";
import type { BusEvent } from "../lib/bus.ts";
import { PgBus } from "../lib/pg_bus.ts";
import { ensureFanoutSchema } from "../lib/pg_instance.ts";
import type { ChatMessage } from "../lib/protocol.ts";
import { openStore } from "../lib/sql/open.ts";
import { ignoreWithoutPostgres, startPostgres } from "./_pg.ts";

/** Resolves once `events` holds `n` messages. */
function messages(events: BusEvent[], n: number, timeoutMs = 5000): Promise<ChatMessage[]> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const check = () => {
      const got = events.flatMap((e) => e.kind === "message" ? [e.message] : []);
      if (got.length >= n) return resolve(got);
      if (Date.now() - started > timeoutMs) {
        return reject(new Error(`only ${got.length} of ${n}: ${got.map((m) => m.id)}`));
      }
      setTimeout(check, 10);
    };
    check();
  });
}

Deno.test({
  name:
    "an instance hands over its own message only after the others' messages before it, read from the table, each once",
  ignore: ignoreWithoutPostgres(),
  async fn() {
    await using pg = await startPostgres();
    const sql = postgres(pg.url, { max: 2, onnotice: () => {} });
    await using storeA = await openStore(pg.url);
    await using storeB = await openStore(pg.url);
    await ensureFanoutSchema(sql);
    const a = await PgBus.start({ sql, instance: "a" });
    const b = await PgBus.start({ sql, instance: "b" });
    try {
      const seen: BusEvent[] = [];
      using _sub = b.subscribe((e) => seen.push(e), { has: () => true });
      const room = { room: "lobby", from: "x" };
      // 1 announced by a: b reads it from the table.
      a.publish({
        kind: "message",
        message: (await storeA.append({ ...room, text: "1" })).message,
      });
      await messages(seen, 1);
      // 2 stored by a, its announcement not out yet; 3 stored and published by b itself.
      const two = (await storeA.append({ ...room, text: "2" })).message;
      const three = (await storeB.append({ ...room, text: "3" })).message;
      b.publish({ kind: "message", message: three });
      const got = await messages(seen, 3);
      assert.deepEqual(got.map((m) => m.text), ["1", "2", "3"]);
      // a's late announcement of 2, and a re-sent 3, hand over nothing again.
      a.publish({ kind: "message", message: two });
      b.reached(three);
      a.publish({ kind: "typing", room: "lobby", from: "x" });
      await new Promise<void>((resolve) => {
        const t = setInterval(() => {
          if (seen.some((e) => e.kind === "typing")) {
            clearInterval(t);
            resolve();
          }
        }, 10);
      });
      assert.deepEqual(
        seen.flatMap((e) => e.kind === "message" ? [e.message.text] : []),
        ["1", "2", "3"],
      );
    } finally {
      await a.close();
      await b.close();
      await sql.end();
    }
  },
});

Deno.test({
  name:
    "conversations announced together are each handed over whole and in order; one whose announcement was missed is caught up from the positions",
  ignore: ignoreWithoutPostgres(),
  async fn() {
    await using pg = await startPostgres();
    const sql = postgres(pg.url, { max: 2, onnotice: () => {} });
    await using store = await openStore(pg.url);
    await ensureFanoutSchema(sql);
    const a = await PgBus.start({ sql, instance: "a" });
    const b = await PgBus.start({ sql, instance: "b" });
    try {
      const seen: BusEvent[] = [];
      using _sub = b.subscribe((e) => seen.push(e), { has: () => true });
      const texts = (n: number) =>
        messages(seen, n).then((got) => got.map((m) => `${m.room ?? m.to}:${m.text}`));
      // Three conversations move in one turn: one announcement names them all.
      const stored = [];
      for (const [room, text] of [["r1", "1"], ["r2", "1"], ["r1", "2"], ["r3", "1"]]) {
        stored.push((await store.append({ room, from: "x", text })).message);
      }
      for (const message of stored) a.publish({ kind: "message", message });
      const first = await texts(4);
      for (const room of ["r1", "r2", "r3"]) {
        const own = first.filter((t) => t.startsWith(`${room}:`));
        assert.deepEqual(own, [...own].sort(), `${room} in order: ${first}`);
      }
      assert.deepEqual([...first].sort(), ["r1:1", "r1:2", "r2:1", "r3:1"]);
      // r2 moves twice and r1 once, but the announcement of r2 never comes (as if b's LISTEN
      // had dropped it); the table says where r2 stands, as a's announcing would have.
      await store.append({ room: "r2", from: "x", text: "2" });
      await store.append({ room: "r1", from: "x", text: "3" });
      const r2 = (await store.append({ room: "r2", from: "x", text: "3" })).message;
      await sql`UPDATE chat_positions SET last = ${r2.id}, updated_at = now()
        WHERE conversation = 'r/r2'`;
      // r1's next announcement starts past what b has (r1:3 was not announced either): b reads
      // r1's gap, and then every conversation that moved, r2 included.
      const r1 = (await store.append({ room: "r1", from: "x", text: "4" })).message;
      a.publish({ kind: "message", message: r1 });
      const all = await texts(8);
      assert.deepEqual(all.slice(4).filter((t) => t.startsWith("r1:")), ["r1:3", "r1:4"]);
      assert.deepEqual(all.slice(4).filter((t) => t.startsWith("r2:")), ["r2:2", "r2:3"]);
      assert.equal(all.length, new Set(all).size, `no repeats: ${all}`);
    } finally {
      await a.close();
      await b.close();
      await sql.end();
    }
  },
});

Deno.test({
  name:
    "an instance's first message in a conversation new to it comes after the others' just before it, even when their announcement is late",
  ignore: ignoreWithoutPostgres(),
  async fn() {
    await using pg = await startPostgres();
    const sql = postgres(pg.url, { max: 2, onnotice: () => {} });
    await using storeA = await openStore(pg.url);
    await using storeB = await openStore(pg.url);
    await ensureFanoutSchema(sql);
    const a = await PgBus.start({ sql, instance: "a" });
    const b = await PgBus.start({ sql, instance: "b" });
    try {
      const seen: BusEvent[] = [];
      using _sub = b.subscribe((e) => seen.push(e), { has: () => true });
      // A room's first two messages here: a's is stored first but announced late; b's own
      // comes second. A member of b's who just joined (no cursor yet) takes whatever comes
      // first: if b handed over its own first, a's would never reach that member.
      const room = { room: "fresh", from: "x" };
      const one = (await storeA.append({ ...room, text: "1" })).message;
      const two = (await storeB.append({ ...room, text: "2" })).message;
      b.publish({ kind: "message", message: two });
      a.publish({ kind: "message", message: one });
      const got = await messages(seen, 2);
      assert.deepEqual(got.map((m) => m.text), ["1", "2"]);
    } finally {
      await a.close();
      await b.close();
      await sql.end();
    }
  },
});
