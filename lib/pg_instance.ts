/**
 * One instance among several on one PostgreSQL: its id, its heartbeat, and
 * the tables the instances share besides the chat's own (which the store
 * keeps). Presence (`pg_presence.ts`) and per-user connection counts
 * (`pg_limits.ts`) are rows that name an instance; they count only while
 * that instance's row is fresh. Every instance renews its own row every
 * quarter of the TTL and sweeps the rows of instances that stopped (a
 * SIGKILL, a lost network), so their users go offline everywhere within the
 * TTL.
 *
 * All these tables are UNLOGGED (cheap; PostgreSQL empties them after its
 * own crash) except `chat_positions`: every instance rebuilds its rows on
 * its next heartbeat, and a lost position is at worst a late delivery.
 *
 * @module
 */

import type postgres from "npm:postgres@^3.4.9";

/** A postgres.js client. */
export type Sql = postgres.Sql;

/**
 * The shared tables: live instances, presence, connections per user, send
 * budgets, the fan-out's conversation positions (for catch-up and polling)
 * and, for polling only, ephemeral events. Created if missing, under a lock
 * so that instances starting together do not race.
 */
export async function ensureFanoutSchema(sql: Sql): Promise<void> {
  await sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(7266821)`;
    await tx.unsafe(`
      CREATE UNLOGGED TABLE IF NOT EXISTS chat_instances (
        id text PRIMARY KEY,
        expires_at timestamptz NOT NULL
      );
      CREATE UNLOGGED TABLE IF NOT EXISTS chat_presence (
        "user" text NOT NULL,
        instance text NOT NULL,
        PRIMARY KEY ("user", instance)
      );
      CREATE INDEX IF NOT EXISTS chat_presence_by_instance ON chat_presence (instance);
      CREATE INDEX IF NOT EXISTS chat_presence_by_name ON chat_presence (("user" COLLATE "C"), instance);
      CREATE UNLOGGED TABLE IF NOT EXISTS chat_user_connections (
        "user" text NOT NULL,
        instance text NOT NULL,
        n integer NOT NULL,
        PRIMARY KEY ("user", instance)
      );
      CREATE INDEX IF NOT EXISTS chat_user_connections_by_instance
        ON chat_user_connections (instance);
      CREATE UNLOGGED TABLE IF NOT EXISTS chat_send_budget (
        "user" text PRIMARY KEY,
        tat double precision NOT NULL,
        granted integer NOT NULL DEFAULT 0
      );
      ALTER TABLE chat_send_budget ADD COLUMN IF NOT EXISTS granted integer NOT NULL DEFAULT 0;
      CREATE TABLE IF NOT EXISTS chat_positions (
        conversation text PRIMARY KEY,
        last bigint NOT NULL,
        updated_at timestamptz NOT NULL
      );
      CREATE INDEX IF NOT EXISTS chat_positions_by_time ON chat_positions (updated_at);
      CREATE UNLOGGED TABLE IF NOT EXISTS chat_events (
        seq bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        origin text NOT NULL,
        payload text NOT NULL
      );
    `);
  });
}

/** Options of {@linkcode PgInstance.start}. */
export interface PgInstanceOptions {
  /** How long an instance's users stay online after it stops renewing them, in milliseconds. */
  ttlMs: number;
}

/** What an instance's heartbeat tells the parts that keep rows under its id. */
export interface InstanceHooks {
  /**
   * The instance's row had gone (swept while the database was unreachable for
   * longer than the TTL, or emptied by a PostgreSQL crash): write this
   * instance's rows again.
   */
  revived?(): Promise<void>;
  /** Users who went offline everywhere because the instances they were on stopped. */
  swept?(users: string[]): void;
}

/** This process as one of the instances sharing a PostgreSQL. */
export class PgInstance {
  /** A fresh id per process: a restarted instance is a new one. */
  readonly id: string = crypto.randomUUID();
  /** The client. */
  readonly sql: Sql;
  /** See {@linkcode PgInstanceOptions.ttlMs}. */
  readonly ttlMs: number;
  #hooks: InstanceHooks[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  /** No sweeping before this (local clock): after an outage, others need a beat to renew. */
  #sweepAfter = 0;
  #beating: Promise<void> | undefined;
  /** The heartbeat is failing (said once, until it works again). */
  #failing = false;

  private constructor(sql: Sql, options: PgInstanceOptions) {
    this.sql = sql;
    this.ttlMs = options.ttlMs;
  }

  /** Creates the shared tables if needed, registers this instance and starts its heartbeat. */
  static async start(sql: Sql, options: PgInstanceOptions): Promise<PgInstance> {
    await ensureFanoutSchema(sql);
    const instance = new PgInstance(sql, options);
    await instance.#renew();
    instance.#schedule(instance.beatMs);
    return instance;
  }

  /** How often the instance renews its row and sweeps stopped ones: a quarter of the TTL. */
  get beatMs(): number {
    return Math.max(50, Math.floor(this.ttlMs / 4));
  }

  /** Adds parts to tell about revivals and sweeps. */
  hook(hooks: InstanceHooks): void {
    this.#hooks.push(hooks);
  }

  #schedule(ms: number): void {
    if (this.#closed) return;
    this.#timer = setTimeout(() => {
      this.#beating = this.#beat().finally(() => this.#beating = undefined);
    }, ms);
  }

  /** Renews this instance's row (it expires at half the TTL); true if it had to be made anew. */
  async #renew(): Promise<boolean> {
    const half = Math.ceil(this.ttlMs / 2);
    const [row] = await this.sql`
      INSERT INTO chat_instances (id, expires_at)
      VALUES (${this.id}, now() + ${half} * interval '1 millisecond')
      ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at
      RETURNING (xmax = 0) AS inserted`;
    return row.inserted as boolean;
  }

  async #beat(): Promise<void> {
    try {
      if (await this.#renew()) {
        for (const h of this.#hooks) await h.revived?.();
      }
      if (Date.now() >= this.#sweepAfter) await this.#sweep();
      if (this.#failing) console.error("instance heartbeat works again");
      this.#failing = false;
      this.#schedule(this.beatMs);
    } catch (error) {
      if (this.#closed) return;
      if (!this.#failing) {
        console.error(`instance heartbeat failed (${(error as Error).message}); retrying`);
      }
      this.#failing = true;
      // Sweep nobody right after an outage: the others have not renewed yet.
      this.#sweepAfter = Date.now() + 2 * this.beatMs;
      this.#schedule(Math.min(500, this.beatMs));
    }
  }

  /** Deletes stopped instances with their rows; tells who went offline everywhere. */
  async #sweep(): Promise<void> {
    const rows = await this.sql`
      WITH dead AS (
        DELETE FROM chat_instances WHERE expires_at < now() RETURNING id
      ), conns AS (
        DELETE FROM chat_user_connections c USING dead WHERE c.instance = dead.id RETURNING 1
      ), gone AS (
        DELETE FROM chat_presence p USING dead WHERE p.instance = dead.id RETURNING p."user"
      )
      SELECT DISTINCT g."user" AS "user" FROM gone g
      WHERE NOT EXISTS (
        SELECT 1 FROM chat_presence q JOIN chat_instances i ON i.id = q.instance
        WHERE q."user" = g."user" AND i.expires_at >= now()
          AND q.instance NOT IN (SELECT id FROM dead)
      )`;
    const users = rows.map((r) => r.user as string);
    // Full send budgets need no row. Only those no one holds: a send budget being taken locks its
    // users' rows in name order, and a DELETE that waited for one of them, holding another it met
    // first, made a deadlock (PostgreSQL aborted one side: the sweep, or the sends, refused as
    // store_failed; seen in a three-instance benchmark run). A row skipped goes next time.
    await this.sql`
      DELETE FROM chat_send_budget WHERE "user" IN (
        SELECT "user" FROM chat_send_budget
        WHERE tat < extract(epoch from clock_timestamp()) * 1000
        FOR UPDATE SKIP LOCKED)`;
    if (users.length > 0) { for (const h of this.#hooks) h.swept?.(users); }
  }

  /**
   * Stops the heartbeat and deletes this instance's row and the rows under
   * it, so its users are offline at once (unless they are elsewhere too);
   * resolves with those who went offline everywhere.
   */
  async close(): Promise<string[]> {
    this.#closed = true;
    clearTimeout(this.#timer);
    await this.#beating;
    try {
      const rows = await this.sql`
        WITH gone AS (
          DELETE FROM chat_presence WHERE instance = ${this.id} RETURNING "user"
        ), conns AS (
          DELETE FROM chat_user_connections WHERE instance = ${this.id} RETURNING 1
        ), me AS (
          DELETE FROM chat_instances WHERE id = ${this.id} RETURNING 1
        )
        SELECT g."user" AS "user" FROM gone g
        WHERE NOT EXISTS (
          SELECT 1 FROM chat_presence q JOIN chat_instances i ON i.id = q.instance
          WHERE q."user" = g."user" AND q.instance <> ${this.id} AND i.expires_at >= now()
        )`;
      return rows.map((r) => r.user as string);
    } catch {
      // The database is gone: the rows expire by themselves.
      return [];
    }
  }
}
