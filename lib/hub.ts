/**
 * `ChatHub`: the rooms, the members and the routing of frames. It knows
 * frames and peers, not sockets or Deno: a connection is a {@linkcode Peer}
 * (send, close, bufferedAmount), storage is a {@linkcode ChatStore}, and
 * fan-out between processes is a {@linkcode Bus}. That keeps it testable
 * with plain objects and lets another transport or backplane plug in.
 *
 * The order of things for a message: parse → authorise → store (durable) →
 * publish on the bus → every hub delivers to its local members. Nobody, the
 * sender included, sees a message before it is stored, and the sender's own
 * copy is its acknowledgement.
 *
 * @module
 */

import type { Accounts } from "./accounts.ts";
import { type Bus, type BusEvent, LocalBus } from "./bus.ts";
import {
  type ChatMessage,
  type ConversationRef,
  type ErrorCode,
  HISTORY_DEFAULT,
  LOBBY,
  parseClientFrame,
  parseLegacyFrame,
  type ResumePoint,
  type ServerFrame,
  toLegacy,
  toLegacyError,
} from "./protocol.ts";
import {
  type ChatStore,
  type ConversationKey,
  dmKey,
  type HistoryPage,
  roomKey,
  StoreError,
} from "./store.ts";

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
}

/** Options of {@linkcode ChatHub}. */
export interface ChatHubOptions {
  /** Where messages, members and read state are kept. */
  store: ChatStore;
  /** The fan-out between hubs; a {@linkcode LocalBus} when absent. */
  bus?: Bus;
  /** Registered names, tokens and passwords. */
  accounts: Accounts;
  /** The limits to enforce. */
  limits: HubLimits;
}

/** Options of {@linkcode ChatHub.connect}. */
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

/** Counters for `/healthz`. */
export interface HubStats {
  /** Open connections. */
  connections: number;
  /** Distinct users with at least one open connection. */
  usersOnline: number;
}

type ErrorFrame = Extract<ServerFrame, { type: "error" }>;

/** The storage key of a message's conversation. */
function conversationKey(message: ChatMessage): ConversationKey {
  return message.room !== undefined ? roomKey(message.room) : dmKey(message.from, message.to!);
}

/** What an error frame may say besides its code: a message, the cid refused, the request. */
interface ErrorDetail {
  message: string;
  ref?: string;
  request?: ErrorFrame["request"];
}

function errorFrame(code: ErrorCode, detail: ErrorDetail): ErrorFrame {
  const frame: ErrorFrame = { type: "error", code, message: detail.message };
  if (detail.ref !== undefined) frame.ref = detail.ref;
  if (detail.request !== undefined) frame.request = detail.request;
  return frame;
}

const encoder = new TextEncoder();

/** UTF-8 size of a string, computed only when the cheap bounds cannot decide. */
function exceedsBytes(data: string, max: number): boolean {
  if (data.length > max) return true;
  if (data.length * 3 <= max) return false;
  return encoder.encode(data).length > max;
}

/** One frame encoded lazily, once per shape, however many recipients it has. */
class Outgoing {
  #frame: ServerFrame;
  #legacy: () => string | undefined;
  #v1?: string;
  #legacyText?: string | null;

  constructor(frame: ServerFrame, legacy: () => string | undefined = () => undefined) {
    this.#frame = frame;
    this.#legacy = legacy;
  }

  get v1(): string {
    return this.#v1 ??= JSON.stringify(this.#frame);
  }

  get legacy(): string | undefined {
    if (this.#legacyText === undefined) this.#legacyText = this.#legacy() ?? null;
    return this.#legacyText ?? undefined;
  }
}

/**
 * One client connection inside the hub. Frames are handled in the order they
 * arrive; the adapter calls {@linkcode Connection.receive} and
 * {@linkcode Connection.close} and nothing else.
 */
export class Connection {
  /** The user this connection belongs to. */
  readonly user: string;
  /** Whether it speaks the original page's protocol. */
  readonly legacy: boolean;
  /** Resolves once the welcome is sent (or the connection closed first). */
  readonly ready: Promise<void>;
  /** The session it authenticated with (the token's hash), if any. */
  readonly session: string | undefined;
  /** A token issued to it on connect, for its welcome. */
  readonly token: string | undefined;
  /** Refusals by the rate limiter in the current minute, and when that minute started. */
  #strikes = { count: 0, since: 0 };
  #hub: ChatHub;
  #peer: Peer;
  #chain: Promise<void>;
  #closed = false;

