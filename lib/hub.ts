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
  DMS_PAGE_DEFAULT,
  type ErrorCode,
  HISTORY_DEFAULT,
  LOBBY,
  refOf,
  type ServerFrame,
  toLegacy,
} from "./protocol.ts";
import {
  type Appended,
  type AppendListener,
  type ChatStore,
  type ConversationKey,
  conversationOf,
  dmKey,
  type HistoryPage,
  type NewMessage,
  roomKey,
  StoreError,
} from "./store.ts";
import { Connection } from "./connection.ts";
import { type ErrorDetail, errorFrame, Outgoing } from "./frames.ts";
import type {
  Accepted,
  ConnectOptions,
  Done,
  Found,
  HubLimits,
  HubPort,
  Member,
  Refused,
  Result,
  Stored,
} from "./member.ts";
import { CloseCode, type Peer } from "./peer.ts";
import { LocalPresence, type Presence } from "./presence.ts";
import { LocalUserLimits, type UserLimits } from "./user_limits.ts";
import { Throttle } from "./throttle.ts";
import { PresenceFanout } from "./presence_fanout.ts";
import { onlinePage, type WelcomeOnline, welcomeOnline } from "./online_list.ts";
import { BusyError } from "./semaphore.ts";
import { skeleton } from "./identity.ts";
import { LogOnce } from "./log.ts";

/** Errors by cause, at most once a minute each, never with client text. */
const log = new LogOnce();

export { CloseCode, Connection, type Peer };
export type { ConnectOptions, HubLimits, Member, Result } from "./member.ts";

/** An operation done with nothing to say to the asker (one object for all of them). */
const DONE: Done = Object.freeze({ ok: true });

/** What a hub does with a message's storing outcome (one per hub, shared by its {@linkcode Storing}s). */
interface StoringHost {
  /** Publishes a stored message (or answers a re-send): what its sender is told. */
  stored(message: NewMessage, appended: Appended): Stored;
  /** The refusal its sender gets. */
  failed(message: NewMessage, error: StoreError): Stored;
  /** One fewer message being stored. */
  settled(): void;
}

/**
 * A message being stored: the store's listener and its connection's
 * {@linkcode Accepted} in one object, the only thing made for it besides the
 * store's queue entry while it waits for its commit.
 */
class Storing implements Accepted, AppendListener {
  readonly ok = true;
  #outcome: Stored | undefined;
  #listener: ((stored: Stored) => void) | undefined;

  constructor(readonly message: NewMessage, readonly host: StoringHost) {}

  onStored(listener: (stored: Stored) => void): void {
    if (this.#outcome) listener(this.#outcome);
    else this.#listener = listener;
  }

  // The count goes down first: a publish that throws (the store logs it) must not hold a shutdown.
  stored(appended: Appended): void {
    this.host.settled();
    this.#settle(this.host.stored(this.message, appended));
  }

  failed(error: StoreError): void {
    this.host.settled();
    this.#settle(this.host.failed(this.message, error));
  }

  #settle(outcome: Stored): void {
    this.#outcome = outcome;
    const listener = this.#listener;
    this.#listener = undefined;
    listener?.(outcome);
  }
}

/** A refusal with an error frame. */
function refused(code: ErrorCode, detail: ErrorDetail): Refused {
  return { ok: false, error: errorFrame(code, detail) };
}

/**
 * The answer to an operation whose store (or accounts) failed: `store_failed`
 * naming the request, whatever the store threw; the cause is logged.
 */
