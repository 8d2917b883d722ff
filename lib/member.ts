/**
 * What passes between the `ChatHub` and the connections of its
 * members, in both directions, so neither needs the other's class:
 *
 * - a connection asks the hub through a {@linkcode HubPort}: each operation
 *   (send, join, history, …) returns a {@linkcode Result} for the asker
 *   alone, which the connection turns into frames in its own protocol;
 * - the hub pushes what every member of a conversation gets (messages,
 *   typing, presence, joins, …) into a {@linkcode Member}, encoded once for
 *   all of them.
 *
 * @module
 */

import type { ErrorFrame, Outgoing } from "./frames.ts";
import type { ChatMessage, ConversationRef } from "./protocol.ts";
import type { ConversationKey, HistoryPage } from "./store.ts";

/** Limits the hub enforces; see `Settings` for what each means. */
export interface HubLimits {
  /** The largest frame a client may send, in bytes; above it the connection closes with 1009. */
  maxFrameBytes: number;
  /** The longest message text, in UTF-16 code units; above it an error frame `too_large`. */
  maxTextLength: number;
  /** The most bytes queued for one client before it is disconnected as a slow consumer. */
  maxBufferedBytes: number;
  /** The most messages one conversation's replay sends; older ones are paged with `history`. */
  replayLimit: number;
  /** The most rooms one user may be in, the lobby aside. */
  maxRoomsPerUser: number;
  /** Messages per second a user may send, on average (a token bucket's rate). */
  sendRate: number;
  /** Messages a user may send at once after a quiet spell (the bucket's size). */
  sendBurst: number;
  /**
   * Milliseconds between two `typing` frames relayed for one sender in one
   * conversation (more are dropped), and between two batched presence frames
   * (each user's latest state wins); 2000 when absent.
   */
  fanoutIntervalMs?: number;
  /** The most users a `welcome` lists as online; more are paged with `online` (200). */
  welcomeOnline?: number;
  /** The most DMs a `welcome` lists; more are paged with `dms` (200). */
  welcomeDms?: number;
  /** Bytes of frames one connection may have waiting to be handled; beyond, it closes with 1008 (1 MiB). */
  maxQueuedBytes?: number;
  /** Pending invitations one user may hold; more are refused (100). */
  maxInvitesPerUser?: number;
  /** Room names one user may bring into being, ever; more are refused (no limit when absent). */
  maxRoomsCreatedPerUser?: number;
}

/** Options of `ChatHub.connect`. */
export interface ConnectOptions {
  /** The (validated, normalised) username. */
  user: string;
  /** Whether the client speaks the original page's protocol rather than `chat.v1`. */
  legacy?: boolean;
  /**
   * Whether the client will send `resume` after `welcome`: live messages are
   * held until then, so replay and live traffic meet with no gap and no repeat.
   */
  resume?: boolean;
  /** The session (hash of the token) the connection authenticated with. */
  session?: string;
  /** A token just issued to this connection (it claimed the name): sent once, in `welcome`. */
  token?: string;
}

/**
 * One open connection of a user, as the hub sees it: who it is, and where
 * the hub pushes what all the members of a conversation get. Nothing in it
 * answers an operation: that is a {@linkcode Result}.
 */
export interface Member {
  /** The user it belongs to. */
  readonly user: string;
  /** Whether it speaks the original page's protocol (lobby and DMs only, no welcome). */
  readonly legacy: boolean;
  /** The session it authenticated with (the token's hash), if any. */
  readonly session: string | undefined;
  /** A token issued to it on connect, for its welcome. */
  readonly token: string | undefined;
  /** Whether its welcome has been sent (legacy members get none and count as welcomed). */
  readonly welcomed: boolean;
  /** Whether it has left the hub. */
  readonly closed: boolean;
  /** Resolves once the frames it took so far are handled (it never rejects). */
  readonly settled: Promise<void>;
  /** Sends the welcome (an encoded frame), then what reached it before. */
  welcome(text: string): void;
  /**
   * Delivers a stored message in conversation order: never twice, never
   * before an earlier one. `key` is the message's conversation, computed once
   * for all its recipients.
   */
  deliverMessage(message: ChatMessage, out: Outgoing, key: ConversationKey): void;
  /** Delivers a frame shared by many members, in its protocol (if it gets it at all). */
  deliverShared(out: Outgoing): void;
  /** Closes its socket with a close code (it leaves the hub when the close is reported). */
  closePeer(code: number, reason: string): void;
  /** Leaves the hub now. Idempotent. */
  close(): void;
}