  /**
   * Messages to this connection, by conversation: the newest id it was sent
   * (so nothing goes twice or out of order) ...
   */
  #cursors = new Map<ConversationKey, number>();
  /** ... and, while a gap is being read from the store, the live ones that wait behind it. */
  #waiting = new Map<ConversationKey, Array<[ChatMessage, Outgoing]>>();
  /** Whether the client connected with `?resume`. */
  #resumable: boolean;
  /** Live messages held until the client's `resume` (when it connected with `?resume`). */
  #held: Array<[ChatMessage, Outgoing]> | undefined;

  /** @internal Made by {@linkcode ChatHub.connect}. */
  constructor(init: {
    hub: ChatHub;
    peer: Peer;
    options: ConnectOptions;
    open: (conn: Connection) => Promise<void>;
  }) {
    this.#hub = init.hub;
    this.#peer = init.peer;
    this.user = init.options.user;
    this.legacy = init.options.legacy ?? false;
    this.session = init.options.session;
    this.token = init.options.token;
    this.#resumable = (init.options.resume ?? false) && !this.legacy;
    if (this.#resumable) this.#held = [];
    // Later frames wait for the welcome, so they are handled in arrival order after it.
    this.ready = Promise.resolve().then(() => init.open(this));
    this.#chain = this.ready;
  }

  /** Whether {@linkcode Connection.close} has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Handles one frame from the client: a string for text, bytes for binary. */
  receive(data: string | ArrayBuffer | Uint8Array | Blob): void {
    // While shutting down nothing new is taken: unacknowledged sends are re-sent to the next process.
    if (this.#closed || this.#hub.closing) return;
    const limits = this.#hub.limits;
    if (typeof data !== "string") {
      const size = data instanceof Blob ? data.size : data.byteLength;
      if (size > limits.maxFrameBytes) return this.#tooBig();
      this.error(
        errorFrame("binary_unsupported", { message: "send JSON text frames, not binary" }),
      );
      return;
    }
    if (exceedsBytes(data, limits.maxFrameBytes)) return this.#tooBig();
    // Sequential: a `send` after a `join` must see the membership the join made.
    this.#chain = this.#chain.then(() => this.#handle(data)).catch((error) => {
      console.error("unexpected error handling a frame", error);
      this.error(errorFrame("bad_frame", { message: "the server could not handle this frame" }));
    });
  }

