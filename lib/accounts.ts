/**
 * Who is who: registered names (compared canonically, look-alikes refused),
 * claimed names with their tokens, passwords, and revocation. Kept in the
 * same Deno KV as the chat.
 *
 * Keys:
 * - `["user", name]` → `{ since }`: the name as first spelled
 * - `["canon", canonicalName]` → name; `["skel", skeleton]` → name
 * - `["account", name]` → `{ since, password? }`: the name is claimed
 * - `["token", sha256(token)]` → `{ user, since }`; `["tokens", name, sha256]` → `true`
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
import { Semaphore } from "./semaphore.ts";
import { LogOnce } from "./log.ts";

const log = new LogOnce();

/** A name looked up: the registered spelling, or why it cannot be used. */
export type Resolved =
  | { ok: true; user: string; known: boolean }
  | { ok: false; reason: string };

/** The outcome of {@linkcode Accounts.authenticate}. */
export type Authenticated =
  | {
    ok: true;
    /** The session: the hash of the token the connection presented or was given. */
    session?: string;
    /** A token issued now, because this connection claimed the name. */
    token?: string;
  }
  | { ok: false; reason: string };

/** Options of {@linkcode Accounts.authenticate}. */
export interface AuthenticateOptions {
  /** The token the client presented, if any. */
  token?: string;
  /** Whether the client speaks the original protocol (it can neither claim nor present a token). */
  legacy: boolean;
}

/** The version of `skeleton()` the `["skel", …]` keys were made with (2: Unicode's data). */
const SKELETON_VERSION = 2;

interface Account {
  since: number;
  password?: PasswordHash;
}

/** Registered names, claims, tokens and passwords. */
export class Accounts {
  #kv: Deno.Kv;
  #iterations: number;
  /** Registered spelling by canonical name: names never change, so this cache never goes stale. */
  #known = new Map<string, string>();
  /** Resolves once the skeleton index is current (see {@linkcode Accounts.#indexSkeletons}). */
  #skeletons: Promise<void>;
  /** Password hashing, bounded: it is the one thing a client can make cost a CPU-second. */
  #hashing: Semaphore;

