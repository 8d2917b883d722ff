/**
 * The worker that owns a SQLite connection, so that statements, and above
 * all the fsync of a `synchronous=FULL` commit, run off the server's event
 * loop (measured: p99 stall 35–39 ms on the loop against ~5 ms, the idle
 * baseline, with the commits here). `sqlite.ts` talks to it; one request at a
 * time, answered in order.
 *
 * Requests: `{ id, open: path, pragmas }`, `{ id, sql, params }` (all rows),
 * `{ id, exec }` (no rows), `{ id, close: true }`. Answers: `{ id, rows }` or
 * `{ id, error }`.
 *
 * @module
 */

import { DatabaseSync, type StatementSync } from "node:sqlite";

type Request =
  | { id: number; open: string; pragmas: string[] }
  | { id: number; sql: string; params: Array<string | number | null> }
  | { id: number; exec: string }
  | { id: number; close: true };

let db: DatabaseSync | undefined;
const statements = new Map<string, StatementSync>();

function handle(request: Request): unknown {
  if ("open" in request) {
    db = new DatabaseSync(request.open);
    try {
      return request.pragmas.map((p) => db!.prepare(p).all());
    } catch (error) {
      db.close();
      db = undefined;
      throw error;
    }
  }
  if (!db) throw new Error("the database is not open");
  if ("close" in request) {
    statements.clear();
    db.close();
    db = undefined;
    return [];
  }
  if ("exec" in request) {
    if (request.exec === "ROLLBACK" && !db.isTransaction) return [];
    db.exec(request.exec);
    return [];
  }
  let statement = statements.get(request.sql);
  if (!statement) {
    statement = db.prepare(request.sql);
    statements.set(request.sql, statement);
  }
  return statement.all(...request.params);
}

// deno-lint-ignore no-explicit-any
const scope = self as any;
scope.onmessage = (event: MessageEvent<Request>) => {
  const { id } = event.data;
  try {
    scope.postMessage({ id, rows: handle(event.data) });
  } catch (error) {
    scope.postMessage({ id, error: error instanceof Error ? error.message : String(error) });
  }
};