function storeFailed(error: unknown, request: ErrorDetail["request"], ref?: string): Refused {
  log.error(`the store failed during ${request?.type ?? "a request"}`, error);
  const message = request?.type === "send"
    ? "the message could not be stored; it was not sent"
    : "the store did not answer; try again";
  return refused("store_failed", { message, ref, request });
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

/** Counters for `/healthz`. */
export interface HubStats {
  /** Open connections. */
  connections: number;
  /** Distinct users with at least one open connection. */
  usersOnline: number;
}

/**
 * Routes frames between the members of rooms and DMs. Its operations answer
 * the asker with a {@linkcode Result}; what all members of a conversation get
 * is pushed into each {@linkcode Member}.
 */
export class ChatHub implements HubPort {
  /** The limits this hub enforces. */
  readonly limits: HubLimits;
  #store: ChatStore;
  #bus: Bus;
  #subscription: Disposable;
  /** Open, welcomed connections by user. */
  #users = new Map<string, Set<Member>>();
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
  /** Work a shutdown waits for (see {@linkcode ChatHub.track}). */
  #inflight = new Set<Promise<unknown>>();
  /**
   * Messages taken and not yet stored (or refused): shutdown waits for them,
   * so their senders get their acks; and what it waits on for the last one.
   */
  #storing = 0;
  #storingIdle: PromiseWithResolvers<void> | undefined;
  /** Typing relayed per sender and conversation. */
  #typing: Throttle;
  /** The public rooms listing, shared by everyone who asks within an interval. */
  #listing: { at: number; frame: Promise<string> } | undefined;
  /** Presence changes, batched: one shared frame per interval to this hub's readers. */
  #presenceOut: PresenceFanout;
  /**
   * The presence change each welcomed connection's `welcome` knew of
   * ({@linkcode PresenceFanout.seq} before it read who is online): a batch
   * of changes it listed already is not sent to it again.
   */
  #presenceSeen = new WeakMap<Member, number>();

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
          if (c.legacy || batch.lastSeq <= (this.#presenceSeen.get(c) ?? 0)) return;
          const out = batch.for(c.user);
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
  #addUser(conn: Member): boolean {
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

  async #open(conn: Member): Promise<void> {
    const user = conn.user;
    // A chat.v1 welcome's first reads go with the registration, in one round trip to the store;
    // nothing of them is sent unless the name turns out to be this connection's.
    const reads = conn.legacy ? undefined : Promise.all([
      this.#store.rooms(user),
      this.#store.invites(user),
      this.#accounts.hasPassword(user),
    ]);
    reads?.catch(() => {}); // A failure is seen where they are awaited, or does not matter.
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
    const [stored, invites, password] = await reads!;
    const rooms = [LOBBY, ...stored.filter((r) => r !== LOBBY)];
    const [{ conversations, dmsMore }, infos] = await Promise.all([
      this.#store.conversations(user, rooms, this.limits.welcomeDms ?? DMS_PAGE_DEFAULT),
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
    const seen = this.#presenceOut.seq;
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
    const welcome = JSON.stringify(
      {
        type: "welcome",
        user,
        rooms: first ? rooms : this.#roomsOf(user),
        conversations,
        dmsMore,
        ...(dmsMore ? { dmsAfter: conversations.at(-1)?.with } : {}),
        privateRooms: rooms.filter((_, i) => infos[i]),
        invites,
        ...(conn.token === undefined ? {} : { token: conn.token }),
        account: { password },
        limits: {
          maxTextLength: this.limits.maxTextLength,
          maxFrameBytes: this.limits.maxFrameBytes,
          replayLimit: this.limits.replayLimit,
        },
      } satisfies Omit<Extract<ServerFrame, { type: "welcome" }>, keyof WelcomeOnline>,
    );
    // The online list goes in as JSON already (see welcomeOnline), before the closing brace.
    this.#presenceSeen.set(conn, seen);
    conn.welcome(`${welcome.slice(0, -1)},${online}}`);
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
   * Takes one message from a user's send budget; undefined when there was
   * one, else the refusal (`rate_limited` with `retry_after`, a strike). At
   * once when the limits answer at once (see `UserLimits.takeSend`).
   */
  #allowSend(
    conn: Member,
    request: ErrorDetail["request"] & object,
    cid?: string,
  ): Refused | undefined | Promise<Refused | undefined> {
    let allowance;
    try {
      allowance = this.#userLimits.takeSend(conn.user);
    } catch (error) {
      return this.#budgetUnread(error, request, cid);
    }
    if (!(allowance instanceof Promise)) {
      return allowance.ok ? undefined : this.#rateLimited(allowance.retryAfterMs, request, cid);
    }
    return allowance.then(
      (a) => a.ok ? undefined : this.#rateLimited(a.retryAfterMs, request, cid),
      (error) => this.#budgetUnread(error, request, cid),
    );
  }

  /** Queues `message` for storing once the send budget allows it; else the refusal. */
  #appendAllowed(
    conn: Member,
    request: ErrorDetail["request"] & object,
    message: NewMessage,
  ): Accepted | Refused | Promise<Accepted | Refused> {
    const limited = this.#allowSend(conn, request, message.cid);
    if (limited === undefined) return this.#append(message);
    if (!(limited instanceof Promise)) return limited;
    return limited.then((refusal) => refusal ?? this.#append(message));
  }

  #budgetUnread(error: unknown, request: ErrorDetail["request"] & object, cid?: string): Refused {
    log.error("user limits: the budget could not be read", error);
    return refused("store_failed", {
      message: "the message could not be stored; it was not sent",
      ref: cid,
      request,
    });
  }

  #rateLimited(
    retryAfterMs: number,
    request: ErrorDetail["request"] & object,
    cid?: string,
  ): Refused {
    const { sendRate, sendBurst } = this.limits;
    return {
      ok: false,
      error: {
        ...errorFrame("rate_limited", {
          message: `at most ${sendRate} messages a second (bursts of ${sendBurst}); wait a moment`,
          ref: cid,
          request,
        }),
        retry_after: retryAfterMs,
      },
      strike: true,
    };
  }

  /** Stores a room message, then publishes it: the sender's copy is its acknowledgement. */
  async send(
    conn: Member,
    message: { room: string; from: string; text: string; cid?: string },
  ): Promise<Accepted | Refused> {
    const request = { type: "send", room: message.room } as const;
    if (!this.#isMember(conn.user, message.room)) {
      return refused("not_member", {
        message: `join ${message.room} before sending to it`,
        ref: message.cid,
        request,
      });
    }
    return await this.#appendAllowed(conn, request, message);
  }

  /** Stores a DM to a known user, then publishes it: the sender's copy is its acknowledgement. */
  async sendDm(
    conn: Member,
    message: { to: string; from: string; text: string; cid?: string },
  ): Promise<Accepted | Refused> {
    const request = { type: "send", to: message.to } as const;
    let to;
    try {
      // The common case, a DM to a name spelled as registered, takes no extra turn of the loop.
      to = this.#registered.has(message.to) ? message.to : await this.#resolveUser(message.to);
    } catch (error) {
      return storeFailed(error, request, message.cid);
    }
    if (to === undefined) {
      return refused("unknown_user", {
        message: `no user is called ${message.to}`,
        ref: message.cid,
        request,
      });
    }
    // The connection's own object, unless the name was spelled otherwise: nothing else holds it.
    return this.#appendAllowed(conn, request, to === message.to ? message : { ...message, to });
  }

  #append(message: NewMessage): Accepted {
    // Not awaited: appends queue in arrival order, so a sender's messages keep
    // their order while the next frame is already being read.
    const storing = new Storing(message, this.#storingHost);
    this.#storing++;
    this.#store.appendTo(message, storing);
    return storing;
  }

  /** Made once per hub: a message's settling allocates no handler. */
  #storingHost: StoringHost = {
    stored: (_, { message: stored, duplicate }) => {
      if (!duplicate) {
        this.#bus.publish({ kind: "message", message: stored });
        return DONE;
      }
      // A re-send of a stored message: everyone had it already; answer only the sender.
      // (Unless its first sender's instance died before publishing it: the bus sees to that.)
      this.#bus.reached?.(stored);
      return { ok: true, again: stored };
    },
    failed: (message, error) => {
      if (!(error instanceof StoreError)) log.error("unexpected store error", error);
      return refused("store_failed", {
        message: "the message could not be stored; it was not sent",
        ref: message.cid,
        request: message.room !== undefined
          ? { type: "send", room: message.room }
          : { type: "send", to: message.to },
      });
    },
    settled: () => {
      if (--this.#storing === 0) this.#storingIdle?.resolve();
    },
  };

  /** Joins a room; a private one needs an invitation. A member already gets `joined` again. */
  join(conn: Member, room: string): Promise<Result> {
    return this.#join(conn, room).catch((error) => storeFailed(error, { type: "join", room }));
  }

  async #join(conn: Member, room: string): Promise<Result> {
    if (this.#isMember(conn.user, room)) {
      return {
        ok: true,
        reply: JSON.stringify({ type: "joined", room, user: conn.user } satisfies ServerFrame),
      };
    }
    const request = { type: "join", room } as const;
    // Every member sees a join: they count against the sender's budget like messages.
    const limited = await this.#allowSend(conn, request);
    if (limited) return limited;
    if (this.#roomsOf(conn.user).length - 1 >= this.limits.maxRoomsPerUser) {
      return refused("too_many_rooms", {
        message: `at most ${this.limits.maxRoomsPerUser} rooms; leave one first`,
        request,
      });
    }
    const taken = await this.#roomNameTaken(conn, room, request);
    if (taken) return taken;
    // The privacy check and the write are one atomic step in the store: a join racing a
    // private room's creation cannot slip in between them.
    const outcome = await this.#store.joinIfAllowed(conn.user, room);
    this.#privacy.set(room, outcome.private);
    if (outcome.result === "forbidden") {
      return refused("forbidden", {
        message: `${room} is private: ask for an invitation`,
        request,
      });
    }
    // Applied here too, not only when the event comes back: a `send` right
    // after `join` on this connection must already see the membership.
    this.#memberSet(room).add(conn.user);
    this.#listing = undefined;
    this.#bus.publish({ kind: "joined", room, user: conn.user });
    return DONE;
  }

  /** Leaves a room; everyone stays in the lobby. */
  leave(conn: Member, room: string): Promise<Result> {
    return this.#leave(conn, room).catch((error) => storeFailed(error, { type: "leave", room }));
  }

  async #leave(conn: Member, room: string): Promise<Result> {
    const request = { type: "leave", room } as const;
    if (room === LOBBY) {
      return refused("bad_frame", { message: "everyone stays in the lobby", request });
    }
    if (!this.#isMember(conn.user, room)) {
      return refused("not_member", { message: `you are not in ${room}`, request });
    }
    const limited = await this.#allowSend(conn, request);
    if (limited) return limited;
    await this.#store.leave(conn.user, room);
    this.#listing = undefined;
    this.#bus.publish({ kind: "left", room, user: conn.user });
    return DONE;
  }

  /**
   * Whether a room name may not be used: a look-alike of the lobby or of
   * another room (`vаult` with a Cyrillic `а` beside `vault`) is refused.
   */
  async #roomNameTaken(
    conn: Member,
    room: string,
    request: { type: "join" | "create"; room: string },
  ): Promise<Refused | undefined> {
    if (room === LOBBY) return undefined;
    const free = skeleton(room) === skeleton(LOBBY)
      ? { ok: false as const, reason: `too much like the room ${LOBBY}; pick another name` }
      : await this.#accounts.registerRoom(room, conn.user, this.limits.maxRoomsCreatedPerUser);
    if (free.ok) return undefined;
    return refused("bad_name", { message: free.reason, request });
  }

  /** Creates a room (public or private) and joins it. */
  create(conn: Member, frame: { room: string; private: boolean }): Promise<Result> {
    return this.#create(conn, frame).catch((error) =>
      storeFailed(error, { type: "create", room: frame.room })
    );
  }

  async #create(conn: Member, frame: { room: string; private: boolean }): Promise<Result> {
    const request = { type: "create", room: frame.room } as const;
    const taken = await this.#roomNameTaken(conn, frame.room, request);
    if (taken) return taken;
    if (
      frame.room === LOBBY ||
      !(await this.#store.createRoom(frame.room, { private: frame.private, owner: conn.user }))
    ) {
      return refused("room_exists", { message: `${frame.room} exists already: join it`, request });
    }
    this.#privacy.set(frame.room, frame.private);
    this.#listing = undefined;
    if (frame.private) await this.#store.invite(conn.user, frame.room, conn.user);
    return await this.#join(conn, frame.room);
  }

  /** Invites a user to a room the inviter is in. */
  invite(conn: Member, frame: { room: string; user: string }): Promise<Result> {
    return this.#invite(conn, frame).catch((error) =>
      storeFailed(error, { type: "invite", room: frame.room })
    );
  }

  async #invite(conn: Member, frame: { room: string; user: string }): Promise<Result> {
    const request = { type: "invite", room: frame.room } as const;
    if (!this.#isMember(conn.user, frame.room) || frame.room === LOBBY) {
      return refused("not_member", { message: `you are not in ${frame.room}`, request });
    }
    const user = await this.#resolveUser(frame.user);
    if (user === undefined) {
      return refused("unknown_user", { message: `no user is called ${frame.user}`, request });
    }
    // An invitation lands in the invitee's welcome: bounded per invitee, paced per inviter.
    const limited = await this.#allowSend(conn, request);
    if (limited) return limited;
    const maxInvites = this.limits.maxInvitesPerUser ?? 100;
    const pending = await this.#store.invites(user);
    if (!pending.some((i) => i.room === frame.room) && pending.length >= maxInvites) {
      return refused("forbidden", {
        message: `${user} has ${maxInvites} invitations waiting already`,
        request,
      });
    }
    await this.#store.invite(user, frame.room, conn.user);
    this.#bus.publish({ kind: "invited", user, room: frame.room, by: conn.user });
    return DONE;
  }

  /** Lists public rooms for discovery: the reply is a `rooms` frame. */
  publicRooms(_conn: Member): Promise<Result> {
    return this.#publicRooms().catch((error) => storeFailed(error, { type: "rooms" }));
  }

  async #publicRooms(): Promise<Result> {
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
    return { ok: true, reply: await this.#listing.frame };
  }

  /** A page of who is online (after `after`, in name order): the reply is an `online` frame. */
  async onlinePage(_conn: Member, query: { after?: string; limit: number }): Promise<Result> {
    try {
      return {
        ok: true,
        reply: JSON.stringify(await onlinePage(this.#presence, query) satisfies ServerFrame),
      };
    } catch (error) {
      return storeFailed(error, { type: "online" });
    }
  }

  /** A page of the connection's user's DMs (after `after`, in partner order): a `dms` frame. */
  async dmPage(conn: Member, query: { after?: string; limit: number }): Promise<Result> {
    try {
      const page = await this.#store.dms(conn.user, query);
      return {
        ok: true,
        reply: JSON.stringify({ type: "dms", ...page } satisfies ServerFrame),
      };
    } catch (error) {
      return storeFailed(error, { type: "dms" });
    }
  }

  /** Sets the password of the connection's (claimed) name: the reply is `password_set`. */
  async setPassword(conn: Member, password: string): Promise<Result> {
    const request = { type: "set_password" } as const;
    if (conn.session === undefined) {
      return refused("forbidden", {
        message: "only a signed-in chat.v1 connection can set a password",
        request,
      });
    }
    try {
      await this.#accounts.setPassword(conn.user, password);
    } catch (error) {
      if (!(error instanceof BusyError)) return storeFailed(error, request);
      return {
        ok: false,
        error: {
          ...errorFrame("rate_limited", {
            message: "the server is busy hashing passwords; try again in a moment",
            request,
          }),
          retry_after: 1000,
        },
      };
    }
    return { ok: true, reply: JSON.stringify({ type: "password_set" } satisfies ServerFrame) };
  }

  /** Revokes this connection's token, or all of the user's, closing their sockets. */
  async logout(conn: Member, everywhere: boolean): Promise<Result> {
    let sessions;
    try {
      sessions = await this.#accounts.revoke(conn.user, everywhere ? undefined : conn.session);
    } catch (error) {
      return storeFailed(error, { type: "logout" });
    }
    this.#bus.publish({
      kind: "revoked",
      user: conn.user,
      sessions: everywhere ? "all" : sessions,
    });
    return DONE;
  }

  /** Relays that the user is typing, at most once an interval per conversation; nothing is stored. */
  async typing(conn: Member, where: { room: string } | { to: string }): Promise<Result> {
    if ("room" in where) {
      if (!this.#isMember(conn.user, where.room)) {
        return refused("not_member", {
          message: `you are not in ${where.room}`,
          request: { type: "typing", room: where.room },
        });
      }
      if (this.#typing.allow(`${conn.user}\0r/${where.room}`)) {
        this.#bus.publish({ kind: "typing", room: where.room, from: conn.user });
      }
      return DONE;
    }
    const request = { type: "typing", to: where.to } as const;
    let to;
    try {
      to = await this.#resolveUser(where.to);
    } catch (error) {
      return storeFailed(error, request);
    }
    if (to === undefined) {
      return refused("unknown_user", { message: `no user is called ${where.to}`, request });
    }
    if (this.#typing.allow(`${conn.user}\0d/${to}`)) {
      this.#bus.publish({ kind: "typing", to, from: conn.user });
    }
    return DONE;
  }

  /** The key of a conversation the user may read, or why not. */
  async conversationKey(
    conn: Member,
    { ref, request }: { ref: ConversationRef; request: "history" | "read" | "resume" },
  ): Promise<Found | Refused> {
    if (ref.room !== undefined) {
      if (!this.#isMember(conn.user, ref.room)) {
        return refused("not_member", {
          message: `join ${ref.room} to read it`,
          request: { type: request, room: ref.room },
        });
      }
      return { ok: true, key: roomKey(ref.room) };
    }
    let other;
    try {
      other = await this.#resolveUser(ref.with);
    } catch (error) {
      return storeFailed(error, { type: request, with: ref.with });
    }
    // Nobody but the two parties can name a DM: the key always holds the asker.
    return { ok: true, key: dmKey(conn.user, other ?? ref.with) };
  }

  /** A page of a conversation's history, oldest first: the reply is a `history` frame. */
  async history(
    conn: Member,
    frame: ConversationRef & { before?: number; after?: number; limit?: number },
  ): Promise<Result> {
    const found = await this.conversationKey(conn, { ref: frame, request: "history" });
    if (!found.ok) return found;
    let page;
    try {
      page = await this.#store.history(found.key, {
        before: frame.before,
        after: frame.after,
        limit: frame.limit ?? HISTORY_DEFAULT,
      });
    } catch (error) {
      return storeFailed(error, { type: "history", ...refOf(frame) });
    }
    return {
      ok: true,
      reply: JSON.stringify({ type: "history", ...refOf(frame), ...page } satisfies ServerFrame),
    };
  }

  /** Marks a conversation read up to an id; every tab of the user hears it. */
  async read(conn: Member, frame: ConversationRef & { id: number }): Promise<Result> {
    const found = await this.conversationKey(conn, { ref: frame, request: "read" });
    if (!found.ok) return found;
    let id;
    try {
      id = await this.#store.markRead(conn.user, found.key, frame.id);
    } catch (error) {
      return storeFailed(error, { type: "read", ...refOf(frame) });
    }
    this.#bus.publish({ kind: "read", user: conn.user, id, ...refOf(frame) });
    return DONE;
  }

  /** The newest `replayLimit` messages after `after`, for a resume or a gap. */
  replay(key: ConversationKey, after: number): Promise<HistoryPage> {
    return this.track(this.#store.history(key, { after, limit: this.limits.replayLimit }));
  }

  /**
   * Counts work a shutdown waits for before the store closes: a connection's
   * frames being handled, and what runs beside them (reads, replays, opening).
   */
  track<T>(work: Promise<T>): Promise<T> {
    this.#inflight.add(work);
    work.then(() => this.#inflight.delete(work), () => this.#inflight.delete(work));
    return work;
  }

  /** Takes a member that closed out of the hub (its `close` calls this). */
  remove(conn: Member): void {
    this.#connections--;
    const set = this.#users.get(conn.user);
    if (!set?.delete(conn) || set.size > 0) return;
    this.#users.delete(conn.user);
    for (const members of this.#members.values()) members.delete(conn.user);
    if (!this.#shuttingDown) this.#presenceStep(conn.user, () => this.#depart(conn.user));
  }

  #each(users: Iterable<string>, fn: (conn: Member) => void): void {
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
    const deliver = (c: Member) => {
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
    while (this.#inflight.size > 0 || this.#storing > 0) {
      if (this.#inflight.size > 0) await Promise.allSettled([...this.#inflight]);
      else {
        this.#storingIdle = Promise.withResolvers();
        await this.#storingIdle.promise;
        this.#storingIdle = undefined;
      }
    }
    for (const conns of this.#users.values()) {
      for (const conn of conns) conn.closePeer(CloseCode.GoingAway, "server shutting down");
    }
    this.#presenceOut[Symbol.dispose]();
    this.#subscription[Symbol.dispose]();
  }
}
