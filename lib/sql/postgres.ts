/**
 * {@linkcode SqlDatabase} on PostgreSQL through `npm:postgres` (postgres.js
 * 3.4): a pool of connections, transactions on one of them.
 *
 * Why postgres.js and not `pg`: it has LISTEN built in (`sql.listen`), on a
 * dedicated connection that it re-establishes by itself after the server
 * restarts and re-issues `LISTEN` (with an `onlisten` callback to read
 * whatever was missed); `pg` gives a raw client whose `notification` events
 * stop when its connection drops, and re-connecting and re-listening is left
 * to the application (or to `pg-listen`, a third package). postgres.js also
 * reconnects pool connections lazily on the next query, has no native
 * dependencies, and runs under Deno as it is.
 *
 * `BIGINT` columns come back as JavaScript numbers (ids and millisecond times
 * stay far below 2^53).
 *
 * @module
 */

import postgres from "npm:postgres@^3.4.9";
import { LogOnce } from "../log.ts";
import { POSTGRES, type Queryable, type SqlDatabase, type SqlValue } from "./dialect.ts";

const log = new LogOnce();

/**
 * Whether an error is postgres.js writing to a connection that has just
 * closed under it: when PostgreSQL is killed, a write it had scheduled with
 * `setImmediate` (a `Sync` after the server's last `ErrorResponse`) can run
 * after the socket is gone, and throws `Cannot read properties of null
 * (reading 'write')` from the timer (`connection.js`, `nextWrite`), where
 * nothing can catch it. Seen in about one run in five of
 * `tests/pg_outage_test.ts`, at 228efa3 as after.
 */
function isClosedConnectionWrite(error: unknown): boolean {
  return error instanceof TypeError && /reading 'write'/.test(error.message) &&
    /postgres\/[^/]+\/src\/connection\.js/.test(error.stack ?? "");
}

/**
 * That error alone, uncaught, would end the process: every user of every
 * instance would lose their connection because PostgreSQL restarted. The
 * connection it concerns is gone either way (its queries have failed with
 * CONNECTION_CLOSED, and postgres.js connects again on the next query), so it
 * is logged and dropped; any other uncaught error is left alone.
 */
let guarded = false;
export function guardClosedConnectionWrites(): void {
  if (guarded) return;
  guarded = true;
  globalThis.addEventListener("error", (event) => {
    if (!isClosedConnectionWrite(event.error)) return;
    event.preventDefault();
    log.error("postgres.js wrote to a connection closed under it (dropped)", event.error);
  });
}

/**
 * Seconds one attempt to connect may take: well under the 5 s an append
 * batch keeps retrying (`SqlStore`), so that an attempt that hangs while
 * PostgreSQL restarts is followed by others within that budget. Every
 * postgres.js client of the server uses it.
 */
export const CONNECT_TIMEOUT_S = 2;

/**
 * How many queries postgres.js may pipeline on one connection: no limit. In
 * postgres.js 3.4.9, a transaction's `BEGIN` that is the query filling a
 * connection's pipeline (100 by default) is sent without the connection being
 * reserved for it (porsager/postgres#823, #1189). Transactions no longer share
 * connections with other queries ({@linkcode connectPostgres}), so that case
 * cannot arise any more; the limit stays off so that the pool behaves as it
 * did when `tests/pg_transactions_test.ts` showed the bug.
 */
export const MAX_PIPELINE = 1_000_000_000;

/**
 * A postgres.js client as every client of the server needs one: the guard
 * against its closed-connection writes, {@linkcode CONNECT_TIMEOUT_S},
 * {@linkcode MAX_PIPELINE}, notices dropped, and reconnects at most half a
 * second apart (postgres.js's default grows to 20 s, far longer than a
 * restart takes); `options` adds to or overrides these. With no URL, the
 * `PG*` variables say where.
 *
 * Its `begin` runs each transaction on a connection that takes no other
 * query ({@linkcode TransactionConnections}); half of `max` (at least one) are
 * kept for that, the rest pipeline every other query, so the client opens no
 * more than `max` connections (besides LISTEN's own) as before.
 *
 * Those transaction connections run with `enable_seqscan` off: every
 * transaction of the server reads and writes by key, yet on a new database
 * PostgreSQL planned such a lookup as a sequential scan (its choice without
 * statistics up to thousands of rows) and kept it as the prepared
 * statement's generic plan while the table grew (`tests/pg_plans_test.ts`:
 * 3,000 DMs scanned 223,500 rows of the messages). A table with no index for
 * a query is still scanned: the setting only prices scans out.
 */