/** An operation done; `reply`, when present, is an encoded frame for the asker alone. */
export interface Done {
  readonly ok: true;
  readonly reply?: string;
}

/** An operation refused, with the error frame to answer it. */
export interface Refused {
  readonly ok: false;
  readonly error: ErrorFrame;
  /** A rate limit's refusal: the asker's strikes count it (too many close the connection). */
  readonly strike?: boolean;
}

/** What an operation answers its asker. */
export type Result = Done | Refused;

/** An operation done that names a conversation the asker may read. */
export interface Found {
  readonly ok: true;
  readonly key: ConversationKey;
}

/**
 * A message taken for storing: the sender's copy, delivered with everyone's
 * once it is stored, is its acknowledgement.
 */
export interface Accepted {
  readonly ok: true;
  /**
   * Calls `listener` once, with how storing the message ended (at once if it
   * has): a callback rather than a promise, as nothing is made per message
   * for it to wait (see `ChatStore.appendTo`).
   */
  onStored(listener: (stored: Stored) => void): void;
}

/** A re-sent `cid`: the message stored the first time, for the re-sender alone. */
export interface Again {
  readonly ok: true;
  readonly again: ChatMessage;
}

/** How storing a message ended: stored and published, a re-send, or `store_failed`. */
export type Stored = Done | Again | Refused;

/**
 * What a connection asks of the hub. Every operation acts for `member`'s
 * user, resolves (never rejects: a store that fails answers `store_failed`)
 * and leaves nothing for the asker in the member itself.
 */
export interface HubPort {
  /** The limits the hub enforces. */
  readonly limits: HubLimits;
  /** Whether a shutdown has begun: no frame is taken any more. */
  readonly closing: boolean;
  /** Stores a room message, then publishes it. */
  send(
    member: Member,
    message: { room: string; from: string; text: string; cid?: string },
  ): Promise<Accepted | Refused>;
  /** Stores a DM to a known user, then publishes it. */
  sendDm(
    member: Member,
    message: { to: string; from: string; text: string; cid?: string },
  ): Promise<Accepted | Refused>;
  /** Joins a room (a private one needs an invitation). */
  join(member: Member, room: string): Promise<Result>;
  /** Leaves a room (not the lobby). */
  leave(member: Member, room: string): Promise<Result>;
  /** Creates a room (public or private) and joins it. */
  create(member: Member, frame: { room: string; private: boolean }): Promise<Result>;
  /** Invites a user to a room the asker is in. */
  invite(member: Member, frame: { room: string; user: string }): Promise<Result>;
  /** Lists public rooms; the reply is a `rooms` frame. */
  publicRooms(member: Member): Promise<Result>;
  /** A page of who is online (after `after`, in name order); the reply is an `online` frame. */
  onlinePage(member: Member, query: { after?: string; limit: number }): Promise<Result>;
  /** A page of the member's DMs (after `after`, in partner order); the reply is a `dms` frame. */
  dmPage(member: Member, query: { after?: string; limit: number }): Promise<Result>;
  /** Sets the password of the member's (claimed) name; the reply is `password_set`. */
  setPassword(member: Member, password: string): Promise<Result>;
  /** Revokes the member's token, or all of the user's, closing their sockets. */
  logout(member: Member, everywhere: boolean): Promise<Result>;
  /** Relays that the user is typing in a room or to a user. */
  typing(member: Member, where: { room: string } | { to: string }): Promise<Result>;
  /** A page of a conversation's history; the reply is a `history` frame. */
  history(
    member: Member,
    frame: ConversationRef & { before?: number; after?: number; limit?: number },
  ): Promise<Result>;
  /** Marks a conversation read up to an id (every tab of the user hears it). */
  read(member: Member, frame: ConversationRef & { id: number }): Promise<Result>;
  /** The key of a conversation the user may read, for a `resume`. */
  conversationKey(
    member: Member,
    options: { ref: ConversationRef; request: "history" | "read" | "resume" },
  ): Promise<Found | Refused>;
  /** The newest `replayLimit` messages after `after`, for a resume or a gap (it may reject). */
  replay(key: ConversationKey, after: number): Promise<HistoryPage>;
  /** Counts work a shutdown waits for before the store closes. */
  track<T>(work: Promise<T>): Promise<T>;
  /** Takes a member that closed out of the hub. */
  remove(member: Member): void;
}
