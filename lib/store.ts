/**
 * What `ChatHub` needs from durable storage, and nothing about how it is
 * kept. `SqlStore` (`sql/store.ts`) implements it on SQLite and PostgreSQL;
 * tests may hand the hub any other implementation (a failing one, say).
 *
 * @module
 */

import type { ChatMessage, ConversationSummary } from "./protocol.ts";

/**
 * A conversation's storage key: `r/<room>` or `d/<a>/<b>` with the two users
 * sorted, so both parties of a DM name the same conversation. Names never hold
 * `/`, so the key is unambiguous.
 */
export type ConversationKey = string;

/** The key of a room's conversation. */
export function roomKey(room: string): ConversationKey {
  return `r/${room}`;
}

/** The key of the DM between two users, the same whichever side asks. */
export function dmKey(a: string, b: string): ConversationKey {
  return a < b ? `d/${a}/${b}` : `d/${b}/${a}`;
}

/** The conversation a message (stored or not) belongs to. */
export function conversationOf(
  message: { room?: string; to?: string; from: string },
): ConversationKey {
  return message.room !== undefined ? roomKey(message.room) : dmKey(message.from, message.to!);
}

/** A message before the store gives it an id and a time. */
export interface NewMessage {
  /** The room, for a room message. */
  room?: string;
  /** The recipient, for a DM. */
  to?: string;
  /** The sender. */
  from: string;
  /** The text. */
  text: string;
  /** The sender's id for the message: a second append with the same sender and cid returns the first. */
  cid?: string;
}

/** Options of {@linkcode ChatStore.history}: the newest `limit` messages between `after` and `before`. */
export interface HistoryOptions {
  /** Only messages with a smaller id; up to the newest when absent. */
  before?: number;
  /** Only messages with a larger id; from the first when absent. */
  after?: number;
  /** How many messages at most. */
  limit: number;
}

/** A page of history, oldest first. */
export interface HistoryPage {
  /** The messages, oldest first. */
  messages: ChatMessage[];
  /** Whether older messages exist in the range asked for. */
  more: boolean;
}

/** What {@linkcode ChatStore.append} resolves with. */
export interface Appended {
  /** The message as stored. */
  message: ChatMessage;
  /** True when `(from, cid)` was stored before: this is the first copy, not a new message. */
  duplicate: boolean;
}

/** A room's settings. */
export interface RoomInfo {
  /** Invite-only: only members see its messages, history, members and typing. */
  private: boolean;
  /** Who created it. */
  owner: string;
}

/** What {@linkcode ChatStore.joinIfAllowed} decided. */
export interface JoinOutcome {
  /** `joined` now, a `member` already, or `forbidden` (private, not invited). */
  result: "joined" | "member" | "forbidden";
  /** Whether the room is private (false for a room this join created). */
  private: boolean;
}

/** Raised by a store that could not keep a message; the hub answers `store_failed`. */
export class StoreError extends Error {
  override name = "StoreError";
}

/**
 * Hears how one {@linkcode ChatStore.appendTo} ended: exactly one of its
 * methods is called, once.
 */
export interface AppendListener {
  /** The message is durable: as stored, or the copy stored before under its `(from, cid)`. */
  stored(result: Appended): void;
  /** The message could not be kept. */
  failed(error: StoreError): void;
}

/** What {@linkcode ChatStore.conversations} finds: the rooms' summaries, then a page of DMs. */
export interface Conversations {
  conversations: ConversationSummary[];
  /** Whether the user has more DMs than those listed. */
  dmsMore: boolean;
}

/** A page of a user's DMs, in the store's order of partner names. */
export interface DmPage {
  conversations: ConversationSummary[];
  /** Whether more follow the last one. */
  more: boolean;
}

/**
 * Durable storage for the chat.
 *
 * Read positions (what `conversations` reports as `read` and `unread`): a
 * newcomer starts at the latest message of every room they meet, so unread
 * counts only what arrived after they did.
 * - {@linkcode ChatStore.join} sets the joiner's read position in that room to
 *   its latest id (never lowering one they had).
 * - {@linkcode ChatStore.conversations} gives a room the user has no read
 *   position in (the lobby, the first time: at registration) one at its
 *   latest id, and keeps it, even at 0, so later messages count as unread.
 * - A DM has no read position until the user reads it: all of it is unread
 *   (nothing in it predates the user).
 * - Posting moves the sender's read position to their message;
 *   {@linkcode ChatStore.markRead} moves it forward, never back.
 */
