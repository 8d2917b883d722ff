/**
 * The schema is migrated on start: a database left at an older version by an
 * earlier release gains the new steps with its data intact, and one from a
 * newer release is refused rather than misread.
 */

import assert from "node:assert/strict";
import type { SqlDatabase } from "../lib/sql/dialect.ts";
import { openDatabase, parseData } from "../lib/sql/open.ts";
import { MIGRATIONS, SCHEMA_VERSION } from "../lib/sql/schema.ts";
import { SqlStore } from "../lib/sql/store.ts";
import { roomKey } from "../lib/store.ts";
import { ignoreWithoutPostgres, startPostgres } from "./_pg.ts";

const here = { onDeploy: false, env: () => undefined, explicit: true };

/** A database as release 1 left it: schema version 1 and two messages, one with a client id. */
async function versionOne(db: SqlDatabase): Promise<void> {
  await db.transaction(async (tx) => {
    await tx.query(
      `CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied BIGINT NOT NULL)`,
    );
    for (const statement of MIGRATIONS[0].statements(db.dialect)) await tx.query(statement);
    await tx.query(`INSERT INTO schema_version (version, applied) VALUES (1, 0)`);
    await tx.query(
      `INSERT INTO messages (conv, id, sender, room, recipient, body, ts, cid)
       VALUES ('r/lobby', 1, 'alice', 'lobby', NULL, '明天发布新版本', 1, NULL),
              ('r/lobby', 2, 'alice', 'lobby', NULL, 'sent with an id', 2, 'c1')`,
    );
    await tx.query(`INSERT INTO heads (conv, last_id) VALUES ('r/lobby', 2)`);
  });
}

async function upgradeAndRefuse(data: string): Promise<void> {
  const old = await openDatabase(parseData(data, here));
  await versionOne(old);
  const store = await SqlStore.open(old);
  try {
    const [{ v }] = await store.db.query<{ v: number }>(
      `SELECT MAX(version) AS v FROM schema_version`,
    );
    assert.equal(Number(v), SCHEMA_VERSION);
    assert.deepEqual((await store.search([roomKey("lobby")], "发布新", 5)).map((m) => m.id), [1]);
    // A re-send of the old message with its client id is still the same message (the index of
    // client ids was rebuilt by migration 5); the same id from someone else is theirs.
    const again = await store.append({
      room: "lobby",
      from: "alice",
      text: "sent with an id",
      cid: "c1",
    });
    assert.deepEqual([again.duplicate, again.message.id], [true, 2]);
    const next = await store.append({ room: "lobby", from: "bob", text: "新的", cid: "c1" });
    assert.deepEqual([next.duplicate, next.message.id], [false, 3]);
    await store.db.query(`INSERT INTO schema_version (version, applied) VALUES (99, 0)`);
  } finally {
    await store.close();
  }
  const newer = await openDatabase(parseData(data, here));
  try {
    await assert.rejects(SqlStore.open(newer), /schema version 99, newer than this server's/);
  } finally {
    await newer.close();
  }
}

Deno.test("a SQLite file at schema version 1 is migrated on start with its messages, and a newer one refused", async () => {
  const dir = await Deno.makeTempDir({ prefix: "chat-schema-" });
  try {
    await upgradeAndRefuse(`${dir}/chat.db`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name:
    "a PostgreSQL database at schema version 1 is migrated on start with its messages, and a newer one refused",
  ignore: ignoreWithoutPostgres(),
  fn: async () => {
    await using pg = await startPostgres();
    await upgradeAndRefuse(pg.url);
  },
});