export function connectPostgres(
  url: string | undefined,
  options: postgres.Options<Record<string, postgres.PostgresType>>,
): PostgresClient {
  guardClosedConnectionWrites();
  const config = {
    connect_timeout: CONNECT_TIMEOUT_S,
    max_pipeline: MAX_PIPELINE,
    onnotice: () => {},
    backoff: (retries: number) => Math.min(0.05 * 2 ** retries, 0.5),
    ...options,
  };
  const max = options.max ?? 10;
  const forTransactions = Math.max(1, Math.floor(max / 2));
  const open = (connections: number, extra: Partial<typeof config> = {}) =>
    (url === undefined
      ? postgres({ ...config, ...extra, max: connections })
      : postgres(url, { ...config, ...extra, max: connections })) as PostgresClient;
  const client = open(Math.max(1, max - forTransactions));
  const byKey = { connection: { ...config.connection, enable_seqscan: "off" } };
  const transactions = new TransactionConnections(() => open(1, byKey), forTransactions);
  const end = client.end;
  // The client stays postgres.js's own (tagged templates, `unsafe`, `listen`, `notify`), with
  // its `begin` and `end` replaced, so every caller of `sql.begin` is covered in one place.
  return Object.assign(client, {
    begin: transactions.begin,
    end: async (options?: { timeout?: number }) => {
      await Promise.all([end(options), transactions.end(options)]);
    },
  });
}

/**
 * Connections that each run one transaction at a time and nothing else: a
 * free list of postgres.js clients of one connection each, taken in turn.
 *
 * Why: postgres.js 3.4.9 reserves a pool connection for a transaction only
 * when the write of its `BEGIN` neither fills the connection's pipeline nor
 * meets backpressure, and a connection whose write met backpressure is
 * handed back to the pool when its socket drains, even in the middle of a
 * transaction (porsager/postgres#823, #1189; fixes proposed in #1207 and
 * #1218, not released). Either way, queries of other callers then run inside
 * that transaction: one transaction's `ROLLBACK` could undo another's writes
 * while that other's `COMMIT` succeeds with nothing left to commit. Here no
 * query but the transaction's own is ever sent on its connection, whatever
 * postgres.js does with its pool of one (and with `max: 1`, postgres.js does
 * not refuse a `BEGIN` it has not reserved for). Callers wait in order for a
 * free connection; postgres.js queued them in its pool before, unbounded too.
 */
export class TransactionConnections {
  #free: PostgresClient[];
  #all: PostgresClient[];
  #waiting: Array<(client: PostgresClient) => void> = [];

  /** `count` clients made by `open`, each of one connection (opened on first use). */
  constructor(open: () => PostgresClient, count: number) {
    this.#all = Array.from({ length: count }, open);
    this.#free = [...this.#all];
  }

  /** `sql.begin` on a connection of its own, with postgres.js's signature. */
  readonly begin =
    ((...args: unknown[]) =>
      this.#run((client) =>
        (client.begin as (...args: unknown[]) => Promise<unknown>)(...args)
      )) as PostgresClient["begin"];

  /** Ends every connection. */
  async end(options?: { timeout?: number }): Promise<void> {
    await Promise.all(this.#all.map((client) => client.end(options)));
  }

  async #run<T>(task: (client: PostgresClient) => Promise<T>): Promise<T> {
    // The one freed longest ago: a transaction run again after its connection was lost goes to
    // another connection, not to the one still reconnecting (taking the last one freed, a
    // PostgreSQL crash and restart under load outlasted the store's 5 s of retries in 2 of 12
    // runs of tests/pg_outage_test.ts, 4 at once; 0 of 24 this way).
    const client = this.#free.shift() ??
      await new Promise<PostgresClient>((resolve) => this.#waiting.push(resolve));
    try {
      return await task(client);
    } finally {
      // The connection passes straight to the next waiter, or is freed.
      const next = this.#waiting.shift();
      if (next) next(client);
      else this.#free.push(client);
    }
  }
}

