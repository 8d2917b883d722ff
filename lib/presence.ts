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
 * @module
 */

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
  /** Everyone online, on any instance. */
  online(): Promise<string[]>;
}

/** The presence of a single process: the users with a connection here. */
export class LocalPresence implements Presence {
  #users = new Set<string>();

  arrive(user: string): Promise<boolean> {
    const before = this.#users.size;
    this.#users.add(user);
    return Promise.resolve(this.#users.size > before);
  }

  depart(user: string): Promise<boolean> {
    return Promise.resolve(this.#users.delete(user));
  }

  online(): Promise<string[]> {
    return Promise.resolve([...this.#users]);
  }
}
