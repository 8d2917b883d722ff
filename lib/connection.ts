/**
 * One client connection inside the hub: it parses the client's frames in
 * order, asks the hub (a {@linkcode HubPort}) for each, turns the results
 * into frames in its own protocol, and, as a {@linkcode Member}, delivers
 * what the hub pushes to its {@linkcode Peer} in conversation order (never
 * twice, never before an earlier one), holding live traffic while a resume
 * or a gap is replayed.
 *
 * @module
 */

import type {
  Accepted,
  ConnectOptions,
  HubPort,
  Member,
  Refused,
  Result,
  Stored,
} from "./member.ts";
import { type ErrorFrame, errorFrame, Outgoing } from "./frames.ts";
import { CloseCode, type Peer } from "./peer.ts";
import {
  type ChatMessage,
  type ConversationRef,
  LOBBY,
  parseClientFrame,
  parseLegacyFrame,
  refOf,
  type ResumePoint,
  type ServerFrame,
  toLegacyError,
} from "./protocol.ts";
import { type ConversationKey, conversationOf } from "./store.ts";
import { LogOnce } from "./log.ts";

const log = new LogOnce();
/** How long a paced replay waits for a client that reads nothing before it is a slow consumer. */
const REPLAY_STALL_MS = 10_000;

const encoder = new TextEncoder();

/** UTF-8 size of a string, computed only when the cheap bounds cannot decide. */
function exceedsBytes(data: string, max: number): boolean {
  if (data.length > max) return true;
  if (data.length * 3 <= max) return false;
  return encoder.encode(data).length > max;
}

/** The answer to `ping`, the same for everyone. */
const PONG = JSON.stringify({ type: "pong" } satisfies ServerFrame);

/**
 * One client connection inside the hub. Frames are handled in the order they
 * arrive; the adapter calls {@linkcode Connection.receive} and
 * {@linkcode Connection.close} and nothing else.
 */
export class Connection implements Member {
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
  #hub: HubPort;
  #peer: Peer;
  #chain: Promise<void>;
  #closed = false;
  /** Bytes of frames taken and not yet handled (reads running beside the chain included). */
  #pending = 0;

  /**
   * Messages to this connection, by conversation: the newest id it was sent
   * (so nothing goes twice or out of order) ...
   */
  #cursors = new Map<ConversationKey, number>();
  /** ... and, while a gap is being read from the store, the live ones that wait behind it. */
  #waiting = new Map<ConversationKey, Array<[ChatMessage, Outgoing]>>();
  /** The socket's buffered amount when last asked, and the most bytes sent since. */
  #buffered = 0;
  #unchecked = 0;
  /** Whether the client connected with `?resume`. */
  #resumable: boolean;
  /** Live messages held until the client's `resume` (when it connected with `?resume`). */
  #held: Array<[ChatMessage, Outgoing]> | undefined;
  /**
   * Messages that reached a `chat.v1` connection before its welcome (it is a member from the
   * moment its socket opens), sent right after the welcome; undefined once welcomed.
   */
  #early: Array<[ChatMessage, Outgoing]> | undefined;

