/**
 * On a new PostgreSQL database the tables start empty, and PostgreSQL may
 * plan a lookup by key as a sequential scan (its choice up to thousands of
 * rows without statistics) and keep that plan as a prepared statement's
 * generic plan while the table grows: an append must stay an index lookup
 * however its statements are planned (see `SqlStore`'s append transaction).
 *
 * @module
 */

import assert from "node:assert/strict";
import postgres from "npm:postgres@^3.4.9";
import { type Frame, TestClient } from "./_client.ts";
import { ignoreWithoutPostgres, startPostgres } from "./_pg.ts";
import { spawnServer } from "./_server.ts";

/**
 * Every sender sends bob one DM with a client id, all at once, `rounds` times, each round once
 * the one before is acknowledged: appends come in batches of about as many as there are
 * senders, so the same prepared statements run again and again.
 */
async function rounds(senders: TestClient[], prefix: string, rounds: number): Promise<void> {
  for (let r = 1; r <= rounds; r++) {
    await Promise.all(senders.map(async (s, i) => {
      const cid = `${prefix}-${r}-${i}`;
      s.send({ type: "send", to: "bob", text: `${prefix} ${r}`, cid });
      await s.next((f: Frame) => f.type === "message" && f.cid === cid);
    }));
  }
}

Deno.test({
  name:
    "on a new PostgreSQL database, appends never scan the stored messages, however many there are",
  ignore: ignoreWithoutPostgres(),
  async fn() {
    await using pg = await startPostgres();
    const admin = postgres(pg.url, { max: 1, onnotice: () => {} });
    try {
      {
        await using srv = await spawnServer({ data: pg.url });
        const [bob] = await TestClient.join(srv.origin, "bob");
        const senders = await Promise.all(
          Array.from(
            { length: 20 },
            async (_, i) => (await TestClient.join(srv.origin, `s${i}`))[0],
          ),
        );
        await rounds(senders, "dm", 150);
        await Promise.all([bob, ...senders].map((c) => c.close()));
      }
      // A backend's counters reach pg_stat_user_tables when it exits at the latest: wait for
      // the server's to be gone.
      for (;;) {
        const [{ n }] = await admin`
          SELECT count(*)::int AS n FROM pg_stat_activity
          WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`;
        if (n === 0) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      const [row] = await admin`
        SELECT seq_tup_read FROM pg_stat_user_tables
        WHERE relname = 'messages' AND schemaname = current_schema()`;
      const read = Number(row.seq_tup_read);
      assert.ok(read < 3000, `3,000 appends scanned ${read} rows of the stored messages`);
    } finally {
      await admin.end();
    }
  },
});
