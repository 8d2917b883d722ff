/**
 * What the hub needs of a connection, and the close codes it uses. A Deno
 * `WebSocket` is a {@linkcode Peer} as it is; tests use plain objects.
 *
 * @module
 */

/** A connection as the hub sees it: the smallest part of a WebSocket it needs. */
export interface Peer {
  /** Sends one text frame. */
  send(data: string): void;
  /** Closes the connection with a code and a reason. */
  close(code?: number, reason?: string): void;
  /** Bytes queued for sending and not yet written to the network. */
  readonly bufferedAmount: number;
}

/** Close codes the hub uses. */
export const CloseCode = {
  /** The server is shutting down; reconnect. */
  GoingAway: 1001,
  /** A frame above `maxFrameBytes`. */
  TooBig: 1009,
  /** The store failed while the connection was opening. */
  InternalError: 1011,
  /** Rate limits broken again and again. */
  PolicyViolation: 1008,
  /** The client fell behind by more than `maxBufferedBytes`; reconnect and catch up. */
  SlowConsumer: 4000,
  /** The session was logged out (revoked). */
  LoggedOut: 4001,
  /** The name is claimed and the connection did not prove it owns it. */
  Forbidden: 4003,
} as const;
