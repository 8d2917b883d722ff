/**
 * The worker that checkpoints SQLite's write-ahead log, on a connection of
 * its own, so that the copy of the log into the database file and its two
 * syncs (the log before, the file after) never run on the server's event
 * loop, where `sqlite.ts` keeps the connection that writes: a checkpoint of
 * a thousand pages held a commit there for 2–6 ms.
 *
 * Messages: `{ open: path }`, then `"checkpoint"` as often as asked (a
 * `PASSIVE` checkpoint: it copies what it can without waiting for anyone,
 * and never holds the writer), then `{ close: true }`. A checkpoint is
 * answered with `{ log }` (the log's frames when it began; -1 when another
 * checkpoint ran meanwhile), the others with `{}`, a failure with `{ error }`.
 *
 * @module
 */

import { DatabaseSync } from "node:sqlite";

let db: DatabaseSync | undefined;

function handle(request: string | { open?: string; close?: true }): unknown {
  if (typeof request === "string") {
    if (!db) throw new Error("the database is not open");
    const [row] = db.prepare("PRAGMA wal_checkpoint(PASSIVE)").all() as Array<{ log: number }>;
    return { log: Number(row.log) };
  }
  if (request.open !== undefined) {
    db = new DatabaseSync(request.open);
    // NORMAL: the log is synced before the copy and the file after it.
    db.exec("PRAGMA synchronous = NORMAL");
    return {};
  }
  db?.close();
  db = undefined;
  return {};
}

// deno-lint-ignore no-explicit-any
const scope = self as any;
scope.onmessage = (event: MessageEvent<string | { open?: string; close?: true }>) => {
  try {
    scope.postMessage(handle(event.data));
  } catch (error) {
    scope.postMessage({ error: error instanceof Error ? error.message : String(error) });
  }
};
