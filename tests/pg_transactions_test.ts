/**
 * A transaction on PostgreSQL holds its connection from BEGIN to COMMIT, and
 * no other query runs inside it, however many queries are in flight around
 * it: postgres.js 3.4.9 does not reserve the connection for a BEGIN that fills
 * its pipeline or meets backpressure, and can hand a connection back to its
 * pool in the middle of a transaction (see `TransactionConnections` in
 * lib/sql/postgres.ts).
 *
 * @module
 */

import assert from "node:assert/strict";
import { PostgresDatabase } from "../lib/sql/postgres.ts";
import { ignoreWithoutPostgres, startPostgres } from "./_pg.ts";

/** `fn` on a fresh cluster's database of `max` connections, with an empty table `t (k)`. */
async function withTable(max: number, fn: (db: PostgresDatabase) => Promise<void>): Promise<void> {
  await using pg = await startPostgres();
  const db = await PostgresDatabase.open(pg.url, { max });
  try {
    await db.query(`CREATE TABLE t (k int PRIMARY KEY)`);
    await fn(db);
  } finally {
    await db.close();
  }
}

Deno.test({
  name:
    "a transaction asked behind hundreds of queries in flight commits, and leaves no transaction open",
  ignore: ignoreWithoutPostgres(),
  fn: () =>
    withTable(2, async (db) => {
      await Promise.all([db.query(`SELECT 1`), db.query(`SELECT 2`)]); // connections open
      const failed: string[] = [];
      // When transactions shared the pool (two connections, postgres.js's default pipeline of 100
      // each), the transaction behind 200 or 201 queries was the one that filled a pipeline.
      for (let before = 190; before < 215; before++) {
        const asked: Promise<unknown>[] = [];
        for (let i = 0; i < before; i++) asked.push(db.query(`SELECT $1::int AS i`, [i]));
        // postgres.js hands a query to a connection a few microtasks after it is asked (and
        // writes it in a later turn): the transaction comes once they are in the pipelines.
        for (let i = 0; i < 5; i++) await Promise.resolve();
        asked.push(
          db.transaction((tx) => tx.query(`INSERT INTO t (k) VALUES ($1)`, [before]))
            .catch((error) => failed.push(`${before}: ${error}`)),
        );
        for (let i = 0; i < 10; i++) asked.push(db.query(`SELECT $1::int AS i`, [i]));
        await Promise.all(asked);
      }
      assert.deepEqual(failed, []);
      const [{ n }] = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM t`);
      assert.equal(n, 25);
      const open = await db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'`,
      );
      assert.equal(open[0].n, 0);
    }),
});

Deno.test({
  name:
    "transactions and other queries never share a connection, so no query runs inside another caller's transaction",
  ignore: ignoreWithoutPostgres(),
  fn: () =>
    withTable(4, async (db) => {
      const pid = `SELECT pg_backend_pid() AS pid, pg_current_xact_id_if_assigned()::text AS xid`;
      type Seen = { pid: number; xid: string | null };
      const inTransactions = new Set<number>();
      const outside: Seen[] = [];
      const asked: Promise<unknown>[] = [];
      for (let k = 0; k < 200; k++) {
        asked.push(db.transaction(async (tx) => {
          await tx.query(`INSERT INTO t (k) VALUES ($1)`, [k]);
          const [seen] = await tx.query<Seen>(pid);
          inTransactions.add(seen.pid);
        }));
        for (let i = 0; i < 5; i++) asked.push(db.query<Seen>(pid).then(([s]) => outside.push(s)));
      }
      await Promise.all(asked);
      // A query that ran inside another caller's transaction would see that transaction's id
      // (its INSERT assigned one), and would share the transaction's connection.
      assert.deepEqual(outside.filter((s) => s.xid !== null), []);
      assert.deepEqual(outside.filter((s) => inTransactions.has(s.pid)), []);
      const [{ n }] = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM t`);
      assert.equal(n, 200);
    }),
});
