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

/**
 * The presence of a single process: the users with a connection here. Hubs
 * of one process may share it: a user is online while any of them holds a
 * connection of theirs (it counts the hubs that told it of an arrival).
 */
export class LocalPresence implements Presence {
  /** Per online user, how many hubs have a connection of theirs. */
  #users = new Map<string, number>();

  arrive(user: string): Promise<boolean> {
    const hubs = this.#users.get(user) ?? 0;
    this.#users.set(user, hubs + 1);
    return Promise.resolve(hubs === 0);
  }

  depart(user: string): Promise<boolean> {
    const hubs = this.#users.get(user);
    if (hubs === undefined) return Promise.resolve(false);
    if (hubs > 1) {
      this.#users.set(user, hubs - 1);
      return Promise.resolve(false);
    }
    this.#users.delete(user);
    return Promise.resolve(true);
  }

  online(): Promise<string[]> {
    return Promise.resolve([...this.#users.keys()]);
  }
}
