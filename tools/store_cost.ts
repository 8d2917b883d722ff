/**
 * What a message costs the store, measured on this machine (short, bounded):
 *
 * 1. append µs/message at batch sizes 1, 10, 100, 500 on SQLite
 *    (`synchronous=FULL` and `NORMAL`) and PostgreSQL (a throwaway cluster
 *    from tests/_pg.ts, fsync on): `batch` appends issued at once, so group
 *    commit puts them in one transaction;
 * 2. how long SQLite commits hold the event loop: a probe timer's lateness
 *    while 20 senders append, p50/p99/max: node:sqlite group commits on the
 *    main thread, the same in a Worker, and the SqlStore as shipped.
 *
 * `deno run -A tools/store_cost.ts` (about 30 s).
 *
 * @module
 */

import { DatabaseSync } from "node:sqlite";
import { openStore } from "../lib/sql/open.ts";
import type { SqlStore } from "../lib/sql/store.ts";
import { startPostgres } from "../tests/_pg.ts";

const BATCHES = [1, 10, 100, 500];
const MESSAGES = 5000;

async function appendCost(store: SqlStore, batch: number): Promise<number> {
  const rounds = Math.max(5, Math.floor((batch === 1 ? 1000 : MESSAGES) / batch));
  let n = 0;
  const started = performance.now();
  for (let r = 0; r < rounds; r++) {
    await Promise.all(Array.from({ length: batch }, (_, i) =>
      store.append({
        room: `room${i % 10}`,
        from: `user${i % 50}`,
        text: `message ${r}/${i} with some ordinary length of text`,
        cid: `c${batch}-${r}-${i}`,
      })));
    n += batch;
  }
  return (performance.now() - started) * 1000 / n;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

/** Lateness of a 1 ms probe timer while `work` runs. */
async function stalls(work: () => Promise<void>): Promise<string> {
  const lags: number[] = [];
  let running = true;
  const probe = (async () => {
    while (running) {
      const t = performance.now();
      await new Promise((r) => setTimeout(r, 1));
      lags.push(performance.now() - t - 1);
    }
  })();
  await work();
  running = false;
  await probe;
  lags.sort((a, b) => a - b);
  return `p50 ${percentile(lags, 0.5).toFixed(2)} ms, p99 ${
    percentile(lags, 0.99).toFixed(2)
  } ms, max ${lags[lags.length - 1].toFixed(2)} ms (${lags.length} probes)`;
}

/** 20 senders, each appending 100 messages one after another. */
async function senders(append: (i: number, j: number) => Promise<unknown>): Promise<void> {
  await Promise.all(Array.from({ length: 20 }, async (_, i) => {
    for (let j = 0; j < 100; j++) await append(i, j);
  }));
}

const WORKER = `
import { DatabaseSync } from "node:sqlite";
let db, insert;
self.onmessage = (e) => {
  if (e.data.open) {
    db = new DatabaseSync(e.data.open);
    db.exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE IF NOT EXISTS m (conv TEXT, id INTEGER, body TEXT, PRIMARY KEY (conv, id))");
    insert = db.prepare("INSERT INTO m VALUES (?, ?, ?)");
    return self.postMessage({ ok: true });
  }
  db.exec("BEGIN IMMEDIATE");
  for (const [conv, id, body] of e.data.rows) insert.run(conv, id, body);
  db.exec("COMMIT");
  self.postMessage({ n: e.data.rows.length });
};`;

const dir = await Deno.makeTempDir({ prefix: "chat-store-cost-" });
try {
  console.log("append µs/message by batch size (messages appended at once):");
  for (
    const [name, open] of [
      // Without the search index, as the server runs by default (`--search-index off`).
      ["SQLite synchronous=FULL", () => openStore(`${dir}/full.db`, { searchIndex: false })],
      [
        "SQLite synchronous=NORMAL",
        () => openStore(`${dir}/normal.db`, { sqliteSynchronous: "normal", searchIndex: false }),
      ],
    ] as const
  ) {
    await using store = await open();
    const row = [];
    for (const b of BATCHES) row.push(`${b}: ${(await appendCost(store, b)).toFixed(1)}`);
    console.log(`  ${name.padEnd(28)} ${row.join("  ")}`);
  }
  {
    await using pg = await startPostgres({ fsync: true });
    await using store = await openStore(pg.url);
    const row = [];
    for (const b of BATCHES) row.push(`${b}: ${(await appendCost(store, b)).toFixed(1)}`);
    console.log(`  ${"PostgreSQL 15 (fsync on)".padEnd(28)} ${row.join("  ")}`);
  }

  console.log("event-loop stall while 20 senders append 2000 messages to SQLite (FULL):");
  /** Group commit as the store does it: what queues while one commit is in flight goes next. */
  const groupCommit = (commit: (rows: Array<[string, number, string]>) => Promise<void>) => {
    let queue: Array<{ row: [string, number, string]; done: () => void }> = [];
    let flushing: Promise<void> | undefined;
    const ids = new Map<string, number>();
    const drain = async () => {
      await new Promise((r) => setTimeout(r, 0));
      while (queue.length > 0) {
        const batch = queue;
        queue = [];
        await commit(batch.map((p) => p.row));
        for (const p of batch) p.done();
      }
      flushing = undefined;
    };
    return (i: number, j: number) =>
      new Promise<void>((done) => {
        const conv = `r${i % 4}`;
        const id = (ids.get(conv) ?? 0) + 1;
        ids.set(conv, id);
        queue.push({ row: [conv, id, `m${j}`], done });
        flushing ??= drain();
      });
  };
  {
    const db = new DatabaseSync(`${dir}/inline.db`);
    db.exec(
      "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE m (conv TEXT, id INTEGER, body TEXT, PRIMARY KEY (conv, id))",
    );
    const insert = db.prepare("INSERT INTO m VALUES (?, ?, ?)");
    const line = await stalls(() =>
      senders(groupCommit((rows) => {
        db.exec("BEGIN IMMEDIATE");
        for (const [conv, id, body] of rows) insert.run(conv, id, body);
        db.exec("COMMIT");
        return Promise.resolve();
      }))
    );
    db.close();
    console.log(`  node:sqlite commits on the event loop: ${line}`);
  }
  {
    const url = URL.createObjectURL(new Blob([WORKER], { type: "application/javascript" }));
    const worker = new Worker(url, { type: "module" });
    const replies: Array<() => void> = [];
    worker.onmessage = () => replies.shift()?.();
    const call = (data: unknown) =>
      new Promise<void>((resolve) => {
        replies.push(resolve);
        worker.postMessage(data);
      });
    await call({ open: `${dir}/worker.db` });
    const line = await stalls(() => senders(groupCommit((rows) => call({ rows }))));
    console.log(`  node:sqlite commits in a Worker:       ${line}`);
    worker.terminate();
    URL.revokeObjectURL(url);
  }
  {
    await using store = await openStore(`${dir}/stall.db`);
    const line = await stalls(() =>
      senders((i, j) => store.append({ room: `r${i % 4}`, from: `u${i}`, text: `m${j}` }))
    );
    console.log(`  SqlStore as shipped (worker):          ${line}`);
  }
  // The probe alone, for the baseline.
  console.log(
    `  idle baseline:                         ${await stalls(() =>
      new Promise((r) => setTimeout(r, 500))
    )}`,
  );
} finally {
  await Deno.remove(dir, { recursive: true });
}
