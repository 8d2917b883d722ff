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
 * `node:sqlite` is synchronous, and a `synchronous=FULL` commit waits for an
 * fsync: on the event loop that stalled every other user (p99 35–39 ms with
 * 20 senders, `tools/store_cost.ts`). So the connection lives in a worker
 * (`sqlite_worker.ts`) and the loop only posts statements to it; group commit
 * keeps it to one fsync per batch.
 *
 * @module
 */

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

/** Statements already translated: the regular expressions ran on every query (6% of a DM profile). */
const translated = new Map<string, string>();

/**
 * PostgreSQL's `$n` placeholders in SQLite's syntax: plain `?` when they run
 * `$1, $2, …` in order, as most statements do (node:sqlite binds numbered
 * `?NNN` parameters about 20 times slower: 265 against 15 µs a row in a
 * 500-row INSERT), and `?n` where a statement reuses one.
 */
export function toSqlite(text: string): string {
  const cached = translated.get(text);
  if (cached !== undefined) return cached;
  const numbers = [...text.matchAll(/\$(\d+)/g)].map((m) => Number(m[1]));
  const inOrder = numbers.every((n, i) => n === i + 1);
  const sql = text.replace(/\$(\d+)/g, inOrder ? "?" : "?$1");
  // The statements are the program's own (a batch's differ only by their row count), so
  // the cache stays small; the bound is for safety.
  if (translated.size >= 1024) translated.clear();
  translated.set(text, sql);
  return sql;
}

/** A SQLite database file (or `:memory:`), its connection held by a worker. */
export class SqliteDatabase implements SqlDatabase {
  readonly dialect = SQLITE;
  readonly description: string;
  #worker: Worker;
  #next = 1;
  #waiting = new Map<number, { resolve(rows: unknown[]): void; reject(error: Error): void }>();
  #turn: Promise<unknown> = Promise.resolve();
  #closed = false;
  /** Why the worker is gone, once it is: every later statement fails at once instead of hanging. */
  #broken: Error | undefined;

  private constructor(worker: Worker, description: string) {
    this.#worker = worker;
    this.description = description;
    worker.onmessage = (e: MessageEvent<{ id: number; rows?: unknown[]; error?: string }>) => {
      const waiter = this.#waiting.get(e.data.id);
      this.#waiting.delete(e.data.id);
      if (e.data.error !== undefined) waiter?.reject(new Error(e.data.error));
      else waiter?.resolve(e.data.rows ?? []);
    };
    worker.onerror = (e) => {
      e.preventDefault();
      const error = new Error(`the SQLite worker failed: ${e.message}`);
      this.#broken = error;
      for (const waiter of this.#waiting.values()) waiter.reject(error);
      this.#waiting.clear();
    };
  }

  /** Opens (creating if needed) a database file, or `:memory:`. */
  static async open(path: string, options: SqliteOptions = {}): Promise<SqliteDatabase> {
    const worker = new Worker(new URL("./sqlite_worker.ts", import.meta.url), { type: "module" });
    const db = new SqliteDatabase(
      worker,
      path === ":memory:" ? "SQLite in memory" : `SQLite ${path}`,
    );
    const pragmas = [
      `PRAGMA busy_timeout = ${Math.trunc(options.busyTimeoutMs ?? 5000)}`,
      ...(path === ":memory:" ? [] : ["PRAGMA journal_mode = WAL"]),
      `PRAGMA synchronous = ${options.synchronous === "normal" ? "NORMAL" : "FULL"}`,
    ];
    try {
      const answers = await db.#send({ open: path, pragmas }) as Array<
        Array<Record<string, string>>
      >;
      if (path !== ":memory:" && answers[1]?.[0]?.journal_mode !== "wal") {
        throw new Error(`${path}: cannot use WAL mode`);
      }
    } catch (error) {
      worker.terminate();
      throw error;
    }
    return db;
  }

  #send<T>(request: Record<string, unknown>): Promise<T[]> {
    if (this.#broken) return Promise.reject(this.#broken);
    const id = this.#next++;
    return new Promise<T[]>((resolve, reject) => {
      this.#waiting.set(id, { resolve: resolve as (rows: unknown[]) => void, reject });
      this.#worker.postMessage({ id, ...request });
    });
  }

  #run<T>(text: string, params: readonly SqlValue[]): Promise<T[]> {
    return this.#send<T>({ sql: toSqlite(text), params });
  }

  /** Waits for the connection's turn, then runs `fn` (nothing else runs on it meanwhile). */
  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
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
      await this.#send({ exec: "BEGIN IMMEDIATE" });
      try {
        const result = await fn({
          query: <R>(text: string, params: readonly SqlValue[] = []) => this.#run<R>(text, params),
        });
        await this.#send({ exec: "COMMIT" });
        return result;
      } catch (error) {
        await this.#send({ exec: "ROLLBACK" }).catch(() => {});
        throw error;
      }
    });
  }

  async close(): Promise<void> {
    await this.#exclusive(async () => {
      this.#closed = true;
      await this.#send({ close: true }).catch(() => {});
      this.#worker.terminate();
    }).catch(() => {});
  }
}
