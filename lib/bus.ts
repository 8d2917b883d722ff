/**
 * The fan-out between hubs. Every event a hub wants its members to see goes
 * through a {@linkcode Bus}, its own local members included, so one process
 * and many processes behind a pub/sub engine deliver the same way: a hub
 * publishes, and every subscribed hub (itself too) delivers to the sockets it
 * holds. {@linkcode LocalBus} is the single-process bus; `pg_bus.ts` is the
 * one for several instances on one PostgreSQL.
 *
 * @module
 */

import type { ChatMessage, ConversationRef, Target } from "./protocol.ts";
import type { ConversationKey } from "./store.ts";

/** What travels between hubs. */
export type BusEvent =
  | { kind: "message"; message: ChatMessage }
  | ({ kind: "typing"; from: string } & Target)
  | { kind: "joined" | "left"; room: string; user: string }
  | ({ kind: "read"; user: string; id: number } & ConversationRef)
  | { kind: "presence"; user: string; online: boolean }
  | { kind: "invited"; user: string; room: string; by: string }
  | { kind: "revoked"; user: string; sessions: string[] | "all" }
  /** A name was claimed by `session`: every other connection on it closes (4003). */
  | { kind: "claimed"; user: string; session: string };

/** A subscriber to a {@linkcode Bus}. */
export type BusHandler = (event: BusEvent) => void;

/**
 * What a subscriber holds: a bus between instances brings a conversation's
 * messages (read from the store) only to instances that have members of it.
 */
export interface BusInterest {
  /** Whether this hub has local members of a conversation. */
  has(conversation: ConversationKey): boolean;
}

/** A fan-out channel shared by every hub of one chat. */
export interface Bus {
  /**
   * Sends an event to every subscriber, the publisher's own included. A
   * `message` must be stored already: the publisher's own subscribers get it
   * at once, other instances learn that its conversation moved and read it.
   */
  publish(event: BusEvent): void;
  /**
   * A message the store already held was sent again (its first sender may
   * have crashed between storing and publishing it): a bus between instances
   * makes sure every instance has delivered it, once. Optional: in one
   * process there is nobody it could have missed who does not reconnect.
   */
  reached?(message: ChatMessage): void;
  /** Adds a subscriber; disposing the result removes it. */
  subscribe(handler: BusHandler, interest?: BusInterest): Disposable;
}

/** The bus of a single process: delivery is a synchronous call. */
export class LocalBus implements Bus {
  #handlers = new Set<BusHandler>();

  publish(event: BusEvent): void {
    for (const handler of this.#handlers) handler(event);
  }

  subscribe(handler: BusHandler): Disposable {
    this.#handlers.add(handler);
    return { [Symbol.dispose]: () => void this.#handlers.delete(handler) };
  }
}
