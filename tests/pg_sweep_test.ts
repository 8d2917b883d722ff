/**
 * An instance's heartbeat sweeps what no one needs any more, on the
 * PostgreSQL every instance shares, while the others keep working on the
 * same tables: a sweep must never make them fail.
 *
 * @module
 */

import assert from "node:assert/strict";
import postgres from "npm:postgres@^3.4.9";
import { PgInstance } from "../lib/pg_instance.ts";
import { ignoreWithoutPostgres, startPostgres } from "./_pg.ts";
import { within } from "./_server.ts";

/** A budget's `tat` (ms) far ahead: not spent, so no sweep takes it afterwards. */
const LATER = Date.UTC(2100, 0, 1);

Deno.test({
  name:
    "sweeping spent send budgets never deadlocks with a budget being taken for the same users meanwhile",
  ignore: ignoreWithoutPostgres(),
  fn: async () => {
    await using pg = await startPostgres();
    // PostgreSQL looks for deadlocks after this long waiting for a lock (default 1 s).
    const options = { onnotice: () => {}, connection: { deadlock_timeout: "100ms" } };
    const sql = postgres(pg.url, { ...options, max: 2 });
    const sender = postgres(pg.url, { ...options, max: 1 });
    const watcher = postgres(pg.url, { ...options, max: 1 });
    const logged: string[] = [];
    const error = console.error;
    console.error = (...args: unknown[]) => void logged.push(args.map(String).join(" "));
    let instance: PgInstance | undefined;
    try {
      // An instance whose heartbeat sweeps every 50 ms.
      instance = await PgInstance.start(sql, { ttlMs: 200 });
      // Two budgets spent in 300 ms, b's row stored before a's: a DELETE scanning the table
      // meets b first.
      const soon = sql`extract(epoch from clock_timestamp()) * 1000 + 300`;
      await sql`INSERT INTO chat_send_budget ("user", tat, granted) VALUES ('b', ${soon}, 1)`;
      await sql`INSERT INTO chat_send_budget ("user", tat, granted) VALUES ('a', ${soon}, 1)`;
      // Another instance takes a's and b's budgets, locking their rows in name order (as
      // `PgUserLimits` does); between the two, once they are spent, this instance sweeps.
      await sender.begin(async (tx) => {
        await tx`UPDATE chat_send_budget SET tat = ${LATER} WHERE "user" = 'a'`;
        // Until the sweep is done (b gone: it skipped a), or stuck waiting for a's lock.
        await within(
          10_000,
          "a sweep",
          (async () => {
            for (;;) {
              const [row] = await watcher`
              SELECT NOT EXISTS (SELECT 1 FROM chat_send_budget WHERE "user" = 'b') AS swept,
                EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock') AS stuck`;
              if (row.swept || row.stuck) return;
              await new Promise((r) => setTimeout(r, 10));
            }
          })(),
        );
        await tx`
          INSERT INTO chat_send_budget ("user", tat, granted) VALUES ('b', ${LATER}, 1)
          ON CONFLICT ("user") DO UPDATE SET tat = ${LATER}`;
      });
      // The budgets taken are there, and the heartbeat never failed.
      const rows = await sql`SELECT "user", tat FROM chat_send_budget ORDER BY "user"`;
      assert.deepEqual(rows.map((r) => [r.user, Number(r.tat)]), [["a", LATER], ["b", LATER]]);
      assert.deepEqual(logged.filter((line) => /heartbeat/.test(line)), []);
    } finally {
      console.error = error;
      await instance?.close();
      await Promise.all([sql.end(), sender.end(), watcher.end()]);
    }
  },
});
