/**
 * {@linkcode Presence} shared by instances on one PostgreSQL: a row per
 * (user, instance) in `chat_presence`, counted only while its instance's row
 * in `chat_instances` is fresh (see `pg_instance.ts`). A user on two
 * instances stays online until the last tab anywhere closes; a SIGKILLed
 * instance's users go offline everywhere within the TTL, announced by
 * whichever instance sweeps it.
 *
 * @module
 */

import type postgres from "npm:postgres@^3.4.9";
import type { Bus } from "./bus.ts";
import type { PgInstance } from "./pg_instance.ts";
import { type OnlinePage, type OnlineQuery, type Presence, SortedNames } from "./presence.ts";
import { SharedRead } from "./shared_read.ts";

/** What one read of `chat_presence` gives: a page of who is online, and how many are. */
interface PageRow {
  total: number;
  users: string[];
}

/** Presence in PostgreSQL with expiry. */
export class PgPresence implements Presence {
  #instance: PgInstance;
  #bus: Bus;
  /** Users with a connection here, as this instance last told the table. */
  #local = new SortedNames();
  /** Per user, the last operation: arrivals and departures reach the table in order. */
  #chains = new Map<string, Promise<unknown>>();
  /** The first-page reads, by page size (see `#firstPage`). */
  #firstPages = new Map<number, SharedRead<PageRow>>();

  /** Presence under an instance; announcements of swept users go out on `bus`. */
  constructor(instance: PgInstance, bus: Bus) {
    this.#instance = instance;
    this.#bus = bus;
    instance.hook({
      revived: () => this.#revive(),
      swept: (users) => {
        for (const user of users) {
          // Whoever is connected here is online, whatever the table said of another instance.
          if (!this.#local.has(user)) this.#bus.publish({ kind: "presence", user, online: false });
        }
      },
    });
  }

  #inOrder<T>(user: string, op: () => Promise<T>): Promise<T> {
    const run = (this.#chains.get(user) ?? Promise.resolve()).catch(() => {}).then(op);
    this.#chains.set(user, run);
    const clear = () => {
      if (this.#chains.get(user) === run) this.#chains.delete(user);
    };
    run.then(clear, clear);
    return run;
  }

  arrive(user: string): Promise<boolean> {
    this.#local.add(user);
    const id = this.#instance.id;
    return this.#locked(user, async (tx) => {
      const [row] = await tx`
        WITH ins AS (
          INSERT INTO chat_presence ("user", instance) VALUES (${user}, ${id})
          ON CONFLICT DO NOTHING RETURNING 1
        )
        SELECT EXISTS (SELECT 1 FROM ins) AND NOT EXISTS (
          SELECT 1 FROM chat_presence p JOIN chat_instances i ON i.id = p.instance
          WHERE p."user" = ${user} AND p.instance <> ${id} AND i.expires_at >= now()
        ) AS first`;
      return row.first as boolean;
    });
  }