/** Options of {@linkcode PostgresDatabase.open}. */
export interface PostgresOptions {
  /** The most connections (default 10): half for transactions, half for other queries. */
  max?: number;
  /** Seconds one attempt to connect may take (default {@linkcode CONNECT_TIMEOUT_S}). */
  connectTimeout?: number;
}

/** The postgres.js client type. */
export type PostgresClient = postgres.Sql;

/** A PostgreSQL database. */
export class PostgresDatabase implements SqlDatabase {
  readonly dialect = POSTGRES;
  readonly description: string;
  /** The postgres.js client, for LISTEN/NOTIFY (`client.listen`, `client.notify`). */
  readonly client: PostgresClient;

  private constructor(client: PostgresClient, description: string) {
    this.client = client;
    this.description = description;
  }

  /**
   * Connects to `url` (`postgres://user:password@host:port/db`), or with no
   * URL to what the standard `PG*` variables say (`PGHOST`, `PGPORT`,
   * `PGUSER`, `PGPASSWORD`, `PGDATABASE`). Fails when the server cannot be
   * reached.
   */
  static async open(
    url: string | undefined,
    options: PostgresOptions = {},
  ): Promise<PostgresDatabase> {
    const client = connectPostgres(url, {
      max: options.max ?? 10,
      connect_timeout: options.connectTimeout ?? CONNECT_TIMEOUT_S,
      // int8 (COUNT, BIGINT columns) as numbers, not strings.
      types: {
        bigint: {
          to: 20,
          from: [20],
          serialize: (x: number) => String(x),
          parse: (x: string) => Number(x),
        },
      },
    });
    const where = url === undefined ? "PostgreSQL (PG* environment)" : `PostgreSQL ${redact(url)}`;
    try {
      await client.unsafe("SELECT 1");
    } catch (error) {
      await client.end({ timeout: 1 }).catch(() => {});
      throw new Error(`cannot connect to ${where}: ${describeError(error)}`, { cause: error });
    }
    return new PostgresDatabase(client, where);
  }

  async query<T>(text: string, params: readonly SqlValue[] = []): Promise<T[]> {
    return [...await this.client.unsafe(text, params as SqlValue[], prepare(params))] as T[];
  }

  async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    return await this.client.begin(async (sql) => {
      return await fn({
        query: async <R>(text: string, params: readonly SqlValue[] = []) =>
          [...await sql.unsafe(text, params as SqlValue[], prepare(params))] as R[],
      });
    }) as T;
  }

  async close(): Promise<void> {
    await this.client.end({ timeout: 5 });
  }
}

/**
 * The most parameters of a statement that is prepared (kept by name on its
 * connection and then sent as Bind + Execute alone). postgres.js sends an
 * unprepared statement with parameters as Parse + Describe, waits for the
 * parameter types, then Bind + Execute: two round trips, and a parse and plan
 * on the server, every time. Every fixed statement is prepared; of the
 * multi-row ones (whose text grows with the batch), only the small batches,
 * so that each connection keeps a bounded number of statements (postgres.js
 * forgets them when it reconnects, at the latest after its `max_lifetime`).
 */
const MAX_PREPARED_PARAMS = 128;

function prepare(params: readonly SqlValue[]): { prepare: boolean } {
  return { prepare: params.length > 0 && params.length <= MAX_PREPARED_PARAMS };
}

/** A connection URL with its password masked. */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "(unparsable URL)";
  }
}

function describeError(error: unknown): string {
  const e = error as { code?: string; message?: string };
  return e?.message || e?.code || String(error);
}
