/**
 * Limits that belong to a user rather than to a connection or an address:
 * the send budget (a token bucket) and the number of open connections.
 * {@linkcode LocalUserLimits} keeps them in this process; with several
 * instances they are kept in the shared database (see `pg_limits.ts`), so a
 * user cannot multiply them by spreading tabs over instances. Per-address
 * limits stay per instance (`limiter.ts`).
 *
 * @module
 */

import { OpenCounter } from "./limiter.ts";

/** What {@linkcode UserLimits.takeSend} resolves with. */
export type SendAllowance =
  | { ok: true }
  | {
    ok: false;
    /** Milliseconds until the next message would be allowed. */
    retryAfterMs: number;
  };

/** The limits themselves; see `Settings` for what each means. */
export interface UserLimitSettings {
  /** Messages per second a user may send, on average. */
  sendRate: number;
  /** Messages a user may send at once after a quiet spell. */
  sendBurst: number;
  /** Open connections per user. */
  maxConnectionsPerUser: number;
}

/** Per-user limits, shared by every instance of one chat. */
export interface UserLimits {
  /**
   * Takes one message from a user's send budget: at once where no I/O is
   * needed to decide (a process's own limits), so that a message waits for no
   * turn of the loop and makes no promise before it is queued for storing.
   */
  takeSend(user: string): SendAllowance | Promise<SendAllowance>;
  /**
   * Counts one more open connection for a user, unless the user is at the
   * limit: resolves with the function that counts it closed (idempotent), or
   * undefined when the user has too many.
   */
  openConnection(user: string): Promise<(() => void) | undefined>;
}

const ALLOWED: SendAllowance = Object.freeze({ ok: true });

/** Per-user limits of a single process. */
export class LocalUserLimits implements UserLimits {
  #settings: UserLimitSettings;
  #buckets = new Map<string, { tokens: number; at: number }>();
  #open = new OpenCounter();

  /** Limits as the settings say. */
  constructor(settings: UserLimitSettings) {
    this.#settings = settings;
  }

  takeSend(user: string): SendAllowance {
    const { sendRate, sendBurst } = this.#settings;
    const now = Date.now();
    let bucket = this.#buckets.get(user);
    if (bucket === undefined) {
      bucket = { tokens: sendBurst, at: now };
      this.#buckets.set(user, bucket);
    }
    bucket.tokens = Math.min(sendBurst, bucket.tokens + ((now - bucket.at) / 1000) * sendRate);
    bucket.at = now;
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return ALLOWED;
    }
    return { ok: false, retryAfterMs: Math.ceil(((1 - bucket.tokens) / sendRate) * 1000) };
  }

  openConnection(user: string): Promise<(() => void) | undefined> {
    if (this.#open.count(user) >= this.#settings.maxConnectionsPerUser) {
      return Promise.resolve(undefined);
    }
    return Promise.resolve(this.#open.open(user));
  }
}
