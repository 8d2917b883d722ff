/**
 * {@linkcode SqlDatabase} on SQLite through `node:sqlite` (built into Deno:
 * no flag, works in the compiled binary).
 *
 * - WAL journal: readers never block the writer, a crash never corrupts.
 * - `synchronous=FULL` by default: every commit is fsync'ed to the WAL before
 *   it is acknowledged, so an acknowledged message survives a SIGKILL, an OS
 *   crash and power loss. `NORMAL` (`--sqlite-synchronous normal`) still
 *   survives a SIGKILL of the server (the WAL is in the OS cache) but may lose
 *   the last commits on power loss or an OS crash; it never corrupts the file.
 * - `busy_timeout`: another process holding the write lock is waited for (up
 *   to 5 s) rather than failing at once.
 * - One connection per process, so one writer; every statement takes turns
 *   on it, and a transaction holds it from `BEGIN IMMEDIATE` to `COMMIT`, so no
 *   other statement sees its writes before they are committed.
 *
 * `node:sqlite` is synchronous: a statement runs on the event loop. A commit
 * holds it for about one fsync (measured in the README); group commit keeps
 * that to one per batch.
 *
 * @module
 */

import { DatabaseSync, type StatementSync } from "node:sqlite";
import { type Queryable, type SqlDatabase, SQLITE, type SqlValue } from "./dialect.ts";

/** How SQLite syncs commits to disk. */
export type SqliteSynchronous = "full" | "normal";

/** Options of {@linkcode SqliteDatabase.open}. */
export interface SqliteOptions {
  /** `full` (default): survive power loss; `normal`: survive a crash of the process only. */
  synchronous?: SqliteSynchronous;
  /** How long to wait for another process's write lock, in milliseconds (default 5000). */
  busyTimeoutMs?: number;
}

/** A SQLite database file (or `:memory:`). */
export class SqliteDatabase implements SqlDatabase {
  readonly dialect = SQLITE;
  readonly description: string;
  #db: DatabaseSync;
  #statements = new Map<string, StatementSync>();
  #turn: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(db: DatabaseSync, description: string) {
    this.#db = db;
    this.description = description;
  }

  /** Opens (creating if needed) a database file, or `:memory:`. */
  static open(path: string, options: SqliteOptions = {}): SqliteDatabase {
    const db = new DatabaseSync(path);
    try {
      db.exec(`PRAGMA busy_timeout = ${Math.trunc(options.busyTimeoutMs ?? 5000)}`);
      if (path !== ":memory:") {
        const [mode] = db.prepare("PRAGMA journal_mode = WAL").all() as Array<
          { journal_mode: string }
        >;
        if (mode?.journal_mode !== "wal") throw new Error(`${path}: cannot use WAL mode`);
      }
      db.exec(`PRAGMA synchronous = ${options.synchronous === "normal" ? "NORMAL" : "FULL"}`);
      db.exec("PRAGMA foreign_keys = ON");
    } catch (error) {
      db.close();
      throw error;
    }
    return new SqliteDatabase(db, path === ":memory:" ? "SQLite in memory" : `SQLite ${path}`);
  }

  #run<T>(text: string, params: readonly SqlValue[]): T[] {
    let statement = this.#statements.get(text);
    if (!statement) {
      // `$n` (PostgreSQL's placeholders) are `?n` in SQLite.
      statement = this.#db.prepare(text.replace(/\$(\d+)/g, "?$1"));
      this.#statements.set(text, statement);
    }
    return statement.all(...params) as T[];
  }

  /** Waits for the connection's turn, then runs `fn` (nothing else runs on it meanwhile). */
  #exclusive<T>(fn: () => T | Promise<T>): Promise<T> {
    const result = this.#turn.then(() => {
      if (this.#closed) throw new Error("the database is closed");
      return fn();
    });
    this.#turn = result.catch(() => {});
    return result;
  }

  query<T>(text: string, params: readonly SqlValue[] = []): Promise<T[]> {
    return this.#exclusive(() => this.#run<T>(text, params));
  }

  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    return this.#exclusive(async () => {
      this.#db.exec("BEGIN IMMEDIATE");
      try {
        const result = await fn({
          query: <R>(text: string, params: readonly SqlValue[] = []) =>
            Promise.resolve(this.#run<R>(text, params)),
        });
        this.#db.exec("COMMIT");
        return result;
      } catch (error) {
        if (this.#db.isTransaction) this.#db.exec("ROLLBACK");
        throw error;
      }
    });
  }

  async close(): Promise<void> {
    await this.#exclusive(() => {
      this.#closed = true;
      this.#statements.clear();
      this.#db.close();
    }).catch(() => {});
  }
}
