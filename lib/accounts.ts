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
import type { RefusalCode } from "./protocol.ts";
import type { SqlDatabase } from "./sql/dialect.ts";
import { LOBBY_KEY, readFromLatest } from "./sql/store.ts";

export type { RefusalCode };

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

/** Options of {@linkcode Accounts.authenticate}. */
export interface AuthenticateOptions {
  /** The token the client presented, if any. */
  token?: string;
  /** Whether the client speaks the original protocol (it can neither claim nor present a token). */
  legacy: boolean;
}

/** Registered names, claims, tokens and passwords, in a SQL database. */
export class Accounts {
  #db: SqlDatabase;
  #iterations: number;
  /** Registered spelling by canonical name: names never change, so this cache never goes stale. */
  #known = new Map<string, string>();

  /**
   * Accounts in a database whose schema is current (open a `SqlStore` on it
   * first); `iterations` is PBKDF2's work factor.
   */
  constructor(db: SqlDatabase, options: { iterations?: number } = {}) {
    this.#db = db;
    this.#iterations = options.iterations ?? 600_000;
  }

  /**
   * Finds the registered spelling of a name (`Alice` → `alice` if `alice`
   * came first), or refuses a look-alike of another registered name.
   */
  async resolve(name: string): Promise<Resolved> {
    const canon = canonicalName(name);
    const cached = this.#known.get(canon);
    if (cached !== undefined) return { ok: true, user: cached, known: true };
    const rows = await this.#db.query<{ name: string; canon: string }>(
      `SELECT name, canon FROM users WHERE canon = $1 OR skel = $2`,
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
        if (rows.length > 0) await readFromLatest(tx, this.#db, name, LOBBY_KEY);
        return rows.length > 0;
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
    const claimed = await this.#db.transaction(async (tx) => {
      const rows = await tx.query(
        `INSERT INTO accounts (name, since) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING
         RETURNING name`,
        [user, Date.now()],
      );
      if (rows.length === 0) return false;
      await tx.query(`INSERT INTO tokens (hash, name, since) VALUES ($1, $2, $3)`, [
        session,
        user,
        Date.now(),
      ]);
      return true;
    });
    if (!claimed) {
      return {
        ok: false,
        reason: `${user} was just claimed by someone else`,
        code: "just_claimed",
      };
    }
    return { ok: true, session, token };
  }

  /** Whether a user has a password. */
  async hasPassword(user: string): Promise<boolean> {
    return (await this.#account(user))?.password !== undefined;
  }

  /** Sets a claimed user's password. */
  async setPassword(user: string, password: string): Promise<void> {
    const hash = await hashPassword(password, this.#iterations);
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
    if (!stored || !(await verifyPassword(password, stored))) return undefined;
    const token = newToken();
    await this.#issue(found.user, await hashToken(token));
    return { user: found.user, token };
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
