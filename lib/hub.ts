/**
 * `ChatHub`: the rooms, the members and the routing of frames. It knows
 * frames and peers, not sockets or Deno: a connection is a {@linkcode Peer}
 * (send, close, bufferedAmount), storage is a {@linkcode ChatStore}, and
 * fan-out between processes is a {@linkcode Bus}; who is online is a
 * {@linkcode Presence} and per-user limits are {@linkcode UserLimits}, so
 * several instances can share them. That keeps it testable
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
  HISTORY_DEFAULT,
  LOBBY,
  refOf,
  type ServerFrame,
  toLegacy,
} from "./protocol.ts";
import {
  type ChatStore,
  type ConversationKey,
  conversationOf,
  dmKey,
  type HistoryPage,
  roomKey,
  StoreError,
} from "./store.ts";
import { Connection } from "./connection.ts";
import { type ErrorDetail, errorFrame, Outgoing } from "./frames.ts";
import { CloseCode, type Peer } from "./peer.ts";
import { LocalPresence, type Presence } from "./presence.ts";
import { LocalUserLimits, type UserLimits } from "./user_limits.ts";
import { Throttle } from "./throttle.ts";
import { PresenceFanout } from "./presence_fanout.ts";
import { onlinePage, welcomeOnline } from "./online_list.ts";
import { BusyError } from "./semaphore.ts";
import { skeleton } from "./identity.ts";
import { LogOnce } from "./log.ts";

/** Errors by cause, at most once a minute each, never with client text. */
const log = new LogOnce();

export { CloseCode, Connection, type Peer };

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
  /** Bytes of frames one connection may have waiting to be handled; beyond, it closes with 1008 (1 MiB). */
  maxQueuedBytes?: number;
  /** Pending invitations one user may hold; more are refused (100). */
  maxInvitesPerUser?: number;
  /** Room names one user may bring into being, ever; more are refused (no limit when absent). */
  maxRoomsCreatedPerUser?: number;
}

/** What the hub asks of the accounts: names to resolve and register, passwords, logouts. */
export type HubAccounts = Pick<
  Accounts,
  "resolve" | "register" | "hasPassword" | "setPassword" | "revoke" | "registerRoom" | "isClaimed"
>;

/** Options of {@linkcode ChatHub}. */
export interface ChatHubOptions {
  /** Where messages, members and read state are kept. */
  store: ChatStore;
  /** The fan-out between hubs; a {@linkcode LocalBus} when absent. */
  bus?: Bus;
  /** Registered names, tokens and passwords. */
  accounts: HubAccounts;
  /** Who is online; this process's users when absent. */
  presence?: Presence;
  /** Send budgets per user; kept in this process when absent. */
  userLimits?: UserLimits;
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
  #accounts: HubAccounts;
  /** Whether a room is private, as far as this hub has looked. */
  #privacy = new Map<string, boolean>();
  #presence: Presence;
  #userLimits: UserLimits;
  /**
   * Each user's presence changes in flight, applied one after another: an
   * arrival is recorded before the departure that follows it.
   */
  #presenceSteps = new Map<string, Promise<void>>();
  /**
   * Names seen as their own registered spelling: a DM to one needs no lookup
   * (names never change). As many as there are accounts, at most.
   */
  #registered = new Set<string>();
  #connections = 0;
  #shuttingDown = false;
  /** Appends not yet settled: shutdown waits for them, so their senders get their acks. */
  #inflight = new Set<Promise<unknown>>();
  /** Typing relayed per sender and conversation. */
  #typing: Throttle;
  /** The public rooms listing, shared by everyone who asks within an interval. */
  #listing: { at: number; frame: Promise<string> } | undefined;
  /** Presence changes, batched: one shared frame per interval to this hub's readers. */
  #presenceOut: PresenceFanout;

