/**
 * Everything that differs between the two SQL engines, in one place. The
 * schema and the queries (`schema.ts`, `store.ts`, `../accounts.ts`) are
 * written once in the SQL both engines speak, with `$1, $2, …` placeholders;
 * a {@linkcode SqlDatabase} runs them on SQLite (`sqlite.ts`) or PostgreSQL
 * (`postgres.ts`), and the few spots where the dialects part ask the
 * {@linkcode Dialect}.
 *
 * Where they agree (and what the queries rely on): `INSERT … ON CONFLICT …
 * DO UPDATE/NOTHING … RETURNING`, row values `(a, b) IN (VALUES …)`,
 * partial unique indexes, `BIGINT` columns read back as JavaScript numbers.
 *
 * @module
 */

import type { AppendInput, AppendOutcome } from "./append.ts";

/** A value bound to a placeholder or read from a column. */
export type SqlValue = string | number | null;

/** One row of a result, by column name. */
export type Row = Record<string, SqlValue>;

/** Something that runs one statement: the database itself or an open transaction. */
export interface Queryable {
  /** Runs one statement with `$n` placeholders and resolves with the rows it returns. */
  query<T = Row>(text: string, params?: readonly SqlValue[]): Promise<T[]>;
}

/** The differences between the engines. */
export interface Dialect {
  /** Which engine. */
  readonly name: "sqlite" | "postgres";
  /** The larger of two expressions (`max(a, b)` in SQLite, `GREATEST(a, b)` in PostgreSQL). */
  greatest(a: string, b: string): string;
  /** The smaller of two expressions. */
  least(a: string, b: string): string;
  /**
   * The `FROM` and the condition of a substring search of `messages m` for
   * the pattern in `param` (a LIKE pattern; `escaped`: with `\\` before a
   * literal `%`, `_` or `\\`): SQLite goes through its FTS5 trigram index
   * (which an ESCAPE clause turns off, so it comes only when needed),
   * PostgreSQL through `ILIKE` (pg_trgm's index). `tail`, where the index is
   * filled after the appends (SQLite), finds the messages not in it yet.
   */
  search(
    param: string,
    escaped: boolean,
  ): { from: string; where: string; tail?: { from: string; where: string } };
  /**
   * Whether `SqlStore` fills the search index itself, after the appends
   * (`indexSearch`): SQLite's FTS5 table, from migration 4 on.
   */
  readonly indexesSearchLater: boolean;
  /**
   * Statements that set up the connection once its schema is current (run
   * by `SqlStore.open` after the migrations, which may need what they turn off).
   */
  readonly afterMigrate: readonly string[];
  /** What locks the rows a `SELECT` reads until the transaction ends (`FOR UPDATE`; SQLite's one writer needs none). */
  readonly forUpdate: string;
  /**
   * A statement that, run first in a transaction, keeps a second instance
   * from migrating the schema at the same time (SQLite: `BEGIN IMMEDIATE`
   * does it already).
   */
  readonly schemaLock?: string;
  /** Whether an error is a unique-constraint violation (a concurrent insert of the same key won). */
  isUniqueViolation(error: unknown): boolean;
  /**
   * Whether a transaction that failed with this error ran nothing and can be
   * retried as it is: a deadlock or serialization failure, a busy database,
   * or a connection that could not be made.
   */
  isRetryable(error: unknown): boolean;
  /**
   * Whether the connection to the server was lost (a crash, a restart, the
   * network): a transaction cut off so may or may not have committed.
   */
  isConnectionLost(error: unknown): boolean;
}

/** A database connection (or pool) with transactions. */
export interface SqlDatabase extends Queryable {
  /** The engine's differences. */
  readonly dialect: Dialect;
  /** Where the data lives, for logs (no password). */
  readonly description: string;
  /**
   * Runs `fn` in one transaction: committed when it resolves, rolled back
   * when it rejects. Statements outside it never see its writes before the
   * commit.
   */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  /**
   * Runs the append transaction (`append.ts`) in one go and commits it,
   * where the engine can do that cheaper than statement by statement
   * (SQLite: one op of a batch instead of three batches). Without it,
   * `SqlStore` runs the rounds through {@linkcode transaction}.
   */
  append?(input: AppendInput): Promise<AppendOutcome>;
  /** Closes the connection(s), after the statements in flight. */
  close(): Promise<void>;
}

