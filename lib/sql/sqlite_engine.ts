/**
 * One SQLite connection (`node:sqlite`) and the ops that `sqlite.ts` batches
 * for it: statements named by number, transactions by number, and the append
 * transaction of `append.ts` run whole, from `BEGIN IMMEDIATE` to `COMMIT`.
 *
 * Statements are named by a number the caller gives each text; the text comes
 * only the first time and is prepared once. A transaction's statements carry
 * its number: one that is not open (its BEGIN failed, or SQLite rolled it back
 * after an error) refuses them rather than run them outside it, and a failed
 * COMMIT rolls back here, in the same op, so that nothing queued behind it in
 * the batch can run inside the broken transaction.
 *
 * @module
 */

import { DatabaseSync, type StatementSync } from "node:sqlite";
import { type AppendInput, appendRounds } from "./append.ts";
import { SQLITE, type SqlValue } from "./dialect.ts";

/**
 * What each op of a batch does: a statement, or a transaction's begin and
 * end, or forgetting every prepared statement.
 */
export const Op = {
  query: 0,
  begin: 1,
  commit: 2,
  rollback: 3,
  reset: 4,
  /** `SAVEPOINT`, `RELEASE` and `ROLLBACK TO` of one transaction of a group. */
  savepoint: 5,
  release: 6,
  rollbackTo: 7,
  /** The append transaction of `append.ts`, begun and committed in one op. */
  append: 8,
} as const;
/** One of {@linkcode Op}. */
export type OpKind = typeof Op[keyof typeof Op];
/**
 * One op of a batch: its kind, its transaction's number (0: none), its
 * statement's number, the statement's text the first time it is sent (then
 * `null`), and its parameters (for `append`, its input alone).
 */
export type BatchOp = [
  OpKind,
  number,
  number,
  string | null,
  readonly SqlValue[] | readonly [AppendInput],
];
/** An op's answer: its rows, or why it failed. */
export type OpResult = unknown[] | { e: string };

/**
 * PostgreSQL's `$n` placeholders in SQLite's syntax: plain `?` when they run
 * `$1, $2, …` in order, as most statements do (node:sqlite binds numbered
 * `?NNN` parameters about 20 times slower: 265 against 15 µs a row in a
 * 500-row INSERT), and `?n` where a statement reuses one. Run once per
 * statement text (the connection keeps it prepared).
 */
export function toSqlite(text: string): string {
  const numbers = [...text.matchAll(/\$(\d+)/g)].map((m) => Number(m[1]));
  const inOrder = numbers.every((n, i) => n === i + 1);
  return text.replace(/\$(\d+)/g, inOrder ? "?" : "?$1");
}

/** The most append statements kept prepared; beyond it they are all forgotten. */
const MAX_BY_TEXT = 1024;

/** A statement that only reads: it never needs a sync of the log before its answer. */
const READS_ONLY = /^\s*SELECT\b/i;

/** Whether SQLite refused for a lock another connection holds (SQLITE_BUSY). */
function isBusy(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const code = (error as { errcode?: number }).errcode;
  // `exec` throws without the code; its message is SQLite's own.
  return code !== undefined ? (code & 0xff) === 5 : error.message === "database is locked";
}

/** Whether an op that met a busy lock did nothing, and may simply be run again. */
function retryable([kind, tx]: BatchOp): boolean {
  return kind === Op.begin || kind === Op.append || (kind === Op.query && tx === 0);
}

/** A SQLite connection running batches of {@linkcode BatchOp}s, in order. */
export class SqliteEngine {
  #db: DatabaseSync;
  /** Statement texts by number, and the prepared statements (prepared at first use). */
  #texts = new Map<number, string>();
  #statements = new Map<number, StatementSync>();
  /** Which of them only read. */
  #readers = new Set<number>();
  /** The append transaction's statements, prepared by their text (`$n` placeholders). */
  #byText = new Map<string, StatementSync>();
  /** The transaction open now (0: none). */
  #open = 0;
  /** Whether anything was written since {@linkcode takeWritten} last asked. */
  #written = false;

  private constructor(db: DatabaseSync) {
    this.#db = db;
  }

  /** Opens `path` (a file, or `:memory:`) and runs `pragmas`: the engine, and their rows. */
  static open(path: string, pragmas: string[]): { engine: SqliteEngine; rows: unknown[][] } {
    const db = new DatabaseSync(path);
    try {
      return { engine: new SqliteEngine(db), rows: pragmas.map((p) => db.prepare(p).all()) };
    } catch (error) {
      db.close();
      throw error;
    }
  }

  /**
   * Whether a write may have happened since the last call: what the caller
   * must sync before it answers (a read alone needs no sync).
   */
  takeWritten(): boolean {
    const written = this.#written;
    this.#written = false;
    return written;
  }

