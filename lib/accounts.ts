/**
 * Who is who: registered names (compared canonically, look-alikes refused),
 * claimed names with their tokens, passwords, and revocation. Kept in the
 * same SQL database as the chat (tables `users`, `accounts`, `tokens`; see
 * `sql/schema.ts`), so one backup, one migration, one transaction can hold both.
 *
 * Tokens are stored only as their SHA-256; passwords only as PBKDF2 hashes.
 *
 * @module
 */

import {
  canonicalName,
  hashPassword,
  hashToken,
  isTokenShaped,
  newToken,
  type PasswordHash,
  skeleton,
  verifyPassword,
} from "./identity.ts";
import { LogOnce } from "./log.ts";
import type { RefusalCode } from "./protocol.ts";
import { Semaphore } from "./semaphore.ts";
import type { SqlDatabase } from "./sql/dialect.ts";
import { LOBBY_KEY, readFromLatest } from "./sql/store.ts";

export type { RefusalCode };

const log = new LogOnce();

/** A name looked up: the registered spelling, or why it cannot be used. */
export type Resolved =
  | { ok: true; user: string; known: boolean }
  | { ok: false; reason: string; code: RefusalCode };

/** The outcome of {@linkcode Accounts.authenticate}. */
export type Authenticated =
  | {
    ok: true;
    /** The session: the hash of the token the connection presented or was given. */
    session?: string;
    /** A token issued now, because this connection claimed the name. */
    token?: string;
  }
  | { ok: false; reason: string; code: RefusalCode };

/** The outcome of {@linkcode Accounts.registerRoom}. */
export type RoomName = { ok: true } | { ok: false; reason: string };

/** Thrown inside a registration whose skeleton was taken meanwhile, to roll it back. */
class LookAlikeRace extends Error {}

/** Thrown inside a claim of a name claimed meanwhile, to roll it back. */
class ClaimTaken extends Error {}

/** Options of {@linkcode Accounts.authenticate}. */
export interface AuthenticateOptions {
  /** The token the client presented, if any. */
  token?: string;
  /** Whether the client speaks the original protocol (it can neither claim nor present a token). */
  legacy: boolean;
}

/**
 * The version of `skeleton()` the `skeletons` table was filled with (2:
 * Unicode's confusables data); see {@linkcode Accounts.#indexSkeletons}.
 */
const SKELETON_VERSION = 2;

/** Registered names, claims, tokens and passwords, in a SQL database. */
export class Accounts {
  #db: SqlDatabase;
  #iterations: number;
  /** Registered spelling by canonical name: names never change, so this cache never goes stale. */
  #known = new Map<string, string>();
  /** Resolves once the skeleton index is current (see {@linkcode Accounts.#indexSkeletons}). */
  #skeletons: Promise<void>;
  /** Password hashing, bounded: it is the one thing a client can make cost a CPU-second. */
  #hashing: Semaphore;

