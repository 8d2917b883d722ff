/**
 * The backend: everything the hub and the server keep outside themselves,
 * chosen once (in `main.ts`) from `--data`. One process keeps presence,
 * per-user limits and fan-out in memory ({@linkcode localBackend}); several
 * instances on one PostgreSQL share all of them through the database
 * (`pg_backend.ts`).
 *
 * @module
 */

import type { Accounts } from "./accounts.ts";
import { type Bus, LocalBus } from "./bus.ts";
import { LocalPresence, type Presence } from "./presence.ts";
import type { ChatStore } from "./store.ts";
import { LocalUserLimits, type UserLimits, type UserLimitSettings } from "./user_limits.ts";

/** Store, accounts, presence, per-user limits and fan-out, as one. */
export interface Backend {
  /** Where the data lives, for the start-up line (never a password). */
  readonly where: string;
  /** Messages, rooms, memberships, read state. */
  readonly store: ChatStore;
  /** Names, tokens, passwords. */
  readonly accounts: Accounts;
  /** Who is online. */
  readonly presence: Presence;
  /** Send budgets and connections per user. */
  readonly userLimits: UserLimits;
  /** Fan-out between hubs. */
  readonly bus: Bus;
  /** Stops the backend's timers and listeners, then closes the store. */
  close(): Promise<void>;
}

/** Options of {@linkcode localBackend}. */
export interface LocalBackendOptions {
  /** Where the data lives, for the start-up line. */
  where: string;
  /** The store; closed with the backend. */
  store: ChatStore;
  /** The accounts. */
  accounts: Accounts;
  /** The per-user limits. */
  limits: UserLimitSettings;
}

/** The backend of a single process: presence, limits and fan-out in memory. */
export function localBackend(options: LocalBackendOptions): Backend {
  return {
    where: options.where,
    store: options.store,
    accounts: options.accounts,
    presence: new LocalPresence(),
    userLimits: new LocalUserLimits(options.limits),
    bus: new LocalBus(),
    close: () => options.store.close(),
  };
}
