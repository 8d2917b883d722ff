/**
 * The backend for several instances on one PostgreSQL: the SQL store and
 * accounts (`sql/`), and presence, per-user limits and fan-out shared
 * through the same database (`pg_presence.ts`, `pg_limits.ts`,
 * `pg_bus.ts`). Those three use a client of their own (a small pool plus
 * the LISTEN connection) that retries a lost server quickly (at most a
 * second apart), so a PostgreSQL restart interrupts them for little longer
 * than the restart.
 *
 * @module
 */

import type { Accounts } from "./accounts.ts";
import type { Backend } from "./backend.ts";
import { PgBus } from "./pg_bus.ts";
import { PgInstance, type Sql } from "./pg_instance.ts";
import { PgUserLimits } from "./pg_limits.ts";
import { PgPresence } from "./pg_presence.ts";
import { connectPostgres } from "./sql/postgres.ts";
import type { SqlStore } from "./sql/store.ts";
import type { UserLimitSettings } from "./user_limits.ts";

/** Options of {@linkcode openPgBackend}. */
export interface PgBackendOptions {
  /** The database URL; the `PG*` environment variables when absent. */
  url?: string;
  /** Where the data lives, for the start-up line (no password). */
  where: string;
  /** The store on that database; closed with the backend. Its appends announce themselves. */
  store: SqlStore;
  /** The accounts on that database. */
  accounts: Accounts;
  /** Per-user limits. */
  limits: UserLimitSettings;
  /** Milliseconds a stopped instance's users stay online elsewhere. */
  presenceTtlMs: number;
  /** Poll every this many milliseconds instead of LISTEN; 0 listens. */
  pollMs: number;
}

/** Reconnect delays in seconds: quick, and never more than one apart. */
function backoff(retries: number): number {
  return Math.min(0.05 * 2 ** retries, 1);
}

/** Opens presence, limits and fan-out on PostgreSQL around a store on the same database. */
export async function openPgBackend(options: PgBackendOptions): Promise<Backend> {
  const sql: Sql = connectPostgres(options.url, { max: 4, backoff });
  try {
    const instance = await PgInstance.start(sql, { ttlMs: options.presenceTtlMs });
    const bus = await PgBus.start({
      sql,
      instance: instance.id,
      pollMs: options.pollMs,
    });
    // What an append stores and its announcement to the other instances commit together.
    options.store.announceWith(bus.announceAtCommit());
    const presence = new PgPresence(instance, bus);
    const userLimits = new PgUserLimits(instance, options.limits);
    return {
      where: options.where,
      store: options.store,
      accounts: options.accounts,
      presence,
      userLimits,
      bus,
      close: async () => {
        await presence.close();
        await bus.close();
        await sql.end({ timeout: 2 }).catch(() => {});
        await options.store.close();
      },
    };
  } catch (error) {
    await sql.end({ timeout: 1 }).catch(() => {});
    throw error;
  }
}
