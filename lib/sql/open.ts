/**
 * From a `--data` value to an open store: which engine, where, and a clear
 * refusal for anything it cannot use.
 *
 * - a file path (default `./data/chat.db`): SQLite, the folder created if needed
 * - `:memory:`: SQLite in memory, nothing kept
 * - `postgres://…` / `postgresql://…`: PostgreSQL
 * - on Deno Deploy (`DENO_DEPLOYMENT_ID` set) with no `postgres://` given:
 *   `DATABASE_URL`, else the `PG*` variables Deploy injects; with none of them,
 *   an error (Deploy has no disk to keep a SQLite file on)
 * - a Deno KV file (`*.kv`, or a file that holds Deno KV's tables): an error
 *   that says how to migrate it
 *
 * @module
 */

import { existsSync, mkdirSync, statSync } from "node:fs";
import { dirname } from "node:path";
import { DatabaseSync } from "node:sqlite";
import type { SqlDatabase } from "./dialect.ts";
import { PostgresDatabase } from "./postgres.ts";
import { SqliteDatabase, type SqliteSynchronous } from "./sqlite.ts";
import { SqlStore, type SqlStoreOptions } from "./store.ts";

/** Where `--data` says the data lives. */
export type DataTarget =
  | { kind: "sqlite"; path: string }
  | { kind: "postgres"; url?: string };

/** The `PG*` variables that, on Deno Deploy, name a database. */
export const PG_ENV = ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"] as const;

/** Raised for a `--data` value the server cannot use; its message says what to do. */
export class DataError extends Error {
  override name = "DataError";
}

/** The command that converts an old Deno KV file. */
export function migrateHint(kvPath: string): string {
  const to = kvPath.replace(/\.kv$/, "") + ".db";
  return `${kvPath} is a Deno KV file from an earlier version; convert it once with\n` +
    `  deno task migrate --from ${kvPath} --to ${to === kvPath ? `${kvPath}.db` : to}\n` +
    `and start with --data ${to === kvPath ? `${kvPath}.db` : to}`;
}

/**
 * Decides where the data lives. `onDeploy` and `env` describe the platform;
 * throws {@linkcode DataError} for a value it cannot use.
 */
export function parseData(
  data: string,
  options: { onDeploy: boolean; env: (name: string) => string | undefined; explicit: boolean },
): DataTarget {
  if (/^postgres(ql)?:\/\//i.test(data)) {
    try {
      new URL(data);
    } catch {
      throw new DataError(`--data ${data}: not a valid PostgreSQL URL`);
    }
    return { kind: "postgres", url: data };
  }
  if (options.onDeploy) {
    const url = options.env("DATABASE_URL");
    if (url) return { kind: "postgres", url };
    if (PG_ENV.some((name) => options.env(name))) return { kind: "postgres" };
    throw new DataError(
      "on Deno Deploy the chat keeps its data in PostgreSQL, and none is assigned: " +
        "provision or link a PostgreSQL database to this app (Deploy then sets DATABASE_URL or PG*), " +
        "or pass --data postgres://…",
    );
  }
  if (data === ":memory:") return { kind: "sqlite", path: data };
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(data)) {
    throw new DataError(
      `--data ${data}: unknown kind of database; use a file path, :memory: or postgres://…`,
    );
  }
  if (/\.kv$/i.test(data)) throw new DataError(migrateHint(data));
  if (existsSync(data) && statSync(data).isDirectory()) {
    throw new DataError(`--data ${data} is a folder; give a file path such as ${data}/chat.db`);
  }
  // Started with the default on a machine that ran an earlier version: its data is in chat.kv.
  if (!options.explicit && !existsSync(data)) {
    const old = data.replace(/\.db$/, ".kv");
    if (old !== data && existsSync(old)) throw new DataError(migrateHint(old));
  }
  return { kind: "sqlite", path: data };
}

/** Whether a SQLite file holds Deno KV's tables rather than the chat's. */
function isDenoKvFile(path: string): boolean {
  if (path === ":memory:" || !existsSync(path)) return false;
  const db = new DatabaseSync(path, { readOnly: true });
  try {
    const rows = db.prepare(
      "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('kv', 'data_version')",
    ).all();
    return rows.length === 2;
  } finally {
    db.close();
  }
}

/** Options of {@linkcode openDatabase}. */
export interface OpenOptions {
  /** SQLite's `synchronous` level. */
  sqliteSynchronous?: SqliteSynchronous;
  /** SQLite's log pages past which it starts over (`SqliteOptions.walRestartPages`). */
  sqliteWalPages?: number;
  /** PostgreSQL pool size. */
  postgresMax?: number;
}

/** Opens the database a {@linkcode DataTarget} names (creating a SQLite file's folder). */
export async function openDatabase(
  target: DataTarget,
  options: OpenOptions = {},
): Promise<SqlDatabase> {
  if (target.kind === "postgres") {
    return await PostgresDatabase.open(target.url, { max: options.postgresMax });
  }
  if (target.path !== ":memory:") {
    mkdirSync(dirname(target.path), { recursive: true });
    if (isDenoKvFile(target.path)) throw new DataError(migrateHint(target.path));
  }
  return SqliteDatabase.open(target.path, {
    synchronous: options.sqliteSynchronous,
    walRestartPages: options.sqliteWalPages,
  });
}

/**
 * Opens a {@linkcode SqlStore} on a SQLite path, `:memory:` or a
 * `postgres://` URL (no Deploy environment consulted): for tests and tools.
 */
export async function openStore(
  data: string,
  options: OpenOptions & SqlStoreOptions = {},
): Promise<SqlStore> {
  const db = await openDatabase(
    parseData(data, { onDeploy: false, env: () => undefined, explicit: true }),
    options,
  );
  try {
    return await SqlStore.open(db, options);
  } catch (error) {
    await db.close();
    throw error;
  }
}
