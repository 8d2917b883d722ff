/**
 * The worker that owns a SQLite connection, so that statements, and above
 * all the fsync of a `synchronous=FULL` commit, run off the server's event
 * loop (measured: p99 stall 35–39 ms on the loop against ~5 ms, the idle
 * baseline, with the commits here). `sqlite.ts` talks to it.
 *
 * Two kinds of message:
 * - `{ open: path, pragmas }` answered `{ rows: [pragma results] }` or
 *   `{ error }`, and `{ close: true }` answered `{ rows: [] }`;
 * - a batch: a JSON string of `[kind, tx, statement, sql, params]` ops, run
 *   in order, answered with a JSON string of one result per op, its rows (an
 *   array) or `{ e: message }`. One message each way for everything the
 *   server asked in one turn of its event loop: a `postMessage` costs far
 *   more than a statement (about 60 µs of CPU a round trip on one core
 *   against 3–10 µs for a statement), and JSON text is the cheapest thing to
 *   clone (a structured clone of many small objects costs twice as much).
 *
 * Statements are named by a number the main thread gives each text; the
 * text travels only the first time and is prepared once. A transaction's
 * statements carry its number: one that is not open (its BEGIN failed, or
 * SQLite rolled it back after an error) refuses them rather than run them
 * outside it, and a failed COMMIT rolls back here, in the same op, so that
 * nothing queued behind it in the batch can run inside the broken
 * transaction.
 *
 * @module
 */

import { DatabaseSync, type StatementSync } from "node:sqlite";
import { type AppendInput, appendRounds } from "./append.ts";
import { SQLITE, type SqlValue } from "./dialect.ts";
import { type BatchOp, Op, toSqlite } from "./sqlite.ts";

type Request =
  | { open: string; pragmas: string[] }
  | { close: true };

let db: DatabaseSync | undefined;
/** Statement texts by number, and the prepared statements (prepared at first use). */
const texts = new Map<number, string>();
const statements = new Map<number, StatementSync>();
/** The transaction open now (0: none). */
let open = 0;

/** The append transaction's statements, prepared by their text (`$n` placeholders). */
const byText = new Map<string, StatementSync>();
/** The most of them kept prepared; beyond it they are all forgotten. */
const MAX_BY_TEXT = 1024;

function prepared(text: string): StatementSync {
  let found = byText.get(text);
  if (!found) {
    // Its texts differ only by their row counts, of which there are at most a few hundred.
    if (byText.size >= MAX_BY_TEXT) byText.clear();
    found = db!.prepare(toSqlite(text));
    byText.set(text, found);
  }
  return found;
}

/** Runs the append transaction of `append.ts`, from BEGIN to COMMIT; its outcome, as a row. */
function append(input: AppendInput): unknown[] {
  if (open !== 0) throw new Error("a transaction is already open");
  db!.exec("BEGIN IMMEDIATE");
  try {
    const rounds = appendRounds(input, SQLITE);
    let step = rounds.next();
    while (!step.done) {
      const rows = step.value.map((s) => prepared(s.text).all(...s.params));
      step = rounds.next(rows);
    }
    db!.exec("COMMIT");
    // The probe is for a connection lost during COMMIT, which a worker's never is.
    const { ids, newPairs } = step.value;
    return [{ ids, newPairs }];
  } catch (error) {
    if (db!.isTransaction) db!.exec("ROLLBACK");
    throw error;
  }
}

function statement(id: number): StatementSync {
  let prepared = statements.get(id);
  if (!prepared) {
    const text = texts.get(id);
    if (text === undefined) throw new Error(`statement ${id} is unknown to the worker`);
    prepared = db!.prepare(text);
    statements.set(id, prepared);
  }
  return prepared;
}

function run([kind, tx, id, sql, params]: BatchOp): unknown[] {
  if (!db) throw new Error("the database is not open");
  switch (kind) {
    case Op.query:
      if (sql !== null) texts.set(id, sql);
      if (tx !== open) {
        throw new Error(
          tx === 0
            ? "a statement outside the open transaction"
            : "the transaction is not open (it failed to begin, or was rolled back)",
        );
      }
      if (tx !== 0 && !db.isTransaction) {
        // SQLite rolled it back after an error (a full disk, say): nothing more may run as
        // part of it, or it would run on its own and commit.
        open = 0;
        throw new Error("the transaction was rolled back by SQLite after an error");
      }
      return statement(id).all(...params as SqlValue[]);
    case Op.begin:
      if (open !== 0) throw new Error("a transaction is already open");
      db.exec("BEGIN IMMEDIATE");
      open = tx;
      return [];
    case Op.commit:
      if (open !== tx || !db.isTransaction) {
        if (open === tx) open = 0;
        throw new Error("the transaction is not open (it failed to begin, or was rolled back)");
      }
      open = 0;
      try {
        db.exec("COMMIT");
      } catch (error) {
        if (db.isTransaction) db.exec("ROLLBACK");
        throw error;
      }
      return [];
    case Op.rollback:
      if (open === tx) {
        open = 0;
        if (db.isTransaction) db.exec("ROLLBACK");
      }
      return [];
    case Op.savepoint:
    case Op.release:
    case Op.rollbackTo: {
      if (open !== tx || !db.isTransaction) {
        throw new Error("the transaction is not open (it failed to begin, or was rolled back)");
      }
      const name = `t${Math.trunc(Number(params[0]))}`;
      if (kind === Op.savepoint) db.exec(`SAVEPOINT ${name}`);
      else if (kind === Op.release) db.exec(`RELEASE ${name}`);
      else db.exec(`ROLLBACK TO ${name}; RELEASE ${name}`);
      return [];
    }
    case Op.append:
      return append(params[0] as AppendInput);
    case Op.reset:
      texts.clear();
      statements.clear();
      return [];
    default:
      throw new Error(`unknown op ${kind}`);
  }
}

function batch(text: string): string {
  const ops = JSON.parse(text) as BatchOp[];
  const results: unknown[] = [];
  for (const op of ops) {
    try {
      results.push(run(op));
    } catch (error) {
      results.push({ e: error instanceof Error ? error.message : String(error) });
    }
  }
  return JSON.stringify(results);
}

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
  texts.clear();
  statements.clear();
  byText.clear();
  db.close();
  db = undefined;
  return [];
}

// deno-lint-ignore no-explicit-any
const scope = self as any;
scope.onmessage = (event: MessageEvent<string | Request>) => {
  if (typeof event.data === "string") {
    scope.postMessage(batch(event.data));
    return;
  }
  try {
    scope.postMessage({ rows: handle(event.data) });
  } catch (error) {
    scope.postMessage({ error: error instanceof Error ? error.message : String(error) });
  }
};