  depart(user: string): Promise<boolean> {
    this.#local.delete(user);
    const id = this.#instance.id;
    return this.#locked(user, async (tx) => {
      const [row] = await tx`
        WITH del AS (
          DELETE FROM chat_presence WHERE "user" = ${user} AND instance = ${id} RETURNING 1
        )
        SELECT NOT EXISTS (
          SELECT 1 FROM chat_presence p JOIN chat_instances i ON i.id = p.instance
          WHERE p."user" = ${user} AND p.instance <> ${id} AND i.expires_at >= now()
        ) AS gone`;
      return row.gone as boolean;
    });
  }

  /**
   * Runs one user's arrival or departure under a per-user lock, in order with
   * this instance's others: two instances changing one user at once each see
   * the other's row as it is after the other committed (without the lock, two
   * last tabs closing together could each see the other and nobody announce
   * the user offline).
   */
  #locked<T>(user: string, op: (tx: postgres.TransactionSql) => Promise<T>): Promise<T> {
    return this.#inOrder(user, () =>
      this.#instance.sql.begin(async (tx) => {
        // Sent before op's statement without waiting for it (one round trip fewer): PostgreSQL
        // runs op's statement once the lock is held, on a snapshot taken then.
        const locked = tx`SELECT pg_advisory_xact_lock(hashtext(${"chat-presence/" + user}))`
          .execute();
        const [, result] = await Promise.all([locked, op(tx)]);
        return result;
      }) as Promise<T>);
  }

  /**
   * A page of who is online on any instance with a fresh row, merged with
   * this instance's own users (whom the table may not show while this
   * instance's row is being revived). Pages follow PostgreSQL's `C` order,
   * which is UTF-16 code unit order for every name but those mixing
   * characters beyond U+FFFF with ones from U+E000 to U+FFFF. `total` counts
   * the table's users, or this instance's if more.
   */
  async online(query: OnlineQuery): Promise<OnlinePage> {
    const row = query.after === undefined
      ? await this.#firstPage(query.limit)
      : await this.#page(query.after, query.limit);
    const local = this.#local.page({ after: query.after, limit: query.limit + 1 }).users;
    const merged = [...new Set([...row.users, ...local])].sort((a, b) =>
      a < b ? -1 : a > b ? 1 : 0
    );
    return {
      users: merged.slice(0, query.limit),
      more: merged.length > query.limit,
      total: Math.max(row.total, this.#local.size),
    };
  }

  /**
   * The table's first page and count, as every welcome asks for them: one
   * read shared by the welcomes asked while the one before runs (see
   * {@linkcode SharedRead}; each is still read after its welcome asked, so it
   * shows every arrival committed before). The count grows with the crowd
   * (0.69 ms of PostgreSQL's time at 500 online, over half of all it spent
   * on an arrival, by `pg_stat_statements`): read once per welcome, an
   * arrival burst cost the square of the crowd.
   */
  #firstPage(limit: number): Promise<PageRow> {
    let shared = this.#firstPages.get(limit);
    if (!shared) {
      // One per page size asked for: the welcome's, and clients' online requests (at most
      // ONLINE_PAGE_MAX sizes); dropped when idle.
      const reader = new SharedRead(
        () => this.#page("", limit),
        () => this.#firstPages.delete(limit),
      );
      this.#firstPages.set(limit, shared = reader);
    }
    return shared.get();
  }

  /**
   * One read of the table: how many are online, and a page of them after
   * `after`. The page walks `chat_presence_by_name` in `C` order and stops
   * after it (0.4 ms at 5,000 online, where sorting them all took 3.5); the
   * count must see every row, hashed rather than sorted (2.7 ms against
   * 4.7). Both filter on the fresh instances' ids, read once, instead of a
   * join per row. Names are never empty: after `""` is from the first.
   */
  async #page(after: string, limit: number): Promise<PageRow> {
    const [row] = await this.#instance.sql`
      WITH fresh AS MATERIALIZED (
        SELECT array_agg(id) AS ids FROM chat_instances WHERE expires_at >= now()
      )
      SELECT
        (SELECT count(*) FROM (
          SELECT DISTINCT p."user" FROM chat_presence p, fresh WHERE p.instance = ANY(fresh.ids)
        ) u)::int AS total,
        ARRAY(
          SELECT DISTINCT p."user" COLLATE "C" FROM chat_presence p, fresh
          WHERE p.instance = ANY(fresh.ids) AND p."user" COLLATE "C" > ${after}::text COLLATE "C"
          ORDER BY 1 LIMIT ${limit + 1}
        ) AS users`;
    return { total: row.total as number, users: row.users as string[] };
  }

  /** Writes this instance's users again after its rows were lost, and announces them. */
  async #revive(): Promise<void> {
    const users = [...this.#local];
    if (users.length === 0) return;
    const rows = await this.#instance.sql`
      INSERT INTO chat_presence ("user", instance)
      SELECT u, ${this.#instance.id} FROM unnest(${users}::text[]) AS u
      ON CONFLICT DO NOTHING RETURNING "user"`;
    for (const r of rows) this.#bus.publish({ kind: "presence", user: r.user, online: true });
  }

  /** Removes this instance's users (a clean shutdown) and announces those now offline everywhere. */
  async close(): Promise<void> {
    await Promise.allSettled(this.#chains.values());
    for (const user of await this.#instance.close()) {
      this.#bus.publish({ kind: "presence", user, online: false });
    }
  }
}