  /** Makes a hub over a store and a bus. */
  constructor(options: ChatHubOptions) {
    this.limits = options.limits;
    this.#store = options.store;
    this.#accounts = options.accounts;
    this.#bus = options.bus ?? new LocalBus();
    this.#presence = options.presence ?? new LocalPresence();
    this.#userLimits = options.userLimits ??
      new LocalUserLimits({ ...options.limits, maxConnectionsPerUser: Infinity });
    this.#subscription = this.#bus.subscribe(
      (event) => this.#onEvent(event),
      { has: (key) => this.#hasMembers(key) },
    );
    const interval = options.limits.fanoutIntervalMs ?? 2000;
    this.#typing = new Throttle(interval);
    this.#presenceOut = new PresenceFanout({
      intervalMs: interval,
      deliver: (batch) =>
        this.#each(this.#users.keys(), (c) => {
          const out = c.legacy ? undefined : batch.for(c.user);
          if (out) c.deliverShared(out);
        }),
    });
  }

  /** Whether a user connected here takes part in a conversation. */
  #hasMembers(key: ConversationKey): boolean {
    if (key.startsWith("r/")) {
      const room = key.slice(2);
      return room === LOBBY ? this.#users.size > 0 : (this.#members.get(room)?.size ?? 0) > 0;
    }
    const [, a, b] = key.split("/");
    return this.#users.has(a) || this.#users.has(b);
  }

  /** Counters for health checks. */
  get stats(): HubStats {
    return { connections: this.#connections, usersOnline: this.#users.size };
  }

  /** Users with at least one open connection here. */
  online(): string[] {
    return [...this.#users.keys()];
  }

  /** Tells the presence a user's last connection here closed, and announces it if they are gone. */
  async #depart(user: string): Promise<void> {
    try {
      const gone = await this.#presence.depart(user);
      // A new connection here meanwhile keeps them online.
      // After a shutdown began nothing is announced: the instance's users leave with it.
      if (gone && !this.#users.has(user) && !this.#shuttingDown) {
        this.#bus.publish({ kind: "presence", user, online: false });
      }
    } catch (error) {
      // Its entry expires by itself (the presence's TTL).
      log.error("presence: could not record a departure", error);
    }
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
        this.track(this.#open(c)).catch((error) => {
          log.error("could not open a connection", error);
          c.closePeer(CloseCode.InternalError, "the store did not answer; try again");
          c.close();
        }),
    });
    this.#connections++;
    // To a client an open socket means "reachable" (a legacy one has no welcome), so it is
    // a member of the lobby and its DMs from this moment on; a chat.v1 one gets what
    // arrives before its welcome right after it, and its rooms with the welcome.
    this.#addUser(conn);
    return conn;
  }

  /** Makes a connection reachable; true when it is its user's first here. */
  #addUser(conn: Connection): boolean {
    let set = this.#users.get(conn.user);
    const first = set === undefined;
    if (!set) this.#users.set(conn.user, set = new Set());
    set.add(conn);
    if (first) this.#presenceStep(conn.user, () => this.#arrive(conn.user));
    return first;
  }

  /** Queues a presence change of a user behind the ones before it. */
  #presenceStep(user: string, step: () => Promise<void>): void {
    const next = (this.#presenceSteps.get(user) ?? Promise.resolve()).then(step);
    this.#presenceSteps.set(user, next);
    void next.finally(() => {
      if (this.#presenceSteps.get(user) === next) this.#presenceSteps.delete(user);
    });
  }

  /** Tells the presence a user's first connection here opened, and announces it if news. */
  async #arrive(user: string): Promise<void> {
    try {
      const arrived = await this.#presence.arrive(user);
      // Gone again meanwhile: the departure queued behind this one speaks for them.
      if (arrived && this.#users.has(user) && !this.#shuttingDown) {
        this.#bus.publish({ kind: "presence", user, online: true });
      }
    } catch (error) {
      log.error("presence: could not record an arrival", error);
    }
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
    if (conn.legacy) {
      // The original page was let in on a free name; if it was claimed since, it is not its
      // owner (a claim from now on closes it through the bus's `claimed` event).
      if (await this.#accounts.isClaimed(user)) {
        conn.closePeer(
          CloseCode.Forbidden,
          `claimed_legacy: ${user} was claimed; it needs its token now`,
        );
        conn.close();
      }
      return;
    }
    const rooms = [LOBBY, ...(await this.#store.rooms(user)).filter((r) => r !== LOBBY)];
    const [conversations, invites, password, infos] = await Promise.all([
      this.#store.conversations(user, rooms),
      this.#store.invites(user),
      this.#accounts.hasPassword(user),
      Promise.all(rooms.map((r) => this.#isPrivate(r))),
    ]);
    if (conn.closed) return;
    if (this.#shuttingDown) return conn.closePeer(CloseCode.GoingAway, "server shutting down");
    // Room memberships are loaded with the user's first welcomed chat.v1 connection (legacy
    // ones take part in the lobby and DMs only, which need none).
    const first = ![...this.#users.get(user) ?? []].some((c) =>
      c !== conn && !c.legacy && c.welcomed
    );
    if (first) { for (const room of rooms) this.#memberSet(room).add(user); }
    // Who is online anywhere (this user included once their arrival is recorded), bounded:
    // first the DM partners and room-mates connected here (no query), then in name order.
    await this.#presenceSteps.get(user);
    const online = await welcomeOnline(this.#presence, {
      limit: this.limits.welcomeOnline ?? 200,
      visible: (function* (members) {
        for (const c of conversations) if (c.with !== undefined) yield c.with;
        for (const room of rooms) if (room !== LOBBY) yield* members.get(room) ?? [];
      })(this.#members),
      isOnline: (u) => this.#users.has(u),
    });
    if (conn.closed) return;
    if (this.#shuttingDown) return conn.closePeer(CloseCode.GoingAway, "server shutting down");
    conn.welcome(JSON.stringify(
      {
        type: "welcome",
        user,
        rooms: first ? rooms : this.#roomsOf(user),
        ...online,
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
    // A name just claimed belongs to this connection alone: any socket opened on it while it
    // was free (the original page's) did not prove it is its owner, and goes.
    if (conn.token !== undefined) {
      this.#bus.publish({ kind: "claimed", user, session: conn.session ?? "" });
    }
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
    if (this.#registered.has(name)) return name;
    const found = await this.#accounts.resolve(name);
    if (!found.ok || !found.known) return undefined;
    if (found.user === name) this.#registered.add(name);
    return found.user;
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
  async #allowSend(
    conn: Connection,
    request: ErrorDetail["request"] & object,
    cid?: string,
  ): Promise<boolean> {
    const { sendRate, sendBurst } = this.limits;
    let allowance;
    try {
      allowance = await this.#userLimits.takeSend(conn.user);
    } catch (error) {
      log.error("user limits: the budget could not be read", error);
      conn.error(errorFrame("store_failed", {
        message: "the message could not be stored; it was not sent",
        ref: cid,
        request,
      }));
      return false;
    }
    if (allowance.ok) return true;
    const retryAfter = allowance.retryAfterMs;
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
  async send(
    conn: Connection,
    message: { room: string; from: string; text: string; cid?: string },
  ): Promise<void> {
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
    if (await this.#allowSend(conn, request, message.cid)) this.#append(conn, message);
  }

  /** @internal Stores a DM to a known user, then publishes it. */
  async sendDm(
    conn: Connection,
    message: { to: string; from: string; text: string; cid?: string },
  ): Promise<void> {
    const request = { type: "send", to: message.to } as const;
    // The common case, a DM to a name spelled as registered, takes no extra turn of the loop.
    const to = this.#registered.has(message.to) ? message.to : await this.#resolveUser(message.to);
    if (to === undefined) {
      return conn.error(errorFrame("unknown_user", {
        message: `no user is called ${message.to}`,
        ref: message.cid,
        request,
      }));
    }
    if (await this.#allowSend(conn, request, message.cid)) this.#append(conn, { ...message, to });
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
        // (Unless its first sender's instance died before publishing it: the bus sees to that.)
        conn.acknowledgeAgain(stored);
        this.#bus.reached?.(stored);
      },
      (error) => {
        if (!(error instanceof StoreError)) log.error("unexpected store error", error);
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
    // Every member sees a join: they count against the sender's budget like messages.
    if (!(await this.#allowSend(conn, request))) return;
    if (this.#roomsOf(conn.user).length - 1 >= this.limits.maxRoomsPerUser) {
      return conn.error(errorFrame("too_many_rooms", {
        message: `at most ${this.limits.maxRoomsPerUser} rooms; leave one first`,
        request,
      }));
    }
    if (!(await this.#roomNameFree(conn, room, request))) return;
    // The privacy check and the write are one atomic step in the store: a join racing a
    // private room's creation cannot slip in between them.
    const outcome = await this.#store.joinIfAllowed(conn.user, room);
    this.#privacy.set(room, outcome.private);
    if (outcome.result === "forbidden") {
      return conn.error(
        errorFrame("forbidden", { message: `${room} is private: ask for an invitation`, request }),
      );
    }
    // Applied here too, not only when the event comes back: a `send` right
    // after `join` on this connection must already see the membership.
    this.#memberSet(room).add(conn.user);
    this.#listing = undefined;
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
    if (!(await this.#allowSend(conn, { type: "leave", room }))) return;
    await this.#store.leave(conn.user, room);
    this.#listing = undefined;
    this.#bus.publish({ kind: "left", room, user: conn.user });
  }

  /**
   * Whether a room name may be used: not a look-alike of the lobby or of
   * another room (`vаult` with a Cyrillic `а` beside `vault`); an error frame if not.
   */
  async #roomNameFree(
    conn: Connection,
    room: string,
    request: { type: "join" | "create"; room: string },
  ): Promise<boolean> {
    if (room === LOBBY) return true;
    const free = skeleton(room) === skeleton(LOBBY)
      ? { ok: false as const, reason: `too much like the room ${LOBBY}; pick another name` }
      : await this.#accounts.registerRoom(room, conn.user, this.limits.maxRoomsCreatedPerUser);
    if (free.ok) return true;
    conn.error(errorFrame("bad_name", { message: free.reason, request }));
    return false;
  }

  /** @internal Creates a room (public or private) and joins it. */
  async create(conn: Connection, frame: { room: string; private: boolean }): Promise<void> {
    const request = { type: "create", room: frame.room } as const;
    if (!(await this.#roomNameFree(conn, frame.room, request))) return;
    if (
      frame.room === LOBBY ||
      !(await this.#store.createRoom(frame.room, { private: frame.private, owner: conn.user }))
    ) {
      return conn.error(
        errorFrame("room_exists", { message: `${frame.room} exists already: join it`, request }),
      );
    }
    this.#privacy.set(frame.room, frame.private);
    this.#listing = undefined;
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
    // An invitation lands in the invitee's welcome: bounded per invitee, paced per inviter.
    if (!(await this.#allowSend(conn, request))) return;
    const maxInvites = this.limits.maxInvitesPerUser ?? 100;
    const pending = await this.#store.invites(user);
    if (!pending.some((i) => i.room === frame.room) && pending.length >= maxInvites) {
      return conn.error(errorFrame("forbidden", {
        message: `${user} has ${maxInvites} invitations waiting already`,
        request,
      }));
    }
    await this.#store.invite(user, frame.room, conn.user);
    this.#bus.publish({ kind: "invited", user, room: frame.room, by: conn.user });
  }

  /** @internal Lists public rooms for discovery. */
  async publicRooms(conn: Connection): Promise<void> {
    // The listing is read from the store at most once per interval (or change here), however
    // many ask: its cost grows with the rooms (at most 100 are listed), not with the askers.
    const now = Date.now();
    if (!this.#listing || now - this.#listing.at > (this.limits.fanoutIntervalMs ?? 2000)) {
      this.#listing = {
        at: now,
        frame: this.#store.publicRooms(100).then((rooms) =>
          JSON.stringify({ type: "rooms", rooms } satisfies ServerFrame)
        ),
      };
      this.#listing.frame.catch(() => this.#listing = undefined);
    }
    conn.deliver(await this.#listing.frame);
  }

  /** @internal Sends a page of who is online (after `after`, in name order). */
  async onlinePage(conn: Connection, query: { after?: string; limit: number }): Promise<void> {
    conn.deliver(JSON.stringify(await onlinePage(this.#presence, query) satisfies ServerFrame));
  }

  /** @internal Sets the password of the connection's (claimed) name. */
  async setPassword(conn: Connection, password: string): Promise<void> {
    if (conn.session === undefined) {
      return conn.error(errorFrame("forbidden", {
        message: "only a signed-in chat.v1 connection can set a password",
        request: { type: "set_password" },
      }));
    }
    try {
      await this.#accounts.setPassword(conn.user, password);
    } catch (error) {
      if (!(error instanceof BusyError)) throw error;
      return conn.error({
        ...errorFrame("rate_limited", {
          message: "the server is busy hashing passwords; try again in a moment",
          request: { type: "set_password" },
        }),
        retry_after: 1000,
      });
    }
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
      if (!this.#typing.allow(`${conn.user}\0r/${where.room}`)) return;
      return this.#bus.publish({ kind: "typing", room: where.room, from: conn.user });
    }
    const to = await this.#resolveUser(where.to);
    if (to === undefined) {
      return conn.error(errorFrame("unknown_user", {
        message: `no user is called ${where.to}`,
        request: { type: "typing", to: where.to },
      }));
    }
    if (!this.#typing.allow(`${conn.user}\0d/${to}`)) return;
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
    conn.deliver(
      JSON.stringify({ type: "history", ...refOf(frame), ...page } satisfies ServerFrame),
    );
  }

  /** @internal */
  async read(conn: Connection, frame: ConversationRef & { id: number }): Promise<void> {
    const key = await this.conversationKey(conn, { ref: frame, request: "read" });
    if (key === undefined) return;
    const id = await this.#store.markRead(conn.user, key, frame.id);
    this.#bus.publish({ kind: "read", user: conn.user, id, ...refOf(frame) });
  }

  /** @internal The newest `replayLimit` messages after `after`, for a resume or a gap. */
  replay(key: ConversationKey, after: number): Promise<HistoryPage> {
    return this.track(this.#store.history(key, { after, limit: this.limits.replayLimit }));
  }

  /**
   * @internal Work a shutdown waits for before the store closes: a
   * connection's frames being handled, and what runs beside them (reads,
   * replays, opening).
   */
  track<T>(work: Promise<T>): Promise<T> {
    this.#inflight.add(work);
    work.then(() => this.#inflight.delete(work), () => this.#inflight.delete(work));
    return work;
  }

  /** @internal Called by {@linkcode Connection.close}. */
  remove(conn: Connection): void {
    this.#connections--;
    const set = this.#users.get(conn.user);
    if (!set?.delete(conn) || set.size > 0) return;
    this.#users.delete(conn.user);
    for (const members of this.#members.values()) members.delete(conn.user);
    if (!this.#shuttingDown) this.#presenceStep(conn.user, () => this.#depart(conn.user));
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
        const out = new Outgoing({ type: "read", ...refOf(event), id: event.id });
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
      case "claimed":
        return this.#each([event.user], (c) => {
          if (c.session !== event.session) {
            c.closePeer(CloseCode.Forbidden, `${event.user} was claimed; it needs its token now`);
            c.close();
          }
        });
      case "presence":
        // Coalesced where it is delivered, after every instance's announcements met in order:
        // a user flapping online and offline costs each reader one frame an interval at most.
        if (!this.#shuttingDown) this.#presenceOut.push(event.user, event.online);
        return;
    }
  }

  #deliverMessage(message: ChatMessage): void {
    const out = new Outgoing(
      { type: "message", ...message },
      () => JSON.stringify(toLegacy(message)),
    );
    // One key for all recipients: their cursor work is a map lookup each.
    const key = conversationOf(message);
    // Legacy clients get what the original would send: lobby and DMs, never their own words back.
    const deliver = (c: Connection) => {
      if (!c.legacy) return c.deliverMessage(message, out, key);
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
    // Frames being handled finish (those queued are dropped), then whatever they started.
    const conns = [...this.#users.values()].flatMap((set) => [...set]);
    await Promise.allSettled(conns.map((c) => c.settled));
    while (this.#inflight.size > 0) await Promise.allSettled([...this.#inflight]);
    for (const conns of this.#users.values()) {
      for (const conn of conns) conn.closePeer(CloseCode.GoingAway, "server shutting down");
    }
    this.#presenceOut[Symbol.dispose]();
    this.#subscription[Symbol.dispose]();
  }
}
