/**
 * Who is online. The hub tells a {@linkcode Presence} when a user's first
 * connection on this instance opens and when the last one closes; the
 * presence answers whether that changed the user's state for everyone, so
 * the hub announces only real changes. {@linkcode LocalPresence} is the
 * single-process one: online here is online everywhere.
 *
 * Several instances share a presence with expiry (see `pg_presence.ts`): each
 * instance renews its users, and a crashed instance's users go offline
 * everywhere once their entries expire.
 *
 * Who is online is read a page at a time, in name order ({@linkcode OnlineQuery}):
 * with thousands online, a `welcome` lists a bounded few and the count.
 *
 * @module
 */

/** Which page of who is online to read. */
export interface OnlineQuery {
  /** Only names after this one (in UTF-16 code unit order); from the first when absent. */
  after?: string;
  /** The most names to return. */
  limit: number;
}

/** A page of who is online. */
export interface OnlinePage {
  /** Names in UTF-16 code unit order, at most the query's `limit` (shared: never modified). */
  users: readonly string[];
  /** Whether more come after the last of `users`. */
  more: boolean;
  /** How many are online in all. */
  total: number;
}

/** Who is online, as every instance of one chat sees it. */
export interface Presence {
  /**
   * A user's first connection on this instance is open. Resolves true when the
   * user was offline everywhere before (the hub announces them online).
   */
  arrive(user: string): Promise<boolean>;
  /**
   * A user's last connection on this instance closed. Resolves true when the
   * user is now offline everywhere (the hub announces them offline).
   */
  depart(user: string): Promise<boolean>;
  /** A page of everyone online, on any instance, in name order. */
  online(query: OnlineQuery): Promise<OnlinePage>;
}

/** The greatest index whose name is at most `name` plus one: where names after it begin. */
function upperBound(names: readonly string[], name: string): number {
  let lo = 0, hi = names.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (names[mid] <= name) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * A set of names kept in UTF-16 code unit order, so a page after a cursor is
 * a binary search and a slice (an arrival or departure moves at most the
 * array's tail: microseconds for thousands of names), not a sort per read.
 */
export class SortedNames {
  #names: string[] = [];
  /**
   * The first page last read, kept (frozen) until a name within it changes: every `welcome`
   * reads the first page, and arrivals mostly change names beyond it.
   */
  #first: { limit: number; users: readonly string[] } | undefined;

  /** How many names it holds. */
  get size(): number {
    return this.#names.length;
  }

  /** Whether it holds a name. */
  has(name: string): boolean {
    const i = upperBound(this.#names, name) - 1;
    return i >= 0 && this.#names[i] === name;
  }

  /** Adds a name; true if it was not there. */
  add(name: string): boolean {
    const i = upperBound(this.#names, name);
    if (i > 0 && this.#names[i - 1] === name) return false;
    this.#names.splice(i, 0, name);
    this.#changed(i);
    return true;
  }

  /** Removes a name; true if it was there. */
  delete(name: string): boolean {
    const i = upperBound(this.#names, name) - 1;
    if (i < 0 || this.#names[i] !== name) return false;
    this.#names.splice(i, 1);
    this.#changed(i);
    return true;
  }

  /** A name at index `i` came or went: the kept first page is stale if `i` is within its reach. */
  #changed(i: number): void {
    if (this.#first && i < this.#first.limit) this.#first = undefined;
  }

  /**
   * Up to `limit` names after `after` (from the first when absent), and
   * whether more follow. The first page is shared by every read until it
   * changes (frozen); the others are the caller's.
   */
  page(query: OnlineQuery): { users: readonly string[]; more: boolean } {
    if (query.after === undefined) {
      let first = this.#first;
      if (first?.limit !== query.limit) {
        const users = Object.freeze(this.#names.slice(0, query.limit));
        this.#first = first = { limit: query.limit, users };
      }
      return { users: first.users, more: first.users.length < this.#names.length };
    }
    const from = upperBound(this.#names, query.after);
    const users = this.#names.slice(from, from + query.limit);
    return { users, more: from + users.length < this.#names.length };
  }

  /** Every name, in order. */
  [Symbol.iterator](): Iterator<string> {
    return this.#names[Symbol.iterator]();
  }
}

/**
 * The presence of a single process: the users with a connection here. Hubs
 * of one process may share it: a user is online while any of them holds a
 * connection of theirs (it counts the hubs that told it of an arrival).
 */
export class LocalPresence implements Presence {
  /** Per online user, how many hubs have a connection of theirs. */
  #hubs = new Map<string, number>();
  /** The online users in name order, for pages. */
  #users = new SortedNames();

  arrive(user: string): Promise<boolean> {
    const hubs = this.#hubs.get(user) ?? 0;
    this.#hubs.set(user, hubs + 1);
    if (hubs === 0) this.#users.add(user);
    return Promise.resolve(hubs === 0);
  }

  depart(user: string): Promise<boolean> {
    const hubs = this.#hubs.get(user);
    if (hubs === undefined) return Promise.resolve(false);
    if (hubs > 1) {
      this.#hubs.set(user, hubs - 1);
      return Promise.resolve(false);
    }
    this.#hubs.delete(user);
    this.#users.delete(user);
    return Promise.resolve(true);
  }

  online(query: OnlineQuery): Promise<OnlinePage> {
    return Promise.resolve({ ...this.#users.page(query), total: this.#users.size });
  }
}