  #tooBig(): void {
    this.#peer.close(
      CloseCode.TooBig,
      `frames are limited to ${this.#hub.limits.maxFrameBytes} bytes`,
    );
    this.close();
  }

  async #handle(data: string): Promise<void> {
    if (this.#closed) return;
    const hub = this.#hub;
    if (this.legacy) {
      const parsed = parseLegacyFrame(data, hub.limits);
      if (!parsed.ok) return this.error(parsed.error);
      const { to_user: to, msg: text } = parsed.frame;
      if (to === undefined) return hub.send(this, { room: LOBBY, from: this.user, text });
      return await hub.sendDm(this, { to, from: this.user, text });
    }
    const parsed = parseClientFrame(data, hub.limits);
    if (!parsed.ok) return this.error(parsed.error);
    const frame = parsed.frame;
    switch (frame.type) {
      case "ping":
        return this.deliver(JSON.stringify({ type: "pong" }));
      case "join":
        return await hub.join(this, frame.room);
      case "leave":
        return await hub.leave(this, frame.room);
      case "send":
        if (frame.room !== undefined) {
          return hub.send(this, {
            room: frame.room,
            from: this.user,
            text: frame.text,
            cid: frame.cid,
          });
        }
        return await hub.sendDm(this, {
          to: frame.to,
          from: this.user,
          text: frame.text,
          cid: frame.cid,
        });
      case "typing":
        return await hub.typing(
          this,
          frame.room !== undefined ? { room: frame.room } : { to: frame.to },
        );
      case "history":
        // Reads need no ordering with later frames: let them run beside the chain.
        void hub.history(this, frame).catch((error) => this.#storeError(error));
        return;
      case "read":
        void hub.read(this, frame).catch((error) => this.#storeError(error));
        return;
      case "resume":
        return await this.#resume(frame.conversations);
      case "create":
        return await hub.create(this, frame);
      case "invite":
        return await hub.invite(this, frame);
      case "rooms":
        return await hub.publicRooms(this);
      case "set_password":
        return await hub.setPassword(this, frame.password);
      case "logout":
        return await hub.logout(this, frame.everywhere);
    }
  }

  /**
   * @internal Counts a refusal by the rate limiter; past a minute's worth of
   * them the client is abusive, and is closed with 1008.
   */
  strike(): void {
    const now = Date.now();
    if (now - this.#strikes.since > 60_000) this.#strikes = { count: 0, since: now };
    if (++this.#strikes.count > this.#hub.limits.sendBurst * 5) {
      this.closePeer(CloseCode.PolicyViolation, "too many messages; slow down");
      this.close();
    }
  }

  async #resume(points: ResumePoint[]): Promise<void> {
    const hub = this.#hub;
    for (const point of points) {
      const key = await hub.conversationKey(this, { ref: point, request: "resume" });
      if (key === undefined) continue;
      // A cursor already past `after` means those messages were sent on this connection.
      const after = Math.max(point.after, this.#cursors.get(key) ?? 0);
      this.#cursors.set(key, after);
      const ref: ConversationRef = point.room !== undefined
        ? { room: point.room }
        : { with: point.with };
      this.#fill(key, { after, ref, announce: true });
    }
    const held = this.#held;
    this.#held = undefined;
    for (const [message, out] of held ?? []) this.deliverMessage(message, out);
  }

  /**
   * Sends a conversation's messages after `after` from the store, newest
   * `replayLimit` at most, holding live ones until done. With `announce`, ends
   * with a `resumed` frame saying what was replayed and whether older ones remain.
   */
  #fill(
    key: ConversationKey,
    options: { after: number; ref: ConversationRef; announce: boolean },
  ): void {
    if (this.#waiting.has(key)) return;
    this.#waiting.set(key, []);
    const { after, ref, announce } = options;
    this.#hub.replay(key, after).then((page) => {
      if (this.#closed) return;
      for (const message of page.messages) {
        if (message.id <= (this.#cursors.get(key) ?? 0)) continue;
        this.#cursors.set(key, message.id);
        this.deliver(JSON.stringify({ type: "message", ...message } satisfies ServerFrame));
      }
      // A gap longer than a replay is said out loud, so the client pages the rest with `history`.
      if (announce || page.more) {
        const first = page.messages[0]?.id ?? 0;
        const last = page.messages.at(-1)?.id ?? 0;
        this.deliver(JSON.stringify(
          {
            type: "resumed",
            ...ref,
            after,
            from: first,
            to: last,
            more: page.more,
          } satisfies ServerFrame,
        ));
      }
      const waiting = this.#waiting.get(key) ?? [];
      this.#waiting.delete(key);
      for (const [message, out] of waiting) this.deliverMessage(message, out);
    }).catch((error) => {
      // Better to drop the connection than to leave a hole: the client resumes on reconnect.
      console.error("replay failed", error);
      this.closePeer(CloseCode.InternalError, "could not read history; reconnect to resume");
      this.close();
    });
  }

  /**
   * @internal Answers a re-sent cid with its stored message. A resuming client's
   * cursor says what it has, so the usual ordering applies (it got this copy in
   * its replay if it lacked it); any other client gets the copy as its
   * acknowledgement even if it is older than live traffic it has seen.
   */
  acknowledgeAgain(message: ChatMessage): void {
    const out = new Outgoing({ type: "message", ...message });
    if (this.#resumable) return this.deliverMessage(message, out);
    this.deliverShared(out);
  }

  /** The conversation of a message as this connection's user names it. */
  #refOf(message: ChatMessage): ConversationRef {
    if (message.room !== undefined) return { room: message.room };
    return { with: message.from === this.user ? message.to! : message.from };
  }

  /**
   * @internal Delivers a stored message in conversation order: never twice,
   * never before an earlier one; a gap is filled from the store first.
   */
  deliverMessage(message: ChatMessage, out: Outgoing): void {
    if (this.#closed) return;
    if (this.legacy) return this.deliverShared(out);
    if (this.#held) {
      if (this.#held.length >= this.#hub.limits.replayLimit) {
        this.closePeer(CloseCode.SlowConsumer, "resume was never sent; reconnect");
        return this.close();
      }
      this.#held.push([message, out]);
      return;
    }
    const key = conversationKey(message);
    const waiting = this.#waiting.get(key);
    if (waiting) return void waiting.push([message, out]);
    // A client that resumes knows every conversation it named; of a DM it did not name it
    // has nothing, so even a first live message there is checked for a gap from 0.
    const cursor = this.#cursors.get(key) ??
      (this.#resumable && message.to !== undefined ? 0 : undefined);
    if (cursor !== undefined && message.id <= cursor) return;
    if (cursor !== undefined && message.id > cursor + 1) {
      this.#fill(key, { after: cursor, ref: this.#refOf(message), announce: false });
      this.#waiting.get(key)!.push([message, out]);
      return;
    }
    this.#cursors.set(key, message.id);
    this.deliverShared(out);
  }

  #storeError(error: unknown): void {
    console.error("store read failed", error);
    this.error(errorFrame("store_failed", { message: "the store did not answer; try again" }));
  }

  /** Sends an error frame in this connection's protocol. */
  error(frame: ErrorFrame): void {
    this.deliver(this.legacy ? toLegacyError(frame) : JSON.stringify(frame));
  }

  /** Sends an encoded frame, or disconnects a client that stopped reading. */
  deliver(text: string): void {
    if (this.#closed) return;
    if (this.#peer.bufferedAmount > this.#hub.limits.maxBufferedBytes) {
      this.#peer.close(CloseCode.SlowConsumer, "too far behind; reconnect to catch up");
      this.close();
      return;
    }
    try {
      this.#peer.send(text);
    } catch {
      // The socket closed under us; its close event will follow.
      this.close();
    }
  }

  /** @internal Sends a shared frame in this connection's protocol. */
  deliverShared(out: Outgoing): void {
    if (!this.legacy) return this.deliver(out.v1);
    const text = out.legacy;
    if (text !== undefined) this.deliver(text);
  }

  /** @internal Closes the peer, as the hub's shutdown does. */
  closePeer(code: number, reason: string): void {
    try {
      this.#peer.close(code, reason);
    } catch {
      // Already closed.
    }
  }

  /** Leaves the hub. Idempotent: a socket may report its close more than once. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#hub.remove(this);
  }
}

/** Routes frames between the members of rooms and DMs. */
export class ChatHub {
  /** The limits this hub enforces. */
  readonly limits: HubLimits;
  #store: ChatStore;
  #bus: Bus;
  #subscription: Disposable;
  /** Open, welcomed connections by user. */
  #users = new Map<string, Set<Connection>>();
  /** Local users by room they belong to (the lobby holds everyone). */
  #members = new Map<string, Set<string>>();
  #accounts: Accounts;
  /** Whether a room is private, as far as this hub has looked. */
  #privacy = new Map<string, boolean>();
  /** Send budgets by user: a token bucket each. */
  #buckets = new Map<string, { tokens: number; at: number }>();
  #connections = 0;
  #shuttingDown = false;
  /** Appends not yet settled: shutdown waits for them, so their senders get their acks. */
  #inflight = new Set<Promise<unknown>>();

  /** Makes a hub over a store and a bus. */
  constructor(options: ChatHubOptions) {
    this.limits = options.limits;
    this.#store = options.store;
    this.#accounts = options.accounts;
    this.#bus = options.bus ?? new LocalBus();
    this.#subscription = this.#bus.subscribe((event) => this.#onEvent(event));
  }

  /** Counters for health checks. */
  get stats(): HubStats {
    return { connections: this.#connections, usersOnline: this.#users.size };
  }

  /** Users with at least one open connection here. */
  online(): string[] {
    return [...this.#users.keys()];
  }

  /**
   * Accepts a connection for a user: records the user, loads its rooms, sends
   * `welcome` (chat.v1 only), then starts delivering to it.
   */
  connect(peer: Peer, options: ConnectOptions): Connection {
    const conn = new Connection({
      hub: this,
      peer,
      options,
      open: (c) =>
        this.#open(c).catch((error) => {
          console.error("could not open a connection", error);
          c.closePeer(CloseCode.InternalError, "the store did not answer; try again");
          c.close();
        }),
    });
    this.#connections++;
    return conn;
  }

  async #open(conn: Connection): Promise<void> {
    const user = conn.user;
    const registered = await this.#accounts.register(user);
    if (!registered.ok || registered.user !== user) {
      conn.closePeer(
        CloseCode.Forbidden,
        registered.ok ? "use your registered name" : registered.reason,
      );
      return conn.close();
    }
    const rooms = [LOBBY, ...(await this.#store.rooms(user)).filter((r) => r !== LOBBY)];
    const [conversations, invites, password, infos] = conn.legacy
      ? [[], [], false, []]
      : await Promise.all([
        this.#store.conversations(user, rooms),
        this.#store.invites(user),
        this.#accounts.hasPassword(user),
        Promise.all(rooms.map((r) => this.#isPrivate(r))),
      ]);
    if (conn.closed) return;
    if (this.#shuttingDown) return conn.closePeer(CloseCode.GoingAway, "server shutting down");
    const first = !this.#users.has(user);
    if (first) {
      this.#users.set(user, new Set());
      for (const room of rooms) this.#memberSet(room).add(user);
    }
    this.#users.get(user)!.add(conn);
    if (!conn.legacy) {
      conn.deliver(JSON.stringify(
        {
          type: "welcome",
          user,
          rooms: first ? rooms : this.#roomsOf(user),
          online: this.online(),
          conversations,
          privateRooms: rooms.filter((_, i) => infos[i]),
          invites,
          ...(conn.token === undefined ? {} : { token: conn.token }),
          account: { password },
          limits: {
            maxTextLength: this.limits.maxTextLength,
            maxFrameBytes: this.limits.maxFrameBytes,
            replayLimit: this.limits.replayLimit,
          },
        } satisfies ServerFrame,
      ));
    }
    if (first) this.#bus.publish({ kind: "presence", user, online: true });
  }

  #memberSet(room: string): Set<string> {
    let set = this.#members.get(room);
    if (!set) this.#members.set(room, set = new Set());
    return set;
  }

  #roomsOf(user: string): string[] {
    const rooms = [LOBBY];
    for (const [room, members] of this.#members) {
      if (room !== LOBBY && members.has(user)) rooms.push(room);
    }
    return rooms;
  }

  #isMember(user: string, room: string): boolean {
    return room === LOBBY || (this.#members.get(room)?.has(user) ?? false);
  }

  /** The registered spelling of a user's name (`ALICE` → `alice`), or undefined if unknown. */
  async #resolveUser(name: string): Promise<string | undefined> {
    const found = await this.#accounts.resolve(name);
    return found.ok && found.known ? found.user : undefined;
  }

  async #isPrivate(room: string): Promise<boolean> {
    if (room === LOBBY) return false;
    const cached = this.#privacy.get(room);
    if (cached !== undefined) return cached;
    const info = await this.#store.room(room);
    // Unknown rooms are not cached: one may be created (private) at any moment.
    if (info) this.#privacy.set(room, info.private);
    return info?.private ?? false;
  }

  /**
   * Takes one message from a user's send budget; false (and an error frame
   * with `retry_after`) when it is spent.
   */
  #allowSend(conn: Connection, request: ErrorDetail["request"] & object, cid?: string): boolean {
    const { sendRate, sendBurst } = this.limits;
    const now = Date.now();
    const bucket = this.#buckets.get(conn.user) ?? { tokens: sendBurst, at: now };
    bucket.tokens = Math.min(sendBurst, bucket.tokens + ((now - bucket.at) / 1000) * sendRate);
    bucket.at = now;
    this.#buckets.set(conn.user, bucket);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return true;
    }
    const retryAfter = Math.ceil(((1 - bucket.tokens) / sendRate) * 1000);
    conn.error({
      ...errorFrame("rate_limited", {
        message: `at most ${sendRate} messages a second (bursts of ${sendBurst}); wait a moment`,
        ref: cid,
        request,
      }),
      retry_after: retryAfter,
    });
    conn.strike();
    return false;
  }

  /** @internal Stores a room message, then publishes it. */
  send(
    conn: Connection,
    message: { room: string; from: string; text: string; cid?: string },
  ): void {
    const request = { type: "send", room: message.room } as const;
    if (!this.#isMember(conn.user, message.room)) {
      return conn.error(
        errorFrame("not_member", {
          message: `join ${message.room} before sending to it`,
          ref: message.cid,
          request,
        }),
      );
    }
    if (this.#allowSend(conn, request, message.cid)) this.#append(conn, message);
  }

  /** @internal Stores a DM to a known user, then publishes it. */
  async sendDm(
    conn: Connection,
    message: { to: string; from: string; text: string; cid?: string },
  ): Promise<void> {
    const request = { type: "send", to: message.to } as const;
    const to = await this.#resolveUser(message.to);
    if (to === undefined) {
      return conn.error(errorFrame("unknown_user", {
        message: `no user is called ${message.to}`,
        ref: message.cid,
        request,
      }));
    }
    if (this.#allowSend(conn, request, message.cid)) this.#append(conn, { ...message, to });
  }

  #append(
    conn: Connection,
    message: { room?: string; to?: string; from: string; text: string; cid?: string },
  ): void {
    // Not awaited: appends queue in arrival order, so a sender's messages keep
    // their order while the next frame is already being read.
    const done: Promise<unknown> = this.#store.append(message).then(
      ({ message: stored, duplicate }) => {
        if (!duplicate) return this.#bus.publish({ kind: "message", message: stored });
        // A re-send of a stored message: everyone had it already; answer only the sender.
        conn.acknowledgeAgain(stored);
      },
      (error) => {
        if (!(error instanceof StoreError)) console.error("unexpected store error", error);
        conn.error(
          errorFrame("store_failed", {
            message: "the message could not be stored; it was not sent",
            ref: message.cid,
            request: message.room !== undefined
              ? { type: "send", room: message.room }
              : { type: "send", to: message.to },
          }),
        );
      },
    );
    this.#inflight.add(done);
    done.finally(() => this.#inflight.delete(done));
  }

  /** @internal */
  async join(conn: Connection, room: string): Promise<void> {
    if (this.#isMember(conn.user, room)) {
      return conn.deliver(
        JSON.stringify({ type: "joined", room, user: conn.user } satisfies ServerFrame),
      );
    }
    const request = { type: "join", room } as const;
    if (this.#roomsOf(conn.user).length - 1 >= this.limits.maxRoomsPerUser) {
      return conn.error(errorFrame("too_many_rooms", {
        message: `at most ${this.limits.maxRoomsPerUser} rooms; leave one first`,
        request,
      }));
    }
    if (await this.#isPrivate(room)) {
      const invited = (await this.#store.invites(conn.user)).some((i) => i.room === room);
      if (!invited) {
        return conn.error(
          errorFrame("forbidden", {
            message: `${room} is private: ask for an invitation`,
            request,
          }),
        );
      }
    }
    await this.#store.join(conn.user, room);
    // Applied here too, not only when the event comes back: a `send` right
    // after `join` on this connection must already see the membership.
    this.#memberSet(room).add(conn.user);
    this.#bus.publish({ kind: "joined", room, user: conn.user });
  }

  /** @internal */
  async leave(conn: Connection, room: string): Promise<void> {
    if (room === LOBBY) {
      return conn.error(errorFrame("bad_frame", {
        message: "everyone stays in the lobby",
        request: { type: "leave", room },
      }));
    }
    if (!this.#isMember(conn.user, room)) {
      return conn.error(errorFrame("not_member", {
        message: `you are not in ${room}`,
        request: { type: "leave", room },
      }));
    }
    await this.#store.leave(conn.user, room);
    this.#bus.publish({ kind: "left", room, user: conn.user });
  }

  /** @internal Creates a room (public or private) and joins it. */
  async create(conn: Connection, frame: { room: string; private: boolean }): Promise<void> {
    const request = { type: "create", room: frame.room } as const;
    if (
      frame.room === LOBBY ||
      !(await this.#store.createRoom(frame.room, { private: frame.private, owner: conn.user }))
    ) {
      return conn.error(
        errorFrame("room_exists", { message: `${frame.room} exists already: join it`, request }),
      );
    }
    this.#privacy.set(frame.room, frame.private);
    if (frame.private) await this.#store.invite(conn.user, frame.room, conn.user);
    await this.join(conn, frame.room);
  }

  /** @internal Invites a user to a room the inviter is in. */
  async invite(conn: Connection, frame: { room: string; user: string }): Promise<void> {
    const request = { type: "invite", room: frame.room } as const;
    if (!this.#isMember(conn.user, frame.room) || frame.room === LOBBY) {
      return conn.error(
        errorFrame("not_member", { message: `you are not in ${frame.room}`, request }),
      );
    }
    const user = await this.#resolveUser(frame.user);
    if (user === undefined) {
      return conn.error(
        errorFrame("unknown_user", { message: `no user is called ${frame.user}`, request }),
      );
    }
    await this.#store.invite(user, frame.room, conn.user);
    this.#bus.publish({ kind: "invited", user, room: frame.room, by: conn.user });
  }

  /** @internal Lists public rooms for discovery. */
  async publicRooms(conn: Connection): Promise<void> {
    const rooms = await this.#store.publicRooms(100);
    conn.deliver(JSON.stringify({ type: "rooms", rooms } satisfies ServerFrame));
  }

  /** @internal Sets the password of the connection's (claimed) name. */
  async setPassword(conn: Connection, password: string): Promise<void> {
    if (conn.session === undefined) {
      return conn.error(errorFrame("forbidden", {
        message: "only a signed-in chat.v1 connection can set a password",
        request: { type: "set_password" },
      }));
    }
    await this.#accounts.setPassword(conn.user, password);
    conn.deliver(JSON.stringify({ type: "password_set" } satisfies ServerFrame));
  }

  /** @internal Revokes this connection's token, or all of the user's, closing their sockets. */
  async logout(conn: Connection, everywhere: boolean): Promise<void> {
    const sessions = await this.#accounts.revoke(conn.user, everywhere ? undefined : conn.session);
    this.#bus.publish({
      kind: "revoked",
      user: conn.user,
      sessions: everywhere ? "all" : sessions,
    });
  }

  /** @internal */
  async typing(conn: Connection, where: { room: string } | { to: string }): Promise<void> {
    if ("room" in where) {
      if (!this.#isMember(conn.user, where.room)) {
        return conn.error(errorFrame("not_member", {
          message: `you are not in ${where.room}`,
          request: { type: "typing", room: where.room },
        }));
      }
      return this.#bus.publish({ kind: "typing", room: where.room, from: conn.user });
    }
    const to = await this.#resolveUser(where.to);
    if (to === undefined) {
      return conn.error(errorFrame("unknown_user", {
        message: `no user is called ${where.to}`,
        request: { type: "typing", to: where.to },
      }));
    }
    this.#bus.publish({ kind: "typing", to, from: conn.user });
  }

  /** @internal The key of a conversation the user may read, or an error frame to them. */
  async conversationKey(
    conn: Connection,
    { ref, request }: { ref: ConversationRef; request: "history" | "read" | "resume" },
  ): Promise<ConversationKey | undefined> {
    if (ref.room !== undefined) {
      if (!this.#isMember(conn.user, ref.room)) {
        conn.error(errorFrame("not_member", {
          message: `join ${ref.room} to read it`,
          request: { type: request, room: ref.room },
        }));
        return undefined;
      }
      return roomKey(ref.room);
    }
    // Nobody but the two parties can name a DM: the key always holds the asker.
    return dmKey(conn.user, await this.#resolveUser(ref.with) ?? ref.with);
  }

  /** @internal */
  async history(
    conn: Connection,
    frame: ConversationRef & { before?: number; after?: number; limit?: number },
  ): Promise<void> {
    const key = await this.conversationKey(conn, { ref: frame, request: "history" });
    if (key === undefined) return;
    const page = await this.#store.history(key, {
      before: frame.before,
      after: frame.after,
      limit: frame.limit ?? HISTORY_DEFAULT,
    });
    const ref: ConversationRef = frame.room !== undefined
      ? { room: frame.room }
      : { with: frame.with };
    conn.deliver(JSON.stringify({ type: "history", ...ref, ...page } satisfies ServerFrame));
  }

  /** @internal */
  async read(conn: Connection, frame: ConversationRef & { id: number }): Promise<void> {
    const key = await this.conversationKey(conn, { ref: frame, request: "read" });
    if (key === undefined) return;
    const id = await this.#store.markRead(conn.user, key, frame.id);
    const ref: ConversationRef = frame.room !== undefined
      ? { room: frame.room }
      : { with: frame.with };
    this.#bus.publish({ kind: "read", user: conn.user, id, ...ref });
  }

  /** @internal The newest `replayLimit` messages after `after`, for a resume or a gap. */
  replay(key: ConversationKey, after: number): Promise<HistoryPage> {
    return this.#store.history(key, { after, limit: this.limits.replayLimit });
  }

  /** @internal Called by {@linkcode Connection.close}. */
  remove(conn: Connection): void {
    this.#connections--;
    const set = this.#users.get(conn.user);
    if (!set?.delete(conn) || set.size > 0) return;
    this.#users.delete(conn.user);
    for (const members of this.#members.values()) members.delete(conn.user);
    if (!this.#shuttingDown) {
      this.#bus.publish({ kind: "presence", user: conn.user, online: false });
    }
  }

  #each(users: Iterable<string>, fn: (conn: Connection) => void): void {
    for (const user of users) {
      const conns = this.#users.get(user);
      if (conns) { for (const conn of conns) fn(conn); }
    }
  }

  #onEvent(event: BusEvent): void {
    switch (event.kind) {
      case "message":
        return this.#deliverMessage(event.message);
      case "typing": {
        const { from } = event;
        if (event.room !== undefined) {
          const out = new Outgoing({ type: "typing", room: event.room, from });
          const members = this.#members.get(event.room) ?? [];
          return this.#each(members, (c) => c.user !== from && !c.legacy && c.deliverShared(out));
        }
        const out = new Outgoing({ type: "typing", to: event.to, from });
        return this.#each([event.to], (c) => !c.legacy && c.deliverShared(out));
      }
      case "joined":
      case "left": {
        const { room, user } = event;
        const members = this.#memberSet(room);
        // The joiner's other tabs (maybe on this hub) become members as well.
        if (event.kind === "joined" && this.#users.has(user)) members.add(user);
        const out = new Outgoing({ type: event.kind, room, user });
        this.#each(members, (c) => !c.legacy && c.deliverShared(out));
        if (event.kind === "left") members.delete(user);
        return;
      }
      case "read": {
        const ref: ConversationRef = event.room !== undefined
          ? { room: event.room }
          : { with: event.with };
        const out = new Outgoing({ type: "read", ...ref, id: event.id });
        return this.#each([event.user], (c) => !c.legacy && c.deliverShared(out));
      }
      case "invited": {
        const out = new Outgoing({ type: "invited", room: event.room, by: event.by });
        return this.#each([event.user], (c) => !c.legacy && c.deliverShared(out));
      }
      case "revoked":
        return this.#each([event.user], (c) => {
          if (
            event.sessions === "all" ||
            (c.session !== undefined && event.sessions.includes(c.session))
          ) {
            c.closePeer(CloseCode.LoggedOut, "logged out");
            c.close();
          }
        });
      case "presence": {
        const out = new Outgoing({ type: "presence", user: event.user, online: event.online });
        return this.#each(
          this.#users.keys(),
          (c) => c.user !== event.user && !c.legacy && c.deliverShared(out),
        );
      }
    }
  }

  #deliverMessage(message: ChatMessage): void {
    const out = new Outgoing(
      { type: "message", ...message },
      () => JSON.stringify(toLegacy(message)),
    );
    // Legacy clients get what the original would send: lobby and DMs, never their own words back.
    const deliver = (c: Connection) => {
      if (!c.legacy) return c.deliverMessage(message, out);
      if (c.user !== message.from && (message.to !== undefined || message.room === LOBBY)) {
        c.deliverShared(out);
      }
    };
    if (message.room !== undefined) {
      const members = message.room === LOBBY
        ? this.#users.keys()
        : this.#members.get(message.room) ?? [];
      return this.#each(members, deliver);
    }
    const users = message.to === message.from ? [message.from] : [message.from, message.to!];
    this.#each(users, deliver);
  }

  /** Whether {@linkcode ChatHub.shutdown} has begun: frames are no longer taken. */
  get closing(): boolean {
    return this.#shuttingDown;
  }

  /**
   * Stops taking frames, waits for the messages already taken to be stored
   * and acknowledged, then closes every connection with 1001 ("going away")
   * so clients reconnect elsewhere, and stops the bus subscription.
   */
  async shutdown(): Promise<void> {
    this.#shuttingDown = true;
    await Promise.allSettled(this.#inflight);
    for (const conns of this.#users.values()) {
      for (const conn of conns) conn.closePeer(CloseCode.GoingAway, "server shutting down");
    }
    this.#subscription[Symbol.dispose]();
  }
}
