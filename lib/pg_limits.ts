/**
 * {@linkcode UserLimits} shared by instances on one PostgreSQL, so a user
 * cannot multiply them by spreading tabs over instances.
 *
 * - The send budget is a GCRA bucket (the same shape as the local token
 *   bucket: `sendBurst` at once, `sendRate` a second on average) in one row
 *   per user, taken in one statement on the database's clock.
 * - Connections are counted per (user, instance) in `chat_user_connections`,
 *   counted only while the instance's row is fresh (`pg_instance.ts`), so a
 *   crashed instance's connections stop counting within the TTL. Opening one
 *   takes a per-user advisory lock, so two instances cannot both take the
 *   last place.
 *
 * @module
 */

import type { PgInstance } from "./pg_instance.ts";
import type { SendAllowance, UserLimits, UserLimitSettings } from "./user_limits.ts";

/** Per-user limits in PostgreSQL. */
export class PgUserLimits implements UserLimits {
  #instance: PgInstance;
  #settings: UserLimitSettings;
  /** Open connections here by user: the truth for this instance's rows. */
  #local = new Map<string, number>();
  /** A release could not be written: rewrite this instance's rows on the next heartbeat. */
  #dirty = false;

  /** Limits under an instance. */
  constructor(instance: PgInstance, settings: UserLimitSettings) {
    this.#instance = instance;
    this.#settings = settings;
    instance.hook({ revived: () => this.#rewrite() });
  }

  async takeSend(user: string): Promise<SendAllowance> {
    const { sendRate, sendBurst } = this.#settings;
    const interval = 1000 / sendRate;
    const sql = this.#instance.sql;
    // tat: the "theoretical arrival time" after which the bucket is full again.
    const taken = await sql`
      INSERT INTO chat_send_budget AS b ("user", tat)
      VALUES (${user}, extract(epoch from clock_timestamp()) * 1000 + ${interval})
      ON CONFLICT ("user") DO UPDATE
        SET tat = greatest(b.tat, excluded.tat - ${interval}) + ${interval}
        WHERE greatest(b.tat, excluded.tat - ${interval}) + ${interval}
          <= excluded.tat - ${interval} + ${sendBurst * interval}
      RETURNING 1`;
    if (taken.length > 0) return { ok: true };
    const [row] = await sql`
      SELECT (tat - extract(epoch from clock_timestamp()) * 1000)::float8 AS ahead
      FROM chat_send_budget WHERE "user" = ${user}`;
    const ahead = row ? Number(row.ahead) : 0;
    return {
      ok: false,
      retryAfterMs: Math.max(1, Math.ceil(ahead + interval - sendBurst * interval)),
    };
  }

  async openConnection(user: string): Promise<(() => void) | undefined> {
    const { sql, id } = this.#instance;
    const max = this.#settings.maxConnectionsPerUser;
    if (this.#dirty) await this.#rewrite();
    const opened = await sql.begin(async (tx) => {
      await tx`SELECT pg_advisory_xact_lock(hashtext(${"chat-connections/" + user}))`;
      const [row] = await tx`
        SELECT coalesce(sum(c.n), 0)::int AS n FROM chat_user_connections c
        JOIN chat_instances i ON i.id = c.instance
        WHERE c."user" = ${user} AND i.expires_at >= now()`;
      if ((row.n as number) >= max) return false;
      await tx`
        INSERT INTO chat_user_connections ("user", instance, n) VALUES (${user}, ${id}, 1)
        ON CONFLICT ("user", instance) DO UPDATE SET n = chat_user_connections.n + 1`;
      return true;
    });
    if (!opened) return undefined;
    this.#local.set(user, (this.#local.get(user) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const left = (this.#local.get(user) ?? 1) - 1;
      if (left > 0) this.#local.set(user, left);
      else this.#local.delete(user);
      // A decrement, not a value: releases may reach the table in any order.
      sql`
        UPDATE chat_user_connections SET n = greatest(n - 1, 0)
        WHERE "user" = ${user} AND instance = ${id}`
        .then(() => {}, () => this.#dirty = true);
    };
  }

  /** Writes this instance's counts from the local ones. */
  async #rewrite(): Promise<void> {
    const { sql, id } = this.#instance;
    const users = [...this.#local.keys()];
    const counts = users.map((u) => this.#local.get(u)!);
    this.#dirty = false;
    try {
      await sql.begin(async (tx) => {
        await tx`DELETE FROM chat_user_connections WHERE instance = ${id}`;
        if (users.length === 0) return;
        await tx`
          INSERT INTO chat_user_connections ("user", instance, n)
          SELECT u, ${id}, n FROM unnest(${users}::text[], ${counts}::int[]) AS t(u, n)`;
      });
    } catch (error) {
      this.#dirty = true;
      throw error;
    }
  }
}