export interface ChatStore {
  /**
   * Stores a message and resolves with it as stored (id and time set) once it
   * is durable. Rejects with {@linkcode StoreError} when it could not be kept.
   * A repeated `(from, cid)` resolves with the message stored the first time,
   * marked `duplicate`.
   */
  append(message: NewMessage): Promise<Appended>;
  /**
   * {@linkcode ChatStore.append} for the hot path, with no promise made for the
   * message: `listener` hears how it ended, never synchronously. What waits
   * for a commit is what each young-generation GC copies, and a message taken
   * through promises (the store's, the hub's, the connection's) held about 25
   * small objects while it waited.
   */
  appendTo(message: NewMessage, listener: AppendListener): void;
  /** A page of a conversation's history. */
  history(conversation: ConversationKey, options: HistoryOptions): Promise<HistoryPage>;
  /** The rooms a user has joined, the lobby excluded. */
  rooms(user: string): Promise<string[]>;
  /** A room's settings; undefined for a room nobody has joined yet. */
  room(room: string): Promise<RoomInfo | undefined>;
  /** Creates a room; false when it exists already. */
  createRoom(room: string, info: RoomInfo): Promise<boolean>;
  /**
   * Makes a user a member of a room (creating it public if new), using up any
   * invitation; the user's read position there starts at the room's latest message.
   */
  join(user: string, room: string): Promise<void>;
  /**
   * Makes a user a member of a room if the room lets them in, deciding and
   * writing as ONE atomic step (no create, invite or join by anyone else can
   * fall between the check and the write). In order:
   *
   * 1. The user is a member already: nothing is written; `"member"`.
   * 2. The room does not exist: it is created public, owned by the user, the
   *    user its first member; `"joined"`.
   * 3. The room is public: the user becomes a member; a pending invitation
   *    of theirs to it is used up; `"joined"`.
   * 4. The room is private and the user holds an invitation to it: the user
   *    becomes a member and the invitation is used up; `"joined"`.
   * 5. The room is private and the user holds no invitation: nothing is
   *    written; `"forbidden"`.
   *
   * Joining adds one to the room's member count (as `join` does). If the
   * room, the membership or the invitation changes while this runs (a
   * `createRoom` of the same name, say), the decision is taken again on what
   * is stored now: a join racing a private room's creation ends `"forbidden"`
   * or made the room (public) first, never a member of the private room.
   * `private` is the room's privacy as decided on.
   */
  joinIfAllowed(user: string, room: string): Promise<JoinOutcome>;
  /** Ends a user's membership of a room. */
  leave(user: string, room: string): Promise<void>;
  /** Invites a user to a room. */
  invite(user: string, room: string, by: string): Promise<void>;
  /** A user's pending invitations. */
  invites(user: string): Promise<Array<{ room: string; by: string }>>;
  /** Public rooms with their member counts, most members first. */
  publicRooms(limit: number): Promise<Array<{ room: string; members: number }>>;
  /**
   * A user's conversations with read state: the given rooms (a room the user
   * has no read position in gets one at its latest message), then the first
   * `dmLimit` of their DMs in partner order; `dmsMore` says whether more DMs
   * follow, paged with {@linkcode ChatStore.dms} from the last one listed.
   */
  conversations(user: string, rooms: string[], dmLimit: number): Promise<Conversations>;
  /** A page of a user's DMs with read state, in partner order after `after`. */
  dms(user: string, query: { after?: string; limit: number }): Promise<DmPage>;
  /**
   * Records that a user has read a conversation up to an id, never moving
   * backwards; resolves with the read id now stored.
   */
  markRead(user: string, conversation: ConversationKey, id: number): Promise<number>;
  /** Whether the store answers; for `/healthz`. */
  healthy(): Promise<boolean>;
  /** Finishes pending writes and releases the store. */
  close(): Promise<void>;
}
