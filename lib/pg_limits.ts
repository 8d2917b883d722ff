/**
 * {@linkcode UserLimits} shared by instances on one PostgreSQL, so a user
 * cannot multiply them by spreading tabs over instances.
 *
 * - The send budget is a GCRA bucket (the same shape as the local token
 *   bucket: `sendBurst` at once, `sendRate` a second on average) in one row
 *   per user, taken on the database's clock. The sends an instance receives
 *   while its previous takes are being written wait for the next one, and one
 *   statement takes them all, for every user at once: the budget is exact
 *   (nothing is taken ahead or cached), and a send costs one row of one
 *   statement instead of a statement.
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

/** Send-budget statements in flight at once, at most. */
const MAX_TAKES = 2;

/** Per-user limits in PostgreSQL. */
export class PgUserLimits implements UserLimits {
  #instance: PgInstance;
  #settings: UserLimitSettings;
  /** Open connections here by user: the truth for this instance's rows. */
  #local = new Map<string, number>();
  /** A release could not be written: rewrite this instance's rows on the next heartbeat. */
  #dirty = false;
  /** Sends waiting for the next take, by user, in the order asked. */
  #sends = new Map<string, Array<{ resolve(a: SendAllowance): void; reject(e: unknown): void }>>();
  /** Takes being written. */
  #taking = 0;
  #takeTimer: ReturnType<typeof setTimeout> | undefined;

  /** Limits under an instance. */
  constructor(instance: PgInstance, settings: UserLimitSettings) {
    this.#instance = instance;
    this.#settings = settings;
    instance.hook({ revived: () => this.#rewrite() });
  }

  takeSend(user: string): Promise<SendAllowance> {
    return new Promise((resolve, reject) => {
      const waiting = this.#sends.get(user);
      if (waiting) waiting.push({ resolve, reject });
      else this.#sends.set(user, [{ resolve, reject }]);
      if (this.#taking < MAX_TAKES && this.#takeTimer === undefined) {
        // Let the sends that arrive in this turn of the loop join the same statement.
        this.#takeTimer = setTimeout(() => {
          this.#takeTimer = undefined;
          void this.#take();
        }, 0);
      }
    });
  }

  /**
   * Takes every waiting send in one statement, one row per user: each user
   * gets the first `granted` of their sends (in the order they were asked),
   * as many as the bucket holds, exactly as that many single takes would.
   * At most {@linkcode MAX_TAKES} statements are in flight; the sends that
   * arrive meanwhile wait for the next. (A connection asks for its next send
   * only once its previous one is answered, so its sends keep their order.)
   */
  async #take(): Promise<void> {
    if (this.#sends.size === 0 || this.#taking >= MAX_TAKES) return;
    this.#taking++;
    const batch = this.#sends;
    this.#sends = new Map();
    try {
      // Sorted, so two instances lock their users' rows in one order.
      const users = [...batch.keys()].sort();
      const counts = users.map((u) => batch.get(u)!.length);
      const rows = await this.#takeMany(users, counts);
      const { sendRate, sendBurst } = this.#settings;
      const interval = 1000 / sendRate;
      for (const row of rows) {
        const waiting = batch.get(row.user) ?? [];
        const retryAfterMs = Math.max(1, Math.ceil(row.ahead + interval - sendBurst * interval));
        waiting.forEach((w, i) =>
          w.resolve(i < row.granted ? { ok: true } : { ok: false, retryAfterMs })
        );
        batch.delete(row.user);
      }
      for (const waiting of batch.values()) {
        for (const w of waiting) w.reject(new Error("the send budget was not returned"));
      }
    } catch (error) {
      for (const waiting of batch.values()) for (const w of waiting) w.reject(error);
    } finally {
      this.#taking--;
      // What arrived meanwhile goes at once: it has waited for a statement already.
      void this.#take();
    }
  }

  /**
   * The statement: per user, a GCRA take of up to `count` messages at the
   * statement's time, on the row locked by the upsert. `granted` is kept in
   * the row only to return it (and, on insert, to carry the count).
   */
  async #takeMany(users: string[], counts: number[]) {
    const { sendRate, sendBurst } = this.#settings;
    // tat: the "theoretical arrival time" after which the bucket is full again.
    const interval = 1000 / sendRate;
    const span = sendBurst * interval;
    const now = this.#instance.sql`extract(epoch from statement_timestamp()) * 1000`;
    // How many of the (at most sendBurst) asked the bucket holds, and the new tat.
    const granted = this.#instance.sql`least(excluded.granted, greatest(0, floor(
      (${now} + ${span}::float8 - greatest(b.tat, ${now})) / ${interval}::float8 + 1e-9)))`;
    const rows = await this.#instance.sql`
      INSERT INTO chat_send_budget AS b ("user", tat, granted)
      SELECT u, ${now} + least(n, ${sendBurst}::int) * ${interval}::float8,
        least(n, ${sendBurst}::int)
      FROM unnest(${users}::text[], ${counts}::int[]) AS t(u, n) ORDER BY u
      ON CONFLICT ("user") DO UPDATE
        SET granted = ${granted}::int,
          tat = greatest(b.tat, ${now}) + ${granted} * ${interval}::float8
      RETURNING "user", granted, (tat - ${now})::float8 AS ahead`;
    return rows.map((r) => ({
      user: r.user as string,
      granted: Number(r.granted),
      ahead: Number(r.ahead),
    }));
  }

  async openConnection(user: string): Promise<(() => void) | undefined> {
    const { sql, id } = this.#instance;
    const max = this.#settings.maxConnectionsPerUser;
    if (this.#dirty) await this.#rewrite();
    const opened = await sql.begin(async (tx) => {
      // The count and the insert in one statement, sent with the lock without waiting for it:
      // PostgreSQL runs it once the lock is held, on a snapshot taken then, so it sees every
      // connection that another instance counted under the lock before. Three round trips
      // (BEGIN, these two, COMMIT) where there were five.
      const [, [row]] = await Promise.all([
        tx`SELECT pg_advisory_xact_lock(hashtext(${"chat-connections/" + user}))`.execute(),
        tx`
          WITH open AS (
            SELECT coalesce(sum(c.n), 0)::int AS n FROM chat_user_connections c
            JOIN chat_instances i ON i.id = c.instance
            WHERE c."user" = ${user} AND i.expires_at >= now()
          ), ins AS (
            INSERT INTO chat_user_connections ("user", instance, n)
            SELECT ${user}, ${id}, 1 FROM open WHERE open.n < ${max}
            ON CONFLICT ("user", instance) DO UPDATE SET n = chat_user_connections.n + 1
            RETURNING 1
          )
          SELECT EXISTS (SELECT 1 FROM ins) AS opened`.execute(),
      ]);
      return row.opened as boolean;
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