/** The newest `messages.rowid` in SQLite's search index (see `SqlStore.indexSearch`). */
const SEARCH_MARK = `(SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'search_indexed')`;

/** SQLite's dialect. */
export const SQLITE: Dialect = {
  name: "sqlite",
  greatest: (a, b) => `max(${a}, ${b})`,
  least: (a, b) => `min(${a}, ${b})`,
  forUpdate: "",
  search: (param, escaped) => {
    const like = `LIKE ${param}${escaped ? " ESCAPE '\\'" : ""}`;
    return {
      from: "messages_fts f JOIN messages m ON m.rowid = f.rowid",
      // A pattern of fewer than 3 characters scans the content table (the messages), not the
      // index: the mark keeps the two parts apart then too.
      where: `f.body ${like} AND m.rowid <= ${SEARCH_MARK}`,
      tail: { from: "messages m", where: `m.rowid > ${SEARCH_MARK} AND m.body ${like}` },
    };
  },
  indexesSearchLater: true,
  // SQLite copies the pages a statement or savepoint changes to a sub-journal, a temporary file
  // by default, created and deleted in every transaction: held in memory instead, a commit of 19
  // DMs cost its worker 1,407–1,426 µs of CPU against 1,749–1,854, and a new user's 305–310 µs
  // against 345–360 (`tools/store_path.ts`, then with the search index, which it kept by
  // mistake). After the migrations, not before: an index built on a large table sorts in
  // temporary storage too, and in memory that could be hundreds of MB.
  afterMigrate: [`PRAGMA temp_store = MEMORY`],
  isUniqueViolation: (error) => /UNIQUE constraint failed/i.test(String(error)),
  isRetryable: (error) => /database is locked|SQLITE_BUSY/i.test(String(error)),
  isConnectionLost: () => false,
};

/** SQLSTATEs and client codes after which a PostgreSQL transaction can simply run again. */
const PG_RETRYABLE = new Set([
  "40001", // serialization_failure
  "40P01", // deadlock_detected
  "57P03", // cannot_connect_now (starting up)
  "ECONNREFUSED",
  "CONNECT_TIMEOUT",
  // A pooled connection whose server went away: the write never reached a live server, so
  // nothing of the transaction can have committed.
  "EPIPE",
]);

/** SQLSTATEs and client codes of a connection that went away under a statement. */
const PG_CONNECTION_LOST = new Set([
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "ECONNRESET",
  "EPIPE",
  "57P01", // admin_shutdown
  "57P02", // crash_shutdown
]);

/** PostgreSQL's dialect. */
export const POSTGRES: Dialect = {
  name: "postgres",
  greatest: (a, b) => `GREATEST(${a}, ${b})`,
  least: (a, b) => `LEAST(${a}, ${b})`,
  forUpdate: " FOR UPDATE",
  indexesSearchLater: false,
  afterMigrate: [],
  search: (param, escaped) => ({
    from: "messages m",
    where: `m.body ILIKE ${param}${escaped ? " ESCAPE '\\'" : ""}`,
  }),
  // Any constant key: migrations of the chat schema take turns.
  schemaLock: "SELECT pg_advisory_xact_lock(7261636863)",
  isUniqueViolation: (error) => (error as { code?: string })?.code === "23505",
  isRetryable: (error) =>
    PG_RETRYABLE.has((error as { code?: string })?.code ?? "") ||
    /socket has been ended by the other party/.test(String(error)),
  isConnectionLost: (error) =>
    PG_CONNECTION_LOST.has((error as { code?: string })?.code ?? "") ||
    /socket has been ended by the other party/.test(String(error)),
};