  /**
   * Accounts over a KV database; `iterations` is PBKDF2's work factor;
   * `maxConcurrentHashes` and `maxQueuedHashes` bound password hashing (beyond
   * both, `setPassword` and `login` reject with `BusyError`).
   */
  constructor(
    kv: Deno.Kv,
    options: { iterations?: number; maxConcurrentHashes?: number; maxQueuedHashes?: number } = {},
  ) {
    this.#kv = kv;
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
    const marker = await this.#kv.get<number>(["skel-version"]);
    if (marker.value === SKELETON_VERSION) return;
    for await (const entry of this.#kv.list<{ since: number }>({ prefix: ["user"] })) {
      const name = entry.key[1] as string;
      await this.#kv.atomic().check({ key: ["skel", skeleton(name)], versionstamp: null })
        .set(["skel", skeleton(name)], name).commit();
    }
    await this.#kv.set(["skel-version"], SKELETON_VERSION);
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
    const [byCanon, bySkeleton] = await this.#kv.getMany<[string, string]>([
      ["canon", canon],
      ["skel", skeleton(name)],
    ]);
    if (byCanon.value !== null) {
      this.#known.set(canon, byCanon.value);
      return { ok: true, user: byCanon.value, known: true };
    }
    if (bySkeleton.value !== null) {
      return { ok: false, reason: `too much like the name ${bySkeleton.value}; pick another` };
    }
    return { ok: true, user: name, known: false };
  }

  /** Registers a name (idempotent); resolves with the registered spelling, or why not. */
  async register(name: string): Promise<Resolved> {
    for (;;) {
      const found = await this.resolve(name);
      if (!found.ok || found.known) return found;
      const canon = canonicalName(name);
      const result = await this.#kv.atomic()
        .check({ key: ["canon", canon], versionstamp: null })
        .check({ key: ["skel", skeleton(name)], versionstamp: null })
        .set(["user", name], { since: Date.now() })
        .set(["canon", canon], name)
        .set(["skel", skeleton(name)], name)
        .commit();
      if (result.ok) {
        this.#known.set(canon, name);
        return { ok: true, user: name, known: true };
      }
      // Someone registered this name or a look-alike meanwhile: look again.
    }
  }

  /**
   * Registers a room's name (idempotent) so that no other room may look like
   * it: resolves ok, or with the room it is too much like. A name new here
   * counts against `by`'s rooms, at most `maxPerUser` (checked in the same
   * atomic commit). Room names come canonical (see protocol.ts).
   * Keys: `["roomskel", skeleton]` → room; `["rooms-made", user]` → count.
   */
  async registerRoom(room: string, by: string, maxPerUser = Infinity): Promise<Resolved> {
    const key = ["roomskel", skeleton(room)];
    const made = ["rooms-made", by];
    for (;;) {
      const [entry, count] = await this.#kv.getMany<[string, number]>([key, made]);
      if (entry.value === room) return { ok: true, user: room, known: true };
      if (entry.value !== null) {
        return { ok: false, reason: `too much like the room ${entry.value}; pick another name` };
      }
      const n = count.value ?? 0;
      if (n >= maxPerUser) {
        return { ok: false, reason: `at most ${maxPerUser} new rooms per user` };
      }
      const result = await this.#kv.atomic().check(entry).check(count).set(key, room)
        .set(made, n + 1).commit();
      if (result.ok) return { ok: true, user: room, known: false };
    }
  }

  /**
   * Decides whether a connection may be `user` (a registered spelling): a
   * claimed name needs one of its tokens; an unclaimed one is claimed by a
   * `chat.v1` client without a token, which gets a new one.
   */
  async authenticate(user: string, options: AuthenticateOptions): Promise<Authenticated> {
    const account = await this.#kv.get<Account>(["account", user]);
    if (options.legacy) {
      return account.value
        ? {
          ok: false,
          reason: `${user} is a claimed name; the original page can use only free names`,
        }
        : { ok: true };
    }
    if (options.token !== undefined) {
      const session = isTokenShaped(options.token) ? await hashToken(options.token) : "";
      const entry = session ? await this.#kv.get<{ user: string }>(["token", session]) : undefined;
      if (entry?.value?.user === user) return { ok: true, session };
      return {
        ok: false,
        reason: "this token is not valid for this name (logged out?); log in again",
      };
    }
    if (account.value) {
      return { ok: false, reason: `${user} is taken; log in with its password` };
    }
    const token = newToken();
    const session = await hashToken(token);
    const claimed = await this.#kv.atomic()
      .check(account)
      .set(["account", user], { since: Date.now() } satisfies Account)
      .set(["token", session], { user, since: Date.now() })
      .set(["tokens", user, session], true)
      .commit();
    if (!claimed.ok) return { ok: false, reason: `${user} was just claimed by someone else` };
    return { ok: true, session, token };
  }

  /** Whether a name is claimed (a `chat.v1` client holds its tokens). */
  async isClaimed(user: string): Promise<boolean> {
    return (await this.#kv.get<Account>(["account", user])).value !== null;
  }

  /** Whether a user has a password. */
  async hasPassword(user: string): Promise<boolean> {
    return (await this.#kv.get<Account>(["account", user])).value?.password !== undefined;
  }

  /** Sets a claimed user's password. */
  async setPassword(user: string, password: string): Promise<void> {
    const hash = await this.#hashing.run(() => hashPassword(password, this.#iterations));
    for (;;) {
      const account = await this.#kv.get<Account>(["account", user]);
      if (!account.value) throw new Error(`${user} is not claimed`);
      const result = await this.#kv.atomic().check(account)
        .set(["account", user], { ...account.value, password: hash } satisfies Account).commit();
      if (result.ok) return;
    }
  }

  /** Checks a name and password; on success issues a new token for a new device. */
  async login(
    name: string,
    password: string,
  ): Promise<{ user: string; token: string } | undefined> {
    const found = await this.resolve(name);
    if (!found.ok || !found.known) return undefined;
    const account = await this.#kv.get<Account>(["account", found.user]);
    const stored = account.value?.password;
    if (!stored || !(await this.#hashing.run(() => verifyPassword(password, stored)))) {
      return undefined;
    }
    const token = newToken();
    const session = await hashToken(token);
    await this.#kv.atomic()
      .set(["token", session], { user: found.user, since: Date.now() })
      .set(["tokens", found.user, session], true)
      .commit();
    return { user: found.user, token };
  }

  /** Revokes one session of a user, or all of them; resolves with those revoked. */
  async revoke(user: string, session?: string): Promise<string[]> {
    const sessions: string[] = [];
    if (session !== undefined) {
      sessions.push(session);
    } else {
      for await (const entry of this.#kv.list({ prefix: ["tokens", user] })) {
        sessions.push(entry.key[2] as string);
      }
    }
    for (let i = 0; i < sessions.length; i += 400) {
      const atomic = this.#kv.atomic();
      for (const s of sessions.slice(i, i + 400)) {
        atomic.delete(["token", s]).delete(["tokens", user, s]);
      }
      await atomic.commit();
    }
    return sessions;
  }
}