  /**
   * Accounts in a database whose schema is current (open a `SqlStore` on it
   * first); `iterations` is PBKDF2's work factor; `maxConcurrentHashes` and
   * `maxQueuedHashes` bound password hashing (beyond both, `setPassword` and
   * `login` reject with `BusyError`).
   */
  constructor(
    db: SqlDatabase,
    options: { iterations?: number; maxConcurrentHashes?: number; maxQueuedHashes?: number } = {},
  ) {
    this.#db = db;
    this.#iterations = options.iterations ?? 600_000;
    this.#hashing = new Semaphore(options.maxConcurrentHashes ?? 2, options.maxQueuedHashes ?? 16);
    // Never rejects: a store closed meanwhile (or failing) leaves the old index, logged once.
    this.#skeletons = this.#indexSkeletons().catch((error) =>
      log.error("could not re-index name skeletons", error)
    );
  }

  /**
   * Names registered under an older skeleton function get their current
   * skeleton indexed too (once per version), so their look-alikes are still
   * found; where two old names now share a skeleton, the first keeps it.
   */
  async #indexSkeletons(): Promise<void> {
    const [marker] = await this.#db.query<{ value: string }>(
      `SELECT value FROM meta WHERE key = 'skeleton_version'`,
    );
    if (Number(marker?.value) === SKELETON_VERSION) return;
    const users = await this.#db.query<{ name: string }>(`SELECT name FROM users ORDER BY since`);
    for (const { name } of users) {
      await this.#db.query(
        `INSERT INTO skeletons (skel, name) VALUES ($1, $2) ON CONFLICT DO NOTHING`,
        [skeleton(name), name],
      );
    }
    await this.#db.query(
      `INSERT INTO meta (key, value) VALUES ('skeleton_version', $1)
       ON CONFLICT (key) DO UPDATE SET value = excluded.value`,
      [String(SKELETON_VERSION)],
    );
  }

  /**
   * Finds the registered spelling of a name (`Alice` → `alice` if `alice`
   * came first), or refuses a look-alike of another registered name.
   */
  async resolve(name: string): Promise<Resolved> {
    await this.#skeletons;
    const canon = canonicalName(name);
    const cached = this.#known.get(canon);
    if (cached !== undefined) return { ok: true, user: cached, known: true };
    // A look-alike is a name with the same skeleton under any skeleton function used so far.
    const rows = await this.#db.query<{ name: string; canon: string | null }>(
      `SELECT name, canon FROM users WHERE canon = $1 OR skel = $2
       UNION ALL SELECT name, NULL AS canon FROM skeletons WHERE skel = $2`,
      [canon, skeleton(name)],
    );
    const byCanon = rows.find((r) => r.canon === canon);
    if (byCanon) {
      this.#known.set(canon, byCanon.name);
      return { ok: true, user: byCanon.name, known: true };
    }
    if (rows.length > 0) {
      return {
        ok: false,
        reason: `too much like the name ${rows[0].name}; pick another`,
        code: "lookalike",
      };
    }
    return { ok: true, user: name, known: false };
  }

  /**
   * Registers a name (idempotent); resolves with the registered spelling, or
   * why not. A new user's lobby read mark starts at the lobby's newest
   * message: nothing said before they came counts as unread.
   */
  async register(name: string): Promise<Resolved> {
    for (;;) {
      const found = await this.resolve(name);
      if (!found.ok || found.known) return found;
      const canon = canonicalName(name);
      const added = await this.#db.transaction(async (tx) => {
        const rows = await tx.query(
          `INSERT INTO users (name, canon, skel, since) VALUES ($1, $2, $3, $4)
           ON CONFLICT DO NOTHING RETURNING name`,
          [name, canon, skeleton(name), Date.now()],
        );
        if (rows.length === 0) return false;
        const skel = await tx.query(
          `INSERT INTO skeletons (skel, name) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING name`,
          [skeleton(name), name],
        );
        // A look-alike took the skeleton meantime: undo, and look again.
        if (skel.length === 0) throw new LookAlikeRace();
        await readFromLatest(tx, this.#db, name, LOBBY_KEY);
        return true;
      }).catch((error) => {
        if (error instanceof LookAlikeRace) return false;
        throw error;
      });
      if (added) {
        this.#known.set(canon, name);
        return { ok: true, user: name, known: true };
      }
      // Someone registered this name or a look-alike meanwhile: look again.
    }
  }

  async #account(user: string): Promise<{ password: PasswordHash | undefined } | undefined> {
    const [row] = await this.#db.query<{ password: string | null }>(
      `SELECT password FROM accounts WHERE name = $1`,
      [user],
    );
    if (!row) return undefined;
    return { password: row.password === null ? undefined : JSON.parse(row.password) };
  }

  async #issue(user: string, session: string): Promise<void> {
    await this.#db.query(`INSERT INTO tokens (hash, name, since) VALUES ($1, $2, $3)`, [
      session,
      user,
      Date.now(),
    ]);
  }

  /**
   * Registers a room's name (idempotent) so that no other room may look like
   * it: resolves ok, or with the room it is too much like. A name new here
   * counts against `by`'s rooms, at most `maxPerUser` (checked in the same
   * atomic commit). Room names come canonical (see protocol.ts).
   * Tables: `room_names` (skeleton → room), `rooms_made` (user → count).
   */
  async registerRoom(room: string, by: string, maxPerUser = Infinity): Promise<RoomName> {
    const skel = skeleton(room);
    for (;;) {
      const [entry] = await this.#db.query<{ room: string }>(
        `SELECT room FROM room_names WHERE skel = $1`,
        [skel],
      );
      if (entry?.room === room) return { ok: true };
      if (entry) {
        return { ok: false, reason: `too much like the room ${entry.room}; pick another name` };
      }
      const outcome = await this.#db.transaction(async (tx) => {
        const [made] = await tx.query<{ made: number }>(
          `SELECT made FROM rooms_made WHERE name = $1 ${this.#db.dialect.forUpdate}`,
          [by],
        );
        if (Number(made?.made ?? 0) >= maxPerUser) return "limit";
        const added = await tx.query(
          `INSERT INTO room_names (skel, room) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING room`,
          [skel, room],
        );
        if (added.length === 0) return "again";
        await tx.query(
          `INSERT INTO rooms_made (name, made) VALUES ($1, 1)
           ON CONFLICT (name) DO UPDATE SET made = rooms_made.made + 1`,
          [by],
        );
        return "ok";
      });
      if (outcome === "ok") return { ok: true };
      if (outcome === "limit") {
        return { ok: false, reason: `at most ${maxPerUser} new rooms per user` };
      }
      // Another room took the skeleton meanwhile: look again.
    }
  }

  /**
   * Decides whether a connection may be `user` (a registered spelling): a
   * claimed name needs one of its tokens; an unclaimed one is claimed by a
   * `chat.v1` client without a token, which gets a new one.
   */
  async authenticate(user: string, options: AuthenticateOptions): Promise<Authenticated> {
    if (options.legacy) {
      return (await this.#account(user))
        ? {
          ok: false,
          reason: `${user} is a claimed name; the original page can use only free names`,
          code: "claimed_legacy",
        }
        : { ok: true };
    }
    if (options.token !== undefined) {
      const session = isTokenShaped(options.token) ? await hashToken(options.token) : "";
      const [row] = session
        ? await this.#db.query<{ name: string }>(`SELECT name FROM tokens WHERE hash = $1`, [
          session,
        ])
        : [];
      if (row?.name === user) return { ok: true, session };
      return {
        ok: false,
        reason: "this token is not valid for this name (logged out?); log in again",
        code: "bad_token",
      };
    }
    const account = await this.#account(user);
    if (account?.password !== undefined) {
      return { ok: false, reason: `${user} is taken; log in with its password`, code: "taken" };
    }
    if (account) {
      return {
        ok: false,
        reason: `${user} is taken, on the devices that claimed it; pick another name`,
        code: "taken_no_password",
      };
    }
    const token = newToken();
    const session = await hashToken(token);
    // A name not registered yet is registered in the same transaction (one commit, not two, for
    // a new user; `register` then finds it known). Where that cannot be done here (the name or
    // a look-alike was registered meanwhile), the claim goes alone, and `register` decides.
    const canon = canonicalName(user);
    let claimed: "claimed" | "registered" | "taken";
    try {
      claimed = await this.#claim(user, session, this.#known.has(canon) ? undefined : canon);
    } catch (error) {
      if (!(error instanceof LookAlikeRace)) throw error;
      claimed = await this.#claim(user, session, undefined);
    }
    if (claimed === "taken") {
      return {
        ok: false,
        reason: `${user} was just claimed by someone else`,
        code: "just_claimed",
      };
    }
    if (claimed === "registered") this.#known.set(canon, user);
    return { ok: true, session, token };
  }

  /**
   * Claims `user` with the token whose hash is `session`, registering the
   * name too when `canon` is given: every statement asked at once (one round
   * trip), the outcome read from what each inserted. Throws
   * {@linkcode LookAlikeRace} when the registration part could not be done
   * (all of it rolled back).
   */
  async #claim(
    user: string,
    session: string,
    canon: string | undefined,
  ): Promise<"claimed" | "registered" | "taken"> {
    return await this.#db.transaction(async (tx) => {
      const now = Date.now();
      const skel = skeleton(user);
      const [registered, indexed, , account] = await Promise.all([
        canon === undefined ? undefined : tx.query(
          `INSERT INTO users (name, canon, skel, since) VALUES ($1, $2, $3, $4)
           ON CONFLICT DO NOTHING RETURNING name`,
          [user, canon, skel, now],
        ),
        canon === undefined ? undefined : tx.query(
          `INSERT INTO skeletons (skel, name) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING name`,
          [skel, user],
        ),
        canon === undefined ? undefined : readFromLatest(tx, this.#db, user, LOBBY_KEY),
        tx.query(
          `INSERT INTO accounts (name, since) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING
           RETURNING name`,
          [user, now],
        ),
        tx.query(`INSERT INTO tokens (hash, name, since) VALUES ($1, $2, $3)`, [
          session,
          user,
          now,
        ]),
      ]);
      // Registered meanwhile (this spelling, another, or a look-alike): undo it all, claim alone.
      if (canon !== undefined && (registered!.length === 0 || indexed!.length === 0)) {
        throw new LookAlikeRace();
      }
      if (account.length === 0) throw new ClaimTaken();
      return canon === undefined ? "claimed" : "registered";
    }).catch((error) => {
      if (error instanceof ClaimTaken) return "taken" as const;
      throw error;
    });
  }

  /** Whether a name is claimed (a `chat.v1` client holds its tokens). */
  async isClaimed(user: string): Promise<boolean> {
    return (await this.#account(user)) !== undefined;
  }

  /** Whether a user has a password. */
  async hasPassword(user: string): Promise<boolean> {
    return (await this.#account(user))?.password !== undefined;
  }

  /** Sets a claimed user's password. */
  async setPassword(user: string, password: string): Promise<void> {
    const hash = await this.#hashing.run(() => hashPassword(password, this.#iterations));
    const rows = await this.#db.query(
      `UPDATE accounts SET password = $2 WHERE name = $1 RETURNING name`,
      [user, JSON.stringify(hash)],
    );
    if (rows.length === 0) throw new Error(`${user} is not claimed`);
  }

  /** Checks a name and password; on success issues a new token for a new device. */
  async login(
    name: string,
    password: string,
  ): Promise<{ user: string; token: string } | undefined> {
    const found = await this.resolve(name);
    if (!found.ok || !found.known) return undefined;
    const stored = (await this.#account(found.user))?.password;
    if (!stored || !(await this.#hashing.run(() => verifyPassword(password, stored)))) {
      return undefined;
    }
    const token = newToken();
    await this.#issue(found.user, await hashToken(token));
    return { user: found.user, token };
  }

  /**
   * Undoes a claim whose token never reached its client (the socket closed
   * before its welcome): the session goes, and so does the claim when it has
   * no password and no other session. Without this the name would be claimed
   * by a device that never learnt its token, and nobody could use it again.
   * Resolves true when the name is free again.
   */
  async unclaim(user: string, session: string): Promise<boolean> {
    return await this.#db.transaction(async (tx) => {
      await tx.query(`DELETE FROM tokens WHERE name = $1 AND hash = $2`, [user, session]);
      const freed = await tx.query(
        `DELETE FROM accounts WHERE name = $1 AND password IS NULL
         AND NOT EXISTS (SELECT 1 FROM tokens WHERE name = $1) RETURNING name`,
        [user],
      );
      return freed.length > 0;
    });
  }

  /** Revokes one session of a user, or all of them; resolves with those revoked. */
  async revoke(user: string, session?: string): Promise<string[]> {
    if (session !== undefined) {
      await this.#db.query(`DELETE FROM tokens WHERE name = $1 AND hash = $2`, [user, session]);
      return [session];
    }
    const rows = await this.#db.query<{ hash: string }>(
      `DELETE FROM tokens WHERE name = $1 RETURNING hash`,
      [user],
    );
    return rows.map((r) => r.hash);
  }
}
