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
 * reserved for it (porsager/postgres#823, #1189): the transaction fails with
 * `UNSAFE_TRANSACTION`, and its connection goes back to the pool with a
 * transaction open on the server, inside which unrelated queries then run.
 * With 2 connections and 200 or 201 queries asked at once before a
 * transaction, it happened every time (`tests/pg_pipeline_test.ts`). Without
 * the limit there is no such query. The pool still opens its connections
 * before it pipelines onto busy ones.
 */
export const MAX_PIPELINE = 1_000_000_000;

/**
 * A postgres.js client as every client of the server needs one: the guard
 * against its closed-connection writes, {@linkcode CONNECT_TIMEOUT_S},
 * {@linkcode MAX_PIPELINE}, notices dropped, and reconnects at most half a
 * second apart (postgres.js's default grows to 20 s, far longer than a
 * restart takes); `options` adds to or overrides these. With no URL, the
 * `PG*` variables say where.
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
  return (url === undefined ? postgres(config) : postgres(url, config)) as PostgresClient;
}

/** Options of {@linkcode PostgresDatabase.open}. */
export interface PostgresOptions {
  /** The most connections in the pool (default 10). */
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