  /**
   * Runs a batch's ops in order, one answer each; or stops at the first that
   * could not take SQLite's lock because another connection holds it (its
   * BEGIN, or a statement of its own that writes): that op ran not at all, and
   * it and those after it are the caller's to ask again. The connection never
   * waits for the lock itself (`busy_timeout` 0): on the event loop, a wait
   * would stall every user, and a holder in this same process forever.
   */
  batch(ops: readonly BatchOp[]): { results: OpResult[]; busy: boolean } {
    const results: OpResult[] = [];
    for (const op of ops) {
      try {
        results.push(this.#run(op));
      } catch (error) {
        if (isBusy(error) && retryable(op)) return { results, busy: true };
        results.push({ e: error instanceof Error ? error.message : String(error) });
      }
    }
    return { results, busy: false };
  }

  close(): void {
    this.#texts.clear();
    this.#statements.clear();
    this.#byText.clear();
    this.#db.close();
  }

  #prepared(text: string): StatementSync {
    let found = this.#byText.get(text);
    if (!found) {
      // Its texts differ only by their row counts, of which there are at most a few hundred.
      if (this.#byText.size >= MAX_BY_TEXT) this.#byText.clear();
      found = this.#db.prepare(toSqlite(text));
      this.#byText.set(text, found);
    }
    return found;
  }

  /**
   * Runs the append transaction of `append.ts`, from BEGIN to COMMIT; its
   * outcome, as a row. First without reading what is stored under the
   * batch's client ids; if the unique index refuses one (a resend), rolled
   * back and run again with them read, to answer those with what was stored.
   */
  #append(input: AppendInput): unknown[] {
    if (this.#open !== 0) throw new Error("a transaction is already open");
    try {
      return this.#appendOnce(input, true);
    } catch (error) {
      if (!isStoredCid(error)) throw error;
    }
    return this.#appendOnce(input, false);
  }

  #appendOnce(input: AppendInput, optimistic: boolean): unknown[] {
    const db = this.#db;
    db.exec("BEGIN IMMEDIATE");
    this.#written = true;
    try {
      const rounds = appendRounds(input, SQLITE, { optimistic });
      let step = rounds.next();
      while (!step.done) {
        const rows = step.value.map((s) => this.#prepared(s.text).all(...s.params));
        step = rounds.next(rows);
      }
      db.exec("COMMIT");
      // The probe is for a connection lost during COMMIT, which this one never is.
      const { ids, newPairs } = step.value;
      return [{ ids, newPairs }];
    } catch (error) {
      if (db.isTransaction) db.exec("ROLLBACK");
      throw error;
    }
  }

  #statement(id: number): StatementSync {
    let prepared = this.#statements.get(id);
    if (!prepared) {
      const text = this.#texts.get(id);
      if (text === undefined) throw new Error(`statement ${id} is unknown to the connection`);
      prepared = this.#db.prepare(text);
      this.#statements.set(id, prepared);
      if (READS_ONLY.test(text)) this.#readers.add(id);
    }
    return prepared;
  }

  #run([kind, tx, id, sql, params]: BatchOp): unknown[] {
    const db = this.#db;
    switch (kind) {
      case Op.query: {
        if (sql !== null) this.#texts.set(id, sql);
        if (tx !== this.#open) {
          throw new Error(
            tx === 0
              ? "a statement outside the open transaction"
              : "the transaction is not open (it failed to begin, or was rolled back)",
          );
        }
        if (tx !== 0 && !db.isTransaction) {
          // SQLite rolled it back after an error (a full disk, say): nothing more may run as
          // part of it, or it would run on its own and commit.
          this.#open = 0;
          throw new Error("the transaction was rolled back by SQLite after an error");
        }
        const statement = this.#statement(id);
        // On its own, a statement that writes commits: what it wrote must be synced.
        if (tx === 0 && !this.#readers.has(id)) this.#written = true;
        return statement.all(...params as SqlValue[]);
      }
      case Op.begin:
        if (this.#open !== 0) throw new Error("a transaction is already open");
        db.exec("BEGIN IMMEDIATE");
        this.#open = tx;
        return [];
      case Op.commit:
        if (this.#open !== tx || !db.isTransaction) {
          if (this.#open === tx) this.#open = 0;
          throw new Error("the transaction is not open (it failed to begin, or was rolled back)");
        }
        this.#open = 0;
        this.#written = true;
        try {
          db.exec("COMMIT");
        } catch (error) {
          if (db.isTransaction) db.exec("ROLLBACK");
          throw error;
        }
        return [];
      case Op.rollback:
        if (this.#open === tx) {
          this.#open = 0;
          if (db.isTransaction) db.exec("ROLLBACK");
        }
        return [];
      case Op.savepoint:
      case Op.release:
      case Op.rollbackTo: {
        if (this.#open !== tx || !db.isTransaction) {
          throw new Error("the transaction is not open (it failed to begin, or was rolled back)");
        }
        const name = `t${Math.trunc(Number(params[0]))}`;
        if (kind === Op.savepoint) db.exec(`SAVEPOINT ${name}`);
        else if (kind === Op.release) db.exec(`RELEASE ${name}`);
        else db.exec(`ROLLBACK TO ${name}; RELEASE ${name}`);
        return [];
      }
      case Op.append:
        return this.#append(params[0] as AppendInput);
      case Op.reset:
        this.#texts.clear();
        this.#statements.clear();
        this.#readers.clear();
        return [];
      default:
        throw new Error(`unknown op ${kind}`);
    }
  }
}

/**
 * Whether `error` is SQLite refusing a message whose `(cid, sender)` is
 * stored already (`SQLITE_CONSTRAINT_UNIQUE` on `messages_by_cid`): what an
 * optimistic append meets at a resend.
 */
function isStoredCid(error: unknown): boolean {
  return error instanceof Error && (error as { errcode?: number }).errcode === 2067 &&
    error.message.includes("messages.cid");
}
