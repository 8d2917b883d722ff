/**
 * Everything asked of the SQLite connection in one turn of the event loop runs
 * there as one batch, answered once its log is synced (`lib/sql/sqlite.ts`).
 * None of that may show: each statement gets its own rows or its own error,
 * a statement outside a transaction never sees the transaction's writes
 * before its commit nor becomes part of it, and a transaction that could not
 * begin writes nothing, even what it asks once the lock is free.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { openStore } from "../lib/sql/open.ts";
import { SqliteDatabase } from "../lib/sql/sqlite.ts";
import { dmKey, roomKey } from "../lib/store.ts";

/** Rows as plain data (node:sqlite's rows have no prototype), compared with `expected`. */
function assertRows(actual: unknown, expected: unknown): void {
  assert.deepEqual(JSON.parse(JSON.stringify(actual)), expected);
}

/** A database file in a fresh temporary folder, removed with it. */
async function tempFile(): Promise<{ path: string } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "chat-sqlite-" });
  return {
    path: join(dir, "chat.db"),
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

/** A promise and the function that settles it, for a step a test decides when to take. */
function gate(): { opened: Promise<void>; open(): void } {
  let open = () => {};
  const opened = new Promise<void>((resolve) => open = resolve);
  return { opened, open };
}

/**
 * Opens a transaction on `holder` that has written (so holds SQLite's write
 * lock) and stays open until `hold` opens; `holding` is its outcome.
 */
async function holdLock(
  holder: SqliteDatabase,
): Promise<{ hold: { open(): void }; holding: Promise<void> }> {
  const hold = gate();
  const locked = gate();
  const holding = holder.transaction(async (tx) => {
    await tx.query(`INSERT INTO t (k, v) VALUES ('holder', 1)`);
    locked.open();
    await hold.opened;
  });
  await locked.opened;
  return { hold, holding };
}

async function withTable(path: string, options = {}): Promise<SqliteDatabase> {
  const db = await SqliteDatabase.open(path, options);
  await db.query(`CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)`);
  return db;
}

Deno.test("statements asked together get each their own rows, and a failing one fails alone", async () => {
  await using file = await tempFile();
  const db = await withTable(file.path);
  try {
    await db.query(`INSERT INTO t (k, v) VALUES ($1, $2), ($3, $4)`, ["a", 1, "b", 2]);
    const [a, bad, both, reused] = await Promise.allSettled([
      db.query<{ v: number }>(`SELECT v FROM t WHERE k = $1`, ["a"]),
      db.query(`INSERT INTO t (k, v) VALUES ($1, $2)`, ["a", 3]),
      db.query<{ k: string }>(`SELECT k FROM t ORDER BY k`),
      // A placeholder used twice (numbered `?n` in SQLite).
      db.query<{ n: number }>(`SELECT COUNT(*) AS n FROM t WHERE k = $1 OR v = $2 OR k = $1`, [
        "b",
        1,
      ]),
    ]);
    assertRows(a, { status: "fulfilled", value: [{ v: 1 }] });
    assert.equal(bad.status, "rejected");
    assert.match(String((bad as PromiseRejectedResult).reason), /UNIQUE constraint failed/);
    assertRows(both, { status: "fulfilled", value: [{ k: "a" }, { k: "b" }] });
    assertRows(reused, { status: "fulfilled", value: [{ n: 2 }] });
  } finally {
    await db.close();
  }
});

Deno.test("a statement outside a transaction waits for its commit, and never sees a rolled-back write", async () => {
  await using file = await tempFile();
  const db = await withTable(file.path);
  const bystander = await SqliteDatabase.open(file.path);
  try {
    const hold = gate();
    const committed = db.transaction(async (tx) => {
      await tx.query(`INSERT INTO t (k, v) VALUES ('kept', 1)`);
      await hold.opened;
      await tx.query(`UPDATE t SET v = 2 WHERE k = 'kept'`);
    });
    // Asked while the transaction is open: answered after its commit, so with v = 2 (the same
    // connection would see v = 1 in the middle of the transaction).
    const seen = db.query<{ v: number }>(`SELECT v FROM t`);
    // A round trip through another connection's worker: time for a wrong answer to arrive.
    assertRows(await bystander.query(`SELECT v FROM t`), []);
    hold.open();
    assertRows(await seen, [{ v: 2 }]);
    await committed;

    const failing = db.transaction(async (tx) => {
      await tx.query(`INSERT INTO t (k, v) VALUES ('dropped', 3)`);
      throw new Error("changed my mind");
    });
    const after = db.query<{ k: string }>(`SELECT k FROM t ORDER BY k`);
    await assert.rejects(failing, /changed my mind/);
    assertRows(await after, [{ k: "kept" }]);
  } finally {
    await bystander.close();
    await db.close();
  }
});

Deno.test("a transaction that could not begin writes nothing, even once the lock is free", async () => {
  await using file = await tempFile();
  const holder = await withTable(file.path);
  const other = await withTable(file.path, { busyTimeoutMs: 50 });
  try {
    const { hold, holding } = await holdLock(holder);
    const free = gate();
    const refused = other.transaction(async (tx) => {
      // Its BEGIN is on its way with this statement, and fails after the busy timeout ...
      await tx.query(`SELECT COUNT(*) AS n FROM t`).catch(() => {});
      // ... and this one is asked only once the other process's transaction is over.
      await free.opened;
      await tx.query(`INSERT INTO t (k, v) VALUES ('other', 2)`);
    });
    // It fails (after the busy timeout) without waiting for its function to finish.
    const failed = await refused.then(() => undefined, (error) => error);
    assert.match(String(failed), /database is locked/);
    hold.open();
    await holding;
    free.open();
    assertRows(await other.query(`SELECT k FROM t ORDER BY k`), [{ k: "holder" }]);
  } finally {
    await other.close();
    await holder.close();
  }
});

Deno.test("a transaction waiting for another connection's lock leaves the event loop free, and goes once the lock is", async () => {
  await using file = await tempFile();
  const holder = await withTable(file.path);
  const other = await withTable(file.path);
  try {
    const { hold, holding } = await holdLock(holder);
    const waiting = other.transaction(async (tx) => {
      await tx.query(`INSERT INTO t (k, v) VALUES ('other', 2)`);
    });
    // The holder ends its transaction on a timer while the other waits for the lock: a wait
    // for the lock on this thread would hold the timer back until it gave up.
    const ticks = { n: 0 };
    const timer = setInterval(() => {
      if (++ticks.n === 5) hold.open();
    }, 5);
    try {
      await holding;
      await waiting;
    } finally {
      clearInterval(timer);
    }
    assertRows(await other.query(`SELECT k FROM t ORDER BY k`), [{ k: "holder" }, { k: "other" }]);
  } finally {
    await other.close();
    await holder.close();
  }
});

Deno.test("closing answers what was asked before, and refuses what comes after", async () => {
  await using file = await tempFile();
  const db = await withTable(file.path);
  const asked = db.query(`INSERT INTO t (k, v) VALUES ('last', 1) RETURNING k`);
  const closed = db.close();
  await assert.rejects(db.query(`SELECT 1`), /closed/);
  assertRows(await asked, [{ k: "last" }]);
  await closed;
  const again = await SqliteDatabase.open(file.path);
  try {
    assertRows(await again.query(`SELECT k FROM t`), [{ k: "last" }]);
  } finally {
    await again.close();
  }
});

Deno.test("transactions asked together each keep their own outcome: one that fails alone is rolled back", async () => {
  await using file = await tempFile();
  const db = await withTable(file.path);
  try {
    // Asked in one turn, so they run one after the other in one SQLite transaction.
    const outcomes = await Promise.allSettled(
      ["a", "b", "a", "c"].map((k, i) =>
        db.transaction(async (tx) => {
          await tx.query(`INSERT INTO t (k, v) VALUES ($1, $2)`, [`${k}-note-${i}`, i]);
          // The second "a" fails here, after its first write: that write goes with it.
          await tx.query(`INSERT INTO t (k, v) VALUES ($1, $2)`, [k, i]);
          return k;
        })
      ),
    );
    assert.deepEqual(outcomes.map((o) => o.status), [
      "fulfilled",
      "fulfilled",
      "rejected",
      "fulfilled",
    ]);
    assert.match(String((outcomes[2] as PromiseRejectedResult).reason), /UNIQUE constraint/);
    assertRows(
      await db.query(`SELECT k, v FROM t ORDER BY k`),
      [
        { k: "a", v: 0 },
        { k: "a-note-0", v: 0 },
        { k: "b", v: 1 },
        { k: "b-note-1", v: 1 },
        { k: "c", v: 3 },
        { k: "c-note-3", v: 3 },
      ],
    );
  } finally {
    await db.close();
  }
});

Deno.test("the store fills SQLite's search index in the background only when asked to", async () => {
  for (const searchIndex of [true, false]) {
    await using file = await tempFile();
    const store = await openStore(file.path, { searchIndex });
    // More than a batch of the index (100): the store indexes them without being asked.
    await Promise.all(
      Array.from(
        { length: 600 },
        (_, i) => store.append({ room: "dev", from: "alice", text: `m${i}` }),
      ),
    );
    // Closing waits for an index run under way.
    await store.close();
    const db = new DatabaseSync(file.path);
    try {
      const mark = db.prepare(`SELECT value FROM meta WHERE key = 'search_indexed'`).get() as {
        value: string;
      };
      const indexed = db.prepare(`SELECT COUNT(*) AS n FROM messages_fts_docsize`).get() as {
        n: number;
      };
      if (searchIndex) {
        assert.ok(Number(mark.value) >= 100, `mark ${mark.value}`);
        assert.equal(indexed.n, Number(mark.value));
      } else {
        assert.deepEqual([mark.value, indexed.n], ["0", 0]);
      }
    } finally {
      db.close();
    }
  }
});

Deno.test("the log starts over while appends never stop, so it stays within tens of megabytes", async () => {
  await using file = await tempFile();
  // SQLite's own checkpoint point, so that the messages start the log over several times.
  const store = await openStore(file.path, { searchIndex: false, sqliteWalPages: 1000 });
  try {
    // 64 senders, each with its next message asked as soon as the last is stored: the store
    // never stops writing, and checkpoints that run beside it never catch up by themselves.
    const body = "x".repeat(200);
    let sent = 0;
    // The log's file is as large as the log ever was (SQLite reuses it from its start).
    let largest = 0;
    await Promise.all(Array.from({ length: 64 }, async (_, k) => {
      while (sent < 60_000) {
        sent++;
        await store.append({ room: `r${k % 20}`, from: `u${k}`, text: body });
        if (k === 0) largest = Math.max(largest, (await Deno.stat(`${file.path}-wal`)).size);
      }
    }));
    // 30,000 messages of 200 bytes took ~9,000 pages of log here (35–69 MB) when it never
    // started over, so 60,000 twice that; it starts over past 1,000 pages (4 MB), with what
    // was written until the next checkpoint (at most 200 ms later) on top: 23 MB seen.
    const mb = (largest / 1048576).toFixed(1);
    assert.ok(largest > 0 && largest < 40 * 1048576, `the log reached ${mb} MB`);
  } finally {
    await store.close();
  }
});

Deno.test("the store keeps SQLite's sub-journals in memory, but only once the schema is migrated", async () => {
  await using file = await tempFile();
  const tempStore = async (db: SqliteDatabase) =>
    Number((await db.query<{ temp_store: number }>(`PRAGMA temp_store`))[0].temp_store);
  const bare = await SqliteDatabase.open(file.path);
  try {
    // 0: SQLite's default, temporary files (where a migration's index build may sort).
    assert.equal(await tempStore(bare), 0);
  } finally {
    await bare.close();
  }
  const store = await openStore(file.path);
  try {
    assert.equal(await tempStore(store.db as SqliteDatabase), 2, "2: in memory");
  } finally {
    await store.close();
  }
});

Deno.test("an append refused by SQLite stores nothing of its batch, and the next append goes on from where the last one stopped", async () => {
  await using file = await tempFile();
  const store = await openStore(file.path);
  try {
    // The worker runs an append whole, BEGIN to COMMIT: an error in its middle must roll it
    // back there, or its first writes would join the next append's transaction.
    await store.db.query(`CREATE TRIGGER refuse BEFORE INSERT ON messages
      WHEN new.body = 'poison' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END`);
    const first = await store.append({ to: "bob", from: "alice", text: "before", cid: "c1" });
    // Asked in one turn: one batch, one transaction.
    const refused = await Promise.allSettled([
      store.append({ to: "bob", from: "alice", text: "with the poison", cid: "c2" }),
      store.append({ room: "lobby", from: "carol", text: "poison" }),
    ]);
    assert.deepEqual(refused.map((r) => r.status), ["rejected", "rejected"]);
    assert.match(String((refused[0] as PromiseRejectedResult).reason), /refused by the test/);
    const after = await store.append({ to: "bob", from: "alice", text: "after", cid: "c2" });
    assert.deepEqual([first.message.id, after.message.id, after.duplicate], [1, 2, false]);
    const page = await store.history(dmKey("alice", "bob"), { limit: 10 });
    assert.deepEqual(page.messages.map((m) => m.text), ["before", "after"]);
    const lobby = await store.history(roomKey("lobby"), { limit: 10 });
    assert.deepEqual(lobby.messages, []);
    const marks = await store.db.query(`SELECT name FROM reads WHERE name = 'carol'`);
    assert.deepEqual(marks, []);
  } finally {
    await store.close();
  }
});
