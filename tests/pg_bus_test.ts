/**
 * PgBus on a real PostgreSQL, two buses as two instances would hold them:
 * what a hub is handed, in which order, when notifications and the
 * instance's own messages cross.
 */

import assert from "node:assert/strict";
import postgres from "npm:postgres@^3.4.9";
import type { BusEvent } from "../lib/bus.ts";
import { PgBus, type PgBusOptions } from "../lib/pg_bus.ts";
import { ensureFanoutSchema } from "../lib/pg_instance.ts";
import type { ChatMessage } from "../lib/protocol.ts";
import { openStore } from "../lib/sql/open.ts";
import { ignoreWithoutPostgres, startPostgres } from "./_pg.ts";

/** What instance b's hub is handed, with waits driven by the handing, not by polling. */
class Seen {
  readonly events: BusEvent[] = [];
  #waiters = new Set<() => void>();

  push(event: BusEvent): void {
    this.events.push(event);
    for (const wake of this.#waiters) wake();
  }

  /** The messages handed over so far. */
  get messages(): ChatMessage[] {
    return this.events.flatMap((e) => e.kind === "message" ? [e.message] : []);
  }

  /** Resolves once an event matches; fails after `timeoutMs`. */
  until(what: string, match: (events: BusEvent[]) => boolean, timeoutMs = 5000): Promise<void> {
    return new Promise((resolve, reject) => {
      const done = (error?: Error) => {
        clearTimeout(timer);
        this.#waiters.delete(check);
        error ? reject(error) : resolve();
      };
      const check = () => match(this.events) && done();
      const timer = setTimeout(
        () => done(new Error(`${what}: ${JSON.stringify(this.events)}`)),
        timeoutMs,
      );
      this.#waiters.add(check);
      check();
    });
  }

  /** Resolves with the messages once `n` are there. */
  async upTo(n: number): Promise<ChatMessage[]> {
    await this.until(`${n} messages`, () => this.messages.length >= n);
    return this.messages;
  }
}

/**
 * Two buses on one throwaway cluster, as instances a and b hold them, with
 * b's hand-overs recorded; `stores` stores on the same database; `sql` is the
 * test's own connection, opened at once, so it still works while new ones are refused.
 */
async function twoInstances(
  stores: number,
  options: Pick<PgBusOptions, "pingMs" | "log"> = {},
) {
  const pg = await startPostgres();
  const pool = postgres(pg.url, { max: 2, onnotice: () => {} });
  const sql = postgres(pg.url, { max: 1, onnotice: () => {} });
  const opened = await Promise.all(Array.from({ length: stores }, () => openStore(pg.url)));
  await ensureFanoutSchema(sql);
  const a = await PgBus.start({ sql: pool, instance: "a", ...options });
  const b = await PgBus.start({ sql: pool, instance: "b", ...options });
  const seen = new Seen();
  const sub = b.subscribe((e) => seen.push(e), { has: () => true });
  return {
    a,
    b,
    sql,
    seen,
    stores: opened,
    async [Symbol.asyncDispose]() {
      sub[Symbol.dispose]();
      await a.close();
      await b.close();
      // Bounded: postgres.js's end() waits forever for a connection refused as it ends.
      await pool.end({ timeout: 5 });
      await sql.end({ timeout: 5 });
      for (const store of opened) await store.close();
      await pg[Symbol.asyncDispose]();
    },
  };
}

Deno.test({
  name:
    "an instance hands over its own message only after the others' messages before it, read from the table, each once",
  ignore: ignoreWithoutPostgres(),
  async fn() {
    await using instances = await twoInstances(2);
    const { a, b, seen, stores: [storeA, storeB] } = instances;
    const room = { room: "lobby", from: "x" };
    // 1 announced by a: b reads it from the table.
    a.publish({
      kind: "message",
      message: (await storeA.append({ ...room, text: "1" })).message,
    });
    await seen.upTo(1);
    // 2 stored by a, its announcement not out yet; 3 stored and published by b itself.
    const two = (await storeA.append({ ...room, text: "2" })).message;
    const three = (await storeB.append({ ...room, text: "3" })).message;
    b.publish({ kind: "message", message: three });
    const got = await seen.upTo(3);
    assert.deepEqual(got.map((m) => m.text), ["1", "2", "3"]);
    // a's late announcement of 2, and a re-sent 3, hand over nothing again.
    a.publish({ kind: "message", message: two });
    b.reached(three);
    a.publish({ kind: "typing", room: "lobby", from: "x" });
    // The typing event comes after whatever a's publishes before it would have handed over.
    await seen.until("the typing event", (events) => events.some((e) => e.kind === "typing"));
    assert.deepEqual(seen.messages.map((m) => m.text), ["1", "2", "3"]);
  },
});

Deno.test({
  name:
    "conversations announced together are each handed over whole and in order; one whose announcement was missed is caught up from the positions",
  ignore: ignoreWithoutPostgres(),
  async fn() {
    await using instances = await twoInstances(1);
    const { a, seen, sql, stores: [store] } = instances;
    const texts = (n: number) =>
      seen.upTo(n).then((got) => got.map((m) => `${m.room ?? m.to}:${m.text}`));
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
  },
});

Deno.test({
  name:
    "an instance's first message in a conversation new to it comes after the others' just before it, even when their announcement is late",
  ignore: ignoreWithoutPostgres(),
  async fn() {
    await using instances = await twoInstances(2);
    const { a, b, seen, stores: [storeA, storeB] } = instances;
    // A room's first two messages here: a's is stored first but announced late; b's own
    // comes second. A member of b's who just joined (no cursor yet) takes whatever comes
    // first: if b handed over its own first, a's would never reach that member.
    const room = { room: "fresh", from: "x" };
    const one = (await storeA.append({ ...room, text: "1" })).message;
    const two = (await storeB.append({ ...room, text: "2" })).message;
    b.publish({ kind: "message", message: two });
    a.publish({ kind: "message", message: one });
    const got = await seen.upTo(2);
    assert.deepEqual(got.map((m) => m.text), ["1", "2"]);
  },
});

Deno.test({
  name:
    "after its LISTEN connection was refused for a second, an instance hears each event once again",
  ignore: ignoreWithoutPostgres(),
  async fn() {
    await using instances = await twoInstances(0, { pingMs: 100 });
    const { a, seen, sql } = instances;
    const typing = (from: string) => a.publish({ kind: "typing", room: "lobby", from });
    const heard = (from: string) =>
      seen.events.filter((e) => e.kind === "typing" && e.from === from).length;
    typing("before");
    await seen.until("the first event", () => heard("before") > 0);
    // New connections refused (pg_hba.conf), then the LISTEN session ended: postgres.js cannot
    // listen again, and the watchdog sees its pings go unanswered for a second (ten pings).
    const [{ hba_file }] = await sql`SHOW hba_file`;
    const hba = await Deno.readTextFile(hba_file);
    await Deno.writeTextFile(hba_file, "local all all reject\nhost all all all reject\n");
    await sql`SELECT pg_reload_conf()`;
    await sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query ILIKE 'listen %'`;
    await new Promise((r) => setTimeout(r, 1000));
    await Deno.writeTextFile(hba_file, hba);
    await sql`SELECT pg_reload_conf()`;
    // Events are best effort: those sent before the LISTEN is back are lost. Once one is heard,
    // one more, heard exactly once (a listener left over from a failed attempt would hear it too).
    for (let i = 0; heard(`again ${i - 1}`) === 0; i++) {
      typing(`again ${i}`);
      await seen.until("an event after the outage", () => heard(`again ${i}`) > 0, 200)
        .catch(() => {});
    }
    typing("after");
    await seen.until("the last event", () => heard("after") > 0);
    assert.equal(heard("after"), 1, JSON.stringify(seen.events.slice(-5)));
  },
});

Deno.test({
  name:
    "an instance closed while its catch-up keeps failing leaves no retry behind to query the database",
  ignore: ignoreWithoutPostgres(),
  async fn() {
    const { promise: failed, resolve } = Promise.withResolvers<string>();
    const log = (line: string) => line.includes("catch-up failed") && resolve(line);
    await using instances = await twoInstances(0, { pingMs: 100, log });
    const { sql } = instances;
    // Pings unheard (the LISTEN session ended, new connections refused) make the watchdog read
    // positions from the table, which fails, and is retried, for as long as the table is away.
    const [{ hba_file }] = await sql`SHOW hba_file`;
    const hba = await Deno.readTextFile(hba_file);
    await sql`ALTER TABLE chat_positions RENAME TO chat_positions_away`;
    await Deno.writeTextFile(hba_file, "local all all reject\nhost all all all reject\n");
    await sql`SELECT pg_reload_conf()`;
    await sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query ILIKE 'listen %'`;
    assert.match(await failed, /relation "chat_positions" does not exist/);
    // Connections allowed again, and the LISTEN session back (postgres.js's own retries done),
    // while the catch-up still fails.
    await Deno.writeTextFile(hba_file, hba);
    await sql`SELECT pg_reload_conf()`;
    for (const deadline = Date.now() + 5000;;) {
      const [{ n }] = await sql`
        SELECT count(*)::int AS n FROM pg_stat_activity WHERE query ILIKE 'listen %'`;
      if (n > 0) break;
      assert.ok(Date.now() < deadline, "the LISTEN session is back within 5 s");
      await new Promise((r) => setTimeout(r, 20));
    }
    // Closed now (on dispose), the instance must take its retry with it: the ops sanitizer fails
    // this test on a timer left behind.
  },
});