  /**
   * A connection of a peer to a hub; `open` (the hub's) records it and sends
   * its welcome, and frames received meanwhile wait for it. `ChatHub.connect`
   * makes them.
   */
  constructor(init: {
    hub: HubPort;
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
    if (!this.legacy) this.#early = [];
    // Later frames wait for the welcome, so they are handled in arrival order after it.
    this.ready = Promise.resolve().then(() => init.open(this));
    this.#chain = this.ready;
  }

  /** Resolves once the frames taken so far are handled (it never rejects). */
  get settled(): Promise<void> {
    return this.#chain;
  }

  /** Whether its welcome has been sent (legacy connections get none and count as welcomed). */
  get welcomed(): boolean {
    return this.#early === undefined;
  }

  /** Sends the welcome, then the messages that arrived before it. */
  welcome(text: string): void {
    this.#deliver(text);
    const early = this.#early ?? [];
    this.#early = undefined;
    for (const [message, out] of early) this.deliverMessage(message, out);
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
      this.#error(
        errorFrame("binary_unsupported", { message: "send JSON text frames, not binary" }),
      );
      return;
    }
    if (exceedsBytes(data, limits.maxFrameBytes)) return this.#tooBig();
    // What waits behind a slow frame is bounded: a client that sends faster than it is
    // served is closed, not queued for without end.
    const maxQueued = limits.maxQueuedBytes ?? 1024 * 1024;
    if (this.#pending + data.length > maxQueued) {
      this.closePeer(
        CloseCode.PolicyViolation,
        `more than ${maxQueued} bytes of frames waiting; slow down`,
      );
      return this.close();
    }
    const size = data.length;
    this.#pending += size;
    // Sequential: a `send` after a `join` must see the membership the join made.
    this.#chain = this.#chain.then(() => this.#handle(data)).catch((error) => {
      log.error("unexpected error handling a frame", error);
      this.#error(errorFrame("bad_frame", { message: "the server could not handle this frame" }));
    }).finally(() => this.#pending -= size);
    this.#hub.track(this.#chain);
  }

  /** Runs a read beside the chain, still counted among the frames waiting (as 1 KiB). */
  #beside(task: Promise<Result>): void {
    this.#pending += 1024;
    this.#hub.track(
      task.then((result) => this.#answer(result), (error) => this.#storeError(error))
        .finally(() => this.#pending -= 1024),
    );
  }

  /** Answers an operation: its reply, or its error frame (and a strike for a rate limit). */
  #answer(result: Result): void {
    if (result.ok) {
      if (result.reply !== undefined) this.#deliver(result.reply);
      return;
    }
    this.#error(result.error);
    if (result.strike) this.#strike();
  }

  /**
   * Answers a send once taken: a refusal now; once stored, nothing (the
   * sender's copy comes with everyone's), the original of a re-sent `cid`, or
   * `store_failed`.
   */
  #sent(result: Accepted | Refused): void {
    if (!result.ok) return this.#answer(result);
    result.onStored(this.#onStored);
  }

  /** Made once per connection: a send's settling allocates no handler. */
  #onStored = (stored: Stored): void => {
    if ("again" in stored) return this.#acknowledgeAgain(stored.again);
    this.#answer(stored);
  };

  #tooBig(): void {
    this.#peer.close(
      CloseCode.TooBig,
      `frames are limited to ${this.#hub.limits.maxFrameBytes} bytes`,
    );
    this.close();
  }

  async #handle(data: string): Promise<void> {
    // A frame queued before shutdown began is not taken either: the store is about to close.
    if (this.#closed || this.#hub.closing) return;
    const hub = this.#hub;
    if (this.legacy) {
      const parsed = parseLegacyFrame(data, hub.limits);
      if (!parsed.ok) return this.#error(parsed.error);
      const { to_user: to, msg: text } = parsed.frame;
      if (to === undefined) {
        return this.#sent(await hub.send(this, { room: LOBBY, from: this.user, text }));
      }
      return this.#sent(await hub.sendDm(this, { to, from: this.user, text }));
    }
    const parsed = parseClientFrame(data, hub.limits);
    if (!parsed.ok) return this.#error(parsed.error);
    const frame = parsed.frame;
    switch (frame.type) {
      case "ping":
        return this.#deliver(PONG);
      case "join":
        return this.#answer(await hub.join(this, frame.room));
      case "leave":
        return this.#answer(await hub.leave(this, frame.room));
      case "send":
        if (frame.room !== undefined) {
          return this.#sent(
            await hub.send(this, {
              room: frame.room,
              from: this.user,
              text: frame.text,
              cid: frame.cid,
            }),
          );
        }
        return this.#sent(
          await hub.sendDm(this, {
            to: frame.to,
            from: this.user,
            text: frame.text,
            cid: frame.cid,
          }),
        );
      case "typing":
        return this.#answer(
          await hub.typing(
            this,
            frame.room !== undefined ? { room: frame.room } : { to: frame.to },
          ),
        );
      case "history":
        // Reads need no ordering with later frames: let them run beside the chain.
        return this.#beside(hub.history(this, frame));
      case "read":
        return this.#beside(hub.read(this, frame));
      case "resume":
        return await this.#resume(frame.conversations);
      case "create":
        return this.#answer(await hub.create(this, frame));
      case "invite":
        return this.#answer(await hub.invite(this, frame));
      case "rooms":
        return this.#answer(await hub.publicRooms(this));
      case "online":
        return this.#answer(await hub.onlinePage(this, frame));
      case "dms":
        return this.#answer(await hub.dmPage(this, frame));
      case "set_password":
        return this.#answer(await hub.setPassword(this, frame.password));
      case "logout":
        return this.#answer(await hub.logout(this, frame.everywhere));
    }
  }

  /**
   * Counts a refusal by the rate limiter; past a minute's worth of them the
   * client is abusive, and is closed with 1008.
   */
  #strike(): void {
    const now = Date.now();
    if (now - this.#strikes.since > 60_000) this.#strikes = { count: 0, since: now };
    if (++this.#strikes.count > this.#hub.limits.sendBurst) {
      this.closePeer(CloseCode.PolicyViolation, "too many messages; slow down");
      this.close();
    }
  }

  async #resume(points: ResumePoint[]): Promise<void> {
    const hub = this.#hub;
    for (const point of points) {
      const found = await hub.conversationKey(this, { ref: point, request: "resume" });
      if (!found.ok && found.error.code === "store_failed") {
        // As when a replay fails: a dropped connection resumes on reconnect, a skipped
        // conversation would be a hole.
        this.closePeer(CloseCode.InternalError, "could not read history; reconnect to resume");
        return this.close();
      }
      if (!found.ok) {
        this.#answer(found);
        continue;
      }
      const key = found.key;
      // A cursor already past `after` means those messages were sent on this connection.
      const after = Math.max(point.after, this.#cursors.get(key) ?? 0);
      this.#cursors.set(key, after);
      this.#fill(key, { after, ref: refOf(point), announce: true });
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
    const filling = this.#hub.replay(key, after).then(async (page) => {
      if (this.#closed) return;
      for (const message of page.messages) {
        if (message.id <= (this.#cursors.get(key) ?? 0)) continue;
        // Paced by the socket's real backpressure: a long replay to a fast reader waits for
        // its buffer to drain instead of tripping the slow-consumer limit.
        if (!(await this.#drained())) return;
        this.#cursors.set(key, message.id);
        this.#deliver(JSON.stringify({ type: "message", ...message } satisfies ServerFrame));
      }
      // A gap longer than a replay is said out loud, so the client pages the rest with `history`.
      if (announce || page.more) {
        const first = page.messages[0]?.id ?? 0;
        const last = page.messages.at(-1)?.id ?? 0;
        this.#deliver(JSON.stringify(
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
      log.error("replay failed", error);
      this.closePeer(CloseCode.InternalError, "could not read history; reconnect to resume");
      this.close();
    });
    this.#hub.track(filling);
  }

  /**
   * Answers a re-sent cid with its stored message. A resuming client's
   * cursor says what it has, so the usual ordering applies (it got this copy in
   * its replay if it lacked it); any other client gets the copy as its
   * acknowledgement even if it is older than live traffic it has seen.
   */
  #acknowledgeAgain(message: ChatMessage): void {
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
   * Delivers a stored message in conversation order: never twice, never
   * before an earlier one; a gap is filled from the store first.
   */
  deliverMessage(
    message: ChatMessage,
    out: Outgoing,
    key: ConversationKey = conversationOf(message),
  ): void {
    if (this.#closed) return;
    if (this.legacy) return this.deliverShared(out);
    if (this.#early) {
      if (this.#early.length >= this.#hub.limits.replayLimit) {
        this.closePeer(CloseCode.SlowConsumer, "too much arrived before the welcome; reconnect");
        return this.close();
      }
      return void this.#early.push([message, out]);
    }
    if (this.#held) {
      if (this.#held.length >= this.#hub.limits.replayLimit) {
        this.closePeer(CloseCode.SlowConsumer, "resume was never sent; reconnect");
        return this.close();
      }
      this.#held.push([message, out]);
      return;
    }
    const waiting = this.#waiting.get(key);
    if (waiting) {
      // Live messages behind a replay are bounded like those held before a resume.
      if (waiting.length >= this.#hub.limits.replayLimit) {
        this.closePeer(CloseCode.SlowConsumer, "too far behind; reconnect to catch up");
        return this.close();
      }
      return void waiting.push([message, out]);
    }
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

  /**
   * Waits while more than half of `maxBufferedBytes` is queued for the peer,
   * until it is below a quarter; false if the connection closed, or the
   * client read nothing for `REPLAY_STALL_MS` (a slow consumer after all: closed).
   */
  async #drained(): Promise<boolean> {
    const max = this.#hub.limits.maxBufferedBytes;
    const buffered = () => {
      try {
        return this.#peer.bufferedAmount;
      } catch {
        return 0;
      }
    };
    if (buffered() <= max / 2) return !this.#closed;
    let last = buffered();
    let since = Date.now();
    while (!this.#closed && buffered() > max / 4) {
      await new Promise((r) => setTimeout(r, 5));
      const now = buffered();
      if (now < last) since = Date.now();
      last = now;
      if (Date.now() - since > REPLAY_STALL_MS) {
        this.closePeer(CloseCode.SlowConsumer, "too far behind; reconnect to catch up");
        this.close();
      }
    }
    return !this.#closed;
  }

  #storeError(error: unknown): void {
    log.error("store read failed", error);
    this.#error(errorFrame("store_failed", { message: "the store did not answer; try again" }));
  }

  /** Sends an error frame in this connection's protocol. */
  #error(frame: ErrorFrame): void {
    this.#deliver(this.legacy ? toLegacyError(frame) : JSON.stringify(frame));
  }

  /** Sends an encoded frame, or disconnects a client that stopped reading. */
  #deliver(text: string): void {
    if (this.#closed) return;
    try {
      // Inside the try: a socket closed under us throws even on reading bufferedAmount.
      // Asking the socket for its buffered amount is a call into Deno per frame; the answer can
      // only have grown by what was sent since (at most 3 UTF-8 bytes per UTF-16 unit), so ask
      // only when that bound could pass the limit. Same decision, far fewer calls.
      const max = this.#hub.limits.maxBufferedBytes;
      if (this.#buffered + this.#unchecked > max) {
        this.#buffered = this.#peer.bufferedAmount;
        this.#unchecked = 0;
        if (this.#buffered > max) {
          this.#peer.close(CloseCode.SlowConsumer, "too far behind; reconnect to catch up");
          this.close();
          return;
        }
      }
      this.#unchecked += text.length * 3;
      this.#peer.send(text);
    } catch {
      // The socket closed under us; its close event will follow.
      this.close();
    }
  }

  /** Sends a shared frame in this connection's protocol. */
  deliverShared(out: Outgoing): void {
    // Before its welcome a chat.v1 client gets no live events: the welcome says where things stand.
    if (this.#early) return;
    if (!this.legacy) return this.#deliver(out.v1);
    const text = out.legacy;
    if (text !== undefined) this.#deliver(text);
  }

  /** Closes the peer, as the hub's shutdown does (it leaves when the close is reported). */
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
