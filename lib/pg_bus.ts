/**
 * The {@linkcode Bus} between instances on one PostgreSQL.
 *
 * A conversation's log in the messages table is the truth; the live channel
 * only says "conversation X has reached N". So:
 *
 * - A message the hub publishes is stored (committed) already. Its own
 *   instance delivers it at once; other instances learn of it from the
 *   `NOTIFY` its append transaction sent (one per batch, naming every
 *   conversation that moved, with its first and last new id), written in the
 *   same statement as the conversations' rows in `chat_positions`, and
 *   committed with the messages: nothing is stored unannounced
 *   ({@linkcode PgBus.announceAtCommit}).
 * - An instance that hears of a conversation it has members of reads the new
 *   rows from the messages table and hands them to its hub in order; the
 *   gaps of every conversation heard of in one turn of the loop are read in
 *   one query. Conversations it has no member of are not read at all. Per conversation
 *   it keeps the last id it handed over; anything after a gap (a message of
 *   its own whose predecessors it has not seen, a notification it missed)
 *   waits until the gap is read. Nothing is handed over that is not stored,
 *   nothing twice. (Each connection's cursor then fills any gap of its own.)
 * - When the LISTEN connection comes back (postgres.js re-listens by itself;
 *   a watchdog pings the channel and re-listens if its pings stop coming
 *   back), the instance reads `chat_positions` for every conversation that
 *   moved since it last heard itself, and catches up those it has members of.
 *   While the pings do not come back, it reads them at every ping instead.
 *   Only the newest listener is heard: postgres.js hands each notification
 *   to every listener it was ever given on the channel, failed attempts' too.
 * - Ephemeral events (typing, joined/left, read, invited, revoked, presence)
 *   travel in the same notifications (each under 8000 bytes, PostgreSQL's
 *   limit): best effort, as in one process.
 * - With `pollMs` > 0 (for connection poolers that cannot LISTEN) nothing
 *   listens: the instance reads `chat_positions` and `chat_events` every
 *   `pollMs`.
 *
 * While PostgreSQL is down, nothing new is stored, so nothing new is
 * announced; pending announcements are retried until it is back.
 *
 * @module
 */

import type { Bus, BusEvent, BusHandler, BusInterest } from "./bus.ts";
import type { Sql } from "./pg_instance.ts";
import type { ChatMessage } from "./protocol.ts";
import type { AnnounceWith, Moved, Statement } from "./sql/append.ts";
import type { SqlValue } from "./sql/dialect.ts";
import { MESSAGE_COLUMNS, type MessageRow, toMessage } from "./sql/store.ts";
import { type ConversationKey, conversationOf } from "./store.ts";

/** Options of {@linkcode PgBus.start}. */
export interface PgBusOptions {
  /** The client (a pool). */
  sql: Sql;
  /** This instance's id: its own notifications are not delivered twice. */
  instance: string;
  /** Poll every this many milliseconds instead of listening; 0 listens. */
  pollMs?: number;
  /** The channel; `chat` by default. */
  channel?: string;
  /** How often the watchdog pings the channel, in milliseconds. */
  pingMs?: number;
  /** Where troubles (and their end) are told, a line each; `console.error` by default. */
  log?: (line: string) => void;
}

/** The most rows one catch-up read takes per conversation; connections page the rest. */
const MAX_READ = 500;
/** The most rows one read of several conversations' gaps asks for. */
const MAX_READ_ROWS = 5000;
/** PostgreSQL refuses NOTIFY payloads of 8000 bytes or more. */
const MAX_PAYLOAD = 7500;
/** Ephemeral events queued while the database is down, at most. */
const MAX_PENDING_EVENTS = 10_000;
/** The watchdog listens again at most this often (ms) while its pings go unanswered. */
const RELISTEN_MS = 30_000;
/** How far back catch-up reads before the last moment known to be heard, for commits in flight. */
const MARGIN_MS = 2000;

/** A notification's body. */
interface Payload {
  /** The instance that sent it. */
  o: string;
  /** Conversations that moved: key, first new id, last new id. */
  p?: Moved;
  /** Ephemeral events. */
  e?: BusEvent[];
  /** A watchdog ping: the database's time when sent, in ms. */
  ping?: number;
}

/** What this instance knows of one conversation. */
interface Conversation {
  /** The newest id handed to the hub. */
  known: number;
  /** The newest id known to exist. */
  target: number;
  /** Messages of this instance's own, by id, waiting for their predecessors. */
  held: Map<number, ChatMessage>;
  /** A gap is being read. */
  reading: boolean;
  /**
   * New here: the messages stored since this time (ms) before the first one
   * heard of are read and handed over first.
   */
  fresh?: number;
}

/** A conversation's gap waiting to be read: ids after `after` and before `before`. */
interface Gap {
  conv: Conversation;
  after: number;
  before: number;
  /** Only those stored since this time (ms): the lead-in of a conversation new here. */
  since?: number;
}

/** Fan-out over PostgreSQL: positions by NOTIFY (or polling), messages from the table. */
export class PgBus implements Bus {
  #sql: Sql;
  #me: string;
  #channel: string;
  #pollMs: number;
  #pingMs: number;
  #subs = new Set<{ handler: BusHandler; interest?: BusInterest }>();
  #conversations = new Map<ConversationKey, Conversation>();
  /** Gaps waiting for the next read, and whether one is running. */
  #gaps = new Map<ConversationKey, Gap>();
  #readTimer: ReturnType<typeof setTimeout> | undefined;
  #readingGaps = false;
  #positions = new Map<ConversationKey, [number, number]>();
  #events: BusEvent[] = [];
  #flushing: Promise<void> | undefined;
  #flushTimer: ReturnType<typeof setTimeout> | undefined;
  #timer: ReturnType<typeof setInterval> | undefined;
  #listener: { unlisten(): Promise<void> } | undefined;
  #closed = false;
  /** The database time up to which every notification is known to have been heard (ms). */
  #synced = 0;
  /** Local time the last own ping came back, and the last ping was sent. */
  #pingSeen = 0;
  #pingSent = 0;
  #relistening = false;
  /** When the watchdog last listened again (ms), and which listener is the current one. */
  #relistened = 0;
  #generation = 0;
  /** Catch-up reads under way. */
  #catchingUp = 0;
  /** Polling: the last event read. */
  #eventSeq = 0;
  #polling = false;
  #lastPrune = 0;
  #suspect: ReturnType<typeof setTimeout> | undefined;
  /** What has failed and was said so: each trouble is logged once until it clears. */
  #troubles = new Set<string>();
  /** Retries waiting to run, cleared by {@linkcode PgBus.close}; one catch-up retry at a time. */
  #retries = new Set<ReturnType<typeof setTimeout>>();
  #catchUpRetry = false;
  /** Own messages are announced by their commits ({@linkcode announceAtCommit}). */
  #atCommit = false;
  #log: (line: string) => void;

  private constructor(options: PgBusOptions) {
    this.#sql = options.sql;
    this.#me = options.instance;
    this.#channel = options.channel ?? "chat";
    this.#pollMs = options.pollMs ?? 0;
    this.#pingMs = options.pingMs ?? 2000;
    this.#log = options.log ?? console.error;
  }

  /** Starts listening (or polling); resolves once the channel is heard. */
  static async start(options: PgBusOptions): Promise<PgBus> {
    const bus = new PgBus(options);
    const [row] = await bus.#sql`
      SELECT (extract(epoch from now()) * 1000)::float8 AS now,
        (SELECT coalesce(max(seq), 0)::float8 FROM chat_events) AS seq`;
    bus.#synced = Number(row.now);
    bus.#eventSeq = Number(row.seq);
    if (bus.#pollMs > 0) {
      bus.#timer = setInterval(() => void bus.#poll(), bus.#pollMs);
    } else {
      await bus.#listen();
      bus.#pingSeen = Date.now();
      bus.#timer = setInterval(() => void bus.#watch(), bus.#pingMs);
    }
    return bus;
  }

  async #listen(): Promise<void> {
    // Only the newest listener speaks: postgres.js keeps every listener it was given on the
    // channel, a failed attempt's too, and hands each notification to all of them.
    const generation = ++this.#generation;
    let first = true;
    const listener = await this.#sql.listen(
      this.#channel,
      (payload) => {
        if (generation === this.#generation) this.#onNotify(payload);
      },
      () => {
        if (generation !== this.#generation) return;
        // Called on every (re)listen: after the first, whatever moved meanwhile is read back.
        if (first) first = false;
        else void this.#catchUp();
      },
    );
    if (this.#closed) await listener.unlisten().catch(() => {});
    else if (generation === this.#generation) this.#listener = listener;
  }

  /** Runs `fn` after `ms`, unless the bus is closed by then. */
  #retry(fn: () => void, ms: number): void {
    if (this.#closed) return;
    const timer = setTimeout(() => {
      this.#retries.delete(timer);
      fn();
    }, ms);
    this.#retries.add(timer);
  }

  subscribe(handler: BusHandler, interest?: BusInterest): Disposable {
    const sub = { handler, interest };
    this.#subs.add(sub);
    return { [Symbol.dispose]: () => void this.#subs.delete(sub) };
  }

  /**
   * From now on, every message this instance stores is announced by its own
   * commit: the store runs the returned statement among the append's writes
   * (`SqlStore.announceWith`), and the tick announces only events and
   * {@linkcode reached} messages. Announced after the commit, a message
   * whose instance died first (or whose database went away and came back)
   * reached no member elsewhere until something newer came in its
   * conversation (`tests/pg_announce_test.ts`).
   */
  announceAtCommit(): AnnounceWith {
    this.#atCommit = true;
    return (moved) => this.#announcement(moved, []);
  }

  /**
   * The one statement that announces: moves the conversations' rows in
   * `chat_positions` (`moved` sorted by key, so that two instances take
   * those rows' locks in one order) and sends the notifications (or, when
   * polling, writes them to `chat_events`). Run inside an append's
   * transaction, or on its own by the tick.
   */
  #announcement(moved: Moved, events: BusEvent[]): Statement {
    const params = [
      moved.map(([key]) => key),
      moved.map(([, , last]) => last),
      this.#pollMs > 0 ? this.#me : this.#channel,
      pack(this.#me, moved, events),
    ] as unknown as SqlValue[];
    // clock_timestamp(), not now(): in an append's transaction, the moment of its writes, which
    // may come long after its start (it waited for the heads' locks), for the catch-up's window.
    const up = `WITH up AS (
        INSERT INTO chat_positions (conversation, last, updated_at)
        SELECT k, l, clock_timestamp() FROM unnest($1::text[], $2::bigint[]) AS t(k, l)
        ON CONFLICT (conversation) DO UPDATE
          SET last = greatest(chat_positions.last, excluded.last), updated_at = excluded.updated_at
        RETURNING 1)`;
    return {
      text: this.#pollMs > 0
        ? `${up} INSERT INTO chat_events (origin, payload) SELECT $3, x FROM unnest($4::text[]) AS x`
        : `${up} SELECT pg_notify($3, x) FROM unnest($4::text[]) AS x`,
      params,
    };
  }

  publish(event: BusEvent): void {
    if (event.kind === "message") return this.#own(event.message, !this.#atCommit);
    this.#deliver(event);
    if (this.#closed) return;
    for (const part of split(event)) this.#events.push(part);
    if (this.#events.length > MAX_PENDING_EVENTS) this.#events.splice(0, 1000);
    this.#scheduleFlush(0);
  }

  reached(message: ChatMessage): void {
    this.#own(message, true);
  }

  /**
   * A message stored by this instance: delivered here now (after any gap),
   * and announced at the tick unless its commit announced it.
   */
  #own(message: ChatMessage, announce: boolean): void {
    const key = conversationOf(message);
    if (announce) {
      const pos = this.#positions.get(key);
      this.#positions.set(
        key,
        pos ? [Math.min(pos[0], message.id), Math.max(pos[1], message.id)] : [
          message.id,
          message.id,
        ],
      );
      this.#scheduleFlush(0);
    }
    let conv = this.#conversations.get(key);
    if (!conv) {
      conv = this.#fresh(message.id - 1);
      this.#conversations.set(key, conv);
    }
    if (message.id <= conv.known) return;
    conv.held.set(message.id, message);
    conv.target = Math.max(conv.target, message.id);
    this.#pump(key, conv);
  }

  /**
   * A conversation new here, about to hand over what follows `known`. What
   * came before is for each connection's cursor to fill, but a connection
   * that has no cursor yet (a member who just joined) takes whatever comes
   * first: so the messages stored just before (in the last {@linkcode MARGIN_MS},
   * which this instance may not have heard of yet, their announcements still
   * on their way) are read and handed over first.
   */
  #fresh(known: number): Conversation {
    return {
      known,
      target: 0,
      held: new Map(),
      reading: false,
      fresh: known > 0 ? Date.now() - MARGIN_MS : undefined,
    };
  }

  #interested(key: ConversationKey): boolean {
    for (const sub of this.#subs) if (!sub.interest || sub.interest.has(key)) return true;
    return false;
  }

  /** Another instance (or the table) says a conversation reached `to`, from `from` if known. */
  #advance(key: ConversationKey, from: number | undefined, to: number): void {
    if (!this.#interested(key)) {
      const conv = this.#conversations.get(key);
      if (conv && !conv.reading && conv.held.size === 0) this.#conversations.delete(key);
      return;
    }
    let conv = this.#conversations.get(key);
    if (!conv) {
      conv = this.#fresh((from ?? to) - 1);
      this.#conversations.set(key, conv);
    }
    if (to <= conv.known) return;
    // An announcement that starts past what was handed over: an earlier one was missed (or is
    // late). This conversation reads its gap below; the others are checked from the table.
    if (from !== undefined && from > conv.known + 1) this.#suspectMissed();
    conv.target = Math.max(conv.target, to);
    this.#pump(key, conv);
  }

  /** At most once a second, catches up every conversation from the table. */
  #suspectMissed(): void {
    if (this.#suspect !== undefined || this.#closed) return;
    this.#suspect = setTimeout(() => {
      void this.#catchUp().finally(() => {
        // A quiet second before the next one, so a burst of gaps costs one read.
        this.#suspect = this.#closed
          ? undefined
          : setTimeout(() => this.#suspect = undefined, 1000);
      });
    }, 0);
  }

  /**
   * Hands a conversation's messages to the hub in order; at a gap, asks for
   * it to be read (with every other conversation's gap of this turn, in one
   * query) and continues when it is.
   */
  #pump(key: ConversationKey, conv: Conversation): void {
    if (conv.reading) return;
    if (conv.fresh !== undefined) {
      conv.reading = true;
      // The newest MAX_READ before what comes next, stored since then.
      const after = Math.max(0, conv.known - MAX_READ);
      this.#gaps.set(key, { conv, after, before: conv.known + 1, since: conv.fresh });
      conv.fresh = undefined;
      this.#scheduleRead();
      return;
    }
    while (conv.known < conv.target && !this.#closed) {
      const next = conv.held.get(conv.known + 1);
      if (next) {
        conv.held.delete(next.id);
        conv.known = next.id;
        this.#deliver({ kind: "message", message: next });
        continue;
      }
      // A gap: read it (up to the first message held, or the target).
      let before = conv.target + 1;
      for (const id of conv.held.keys()) if (id > conv.known && id < before) before = id;
      conv.reading = true;
      this.#gaps.set(key, { conv, after: conv.known, before });
      this.#scheduleRead();
      return;
    }
    for (const id of conv.held.keys()) if (id <= conv.known) conv.held.delete(id);
  }

  #scheduleRead(): void {
    if (this.#readTimer !== undefined || this.#readingGaps || this.#closed) return;
    // The gaps of this turn of the loop (one notification names many conversations) together.
    this.#readTimer = setTimeout(() => {
      this.#readTimer = undefined;
      void this.#readGaps();
    }, 0);
  }

  /**
   * Reads the waiting gaps, as many conversations as fit {@linkcode MAX_READ_ROWS}
   * rows, in one query; one such query at a time.
   */
  async #readGaps(): Promise<void> {
    if (this.#readingGaps || this.#gaps.size === 0) return;
    this.#readingGaps = true;
    const taken: Array<[ConversationKey, Gap, number]> = [];
    let rows = 0;
    for (const [key, gap] of this.#gaps) {
      const limit = Math.min(MAX_READ, gap.before - gap.after - 1);
      if (taken.length > 0 && rows + limit > MAX_READ_ROWS) break;
      taken.push([key, gap, limit]);
      rows += limit;
    }
    for (const [key] of taken) this.#gaps.delete(key);
    let read: Map<ConversationKey, ChatMessage[]>;
    try {
      read = await this.#read(
        taken.map(([key, gap, limit]) => [key, gap.after, gap.before, limit, gap.since ?? 0]),
      );
      this.#cleared("read");
    } catch (error) {
      this.#trouble("read", `could not read new messages (${(error as Error).message}); retrying`);
      this.#retry(() => {
        this.#readingGaps = false;
        for (const [key, gap] of taken) {
          gap.conv.reading = false;
          if (gap.since !== undefined) gap.conv.fresh = gap.since;
          this.#pump(key, gap.conv);
        }
        this.#scheduleRead();
      }, 500);
      return;
    }
    this.#readingGaps = false;
    for (const [key, { conv, before, since }] of taken) {
      conv.reading = false;
      if (this.#conversations.get(key) !== conv) continue;
      if (since !== undefined) {
        // The lead-in: all before what is handed over next, in order.
        for (const message of read.get(key) ?? []) this.#deliver({ kind: "message", message });
        this.#pump(key, conv);
        continue;
      }
      let progressed = false;
      for (const message of read.get(key) ?? []) {
        if (message.id <= conv.known) continue;
        for (const id of conv.held.keys()) if (id <= message.id) conv.held.delete(id);
        conv.known = message.id;
        progressed = true;
        this.#deliver({ kind: "message", message });
      }
      if (!progressed) {
        // Not in the table (a bad announcement?): skip to what is held, or stop here.
        if (before <= conv.target) conv.known = before - 1;
        else conv.target = conv.known;
      }
      this.#pump(key, conv);
    }
    if (this.#gaps.size > 0) this.#scheduleRead();
  }

  /**
   * Reads each `(conversation, after, before, limit, since)` range of the
   * messages table (ids between `after` and `before`, stored at `since` ms or
   * later), in id order.
   */
  async #read(
    ranges: Array<[ConversationKey, number, number, number, number]>,
  ): Promise<Map<ConversationKey, ChatMessage[]>> {
    const rows = await this.#sql`
      SELECT m.* FROM unnest(
        ${ranges.map((r) => r[0])}::text[], ${ranges.map((r) => r[1])}::bigint[],
        ${ranges.map((r) => r[2])}::bigint[], ${ranges.map((r) => r[3])}::int[],
        ${ranges.map((r) => r[4])}::bigint[]
      ) AS r(conv, after, before, lim, since)
      CROSS JOIN LATERAL (
        SELECT ${this.#sql.unsafe(MESSAGE_COLUMNS)} FROM messages
        WHERE conv = r.conv AND id > r.after AND id < r.before AND ts >= r.since
        ORDER BY id LIMIT r.lim
      ) m`;
    const out = new Map<ConversationKey, ChatMessage[]>();
    for (const row of rows) {
      const message = toMessage(row as unknown as MessageRow);
      const list = out.get(row.conv);
      if (list) list.push(message);
      else out.set(row.conv, [message]);
    }
    return out;
  }

  #trouble(what: string, message: string): void {
    // Once closed, what was under way fails as the pool ends: nothing to tell.
    if (this.#troubles.has(what) || this.#closed) return;
    this.#troubles.add(what);
    this.#log(`fan-out: ${message}`);
  }

  #cleared(what: string): void {
    if (this.#troubles.delete(what)) this.#log(`fan-out: ${what} works again`);
  }

  #deliver(event: BusEvent): void {
    for (const sub of this.#subs) {
      try {
        sub.handler(event);
      } catch (error) {
        console.error("fan-out: a subscriber failed", error);
      }
    }
  }

  #onNotify(text: string): void {
    let payload: Payload;
    try {
      payload = JSON.parse(text);
    } catch {
      return;
    }
    if (payload.o === this.#me) {
      if (typeof payload.ping === "number") {
        this.#synced = Math.max(this.#synced, payload.ping);
        this.#pingSeen = Date.now();
        this.#cleared("listen");
      }
      return;
    }
    for (const [key, from, to] of payload.p ?? []) this.#advance(key, from, to);
    for (const event of payload.e ?? []) if (event.kind !== "message") this.#deliver(event);
  }

  /**
   * Reads every conversation that moved since the last moment this instance
   * is sure it heard everything, and catches up those it has members of.
   */
  async #catchUp(): Promise<void> {
    this.#catchingUp++;
    try {
      const rows = await this.#sql`
        SELECT p.conversation, p.last::float8 AS last, t.now FROM
          (SELECT (extract(epoch from now()) * 1000)::float8 AS now) t
        LEFT JOIN chat_positions p
          ON p.updated_at > to_timestamp(${(this.#synced - MARGIN_MS) / 1000})`;
      for (const row of rows) {
        if (row.conversation !== null) this.#advance(row.conversation, undefined, Number(row.last));
      }
      if (rows[0]) this.#synced = Math.max(this.#synced, Number(rows[0].now));
      this.#cleared("catch-up");
    } catch (error) {
      this.#trouble("catch-up", `catch-up failed (${(error as Error).message}); retrying`);
      // The watchdog may start one at each ping meanwhile: one retry is enough.
      if (!this.#catchUpRetry) {
        this.#catchUpRetry = true;
        this.#retry(() => {
          this.#catchUpRetry = false;
          void this.#catchUp();
        }, 500);
      }
    } finally {
      this.#catchingUp--;
    }
  }

  /**
   * The watchdog: pings its own channel. While the pings do not come back,
   * what moved is read from the table at every ping instead, and the
   * channel is listened to again (at most every {@linkcode RELISTEN_MS}:
   * postgres.js keeps trying by itself, and each attempt is one more listener on its channel).
   */
  async #watch(): Promise<void> {
    if (this.#closed) return;
    const now = Date.now();
    if (
      this.#pingSent > this.#pingSeen &&
      now - this.#pingSeen > 3 * this.#pingMs && now - this.#pingSent < this.#pingMs * 1.5
    ) {
      // Pings go out but do not come back: the LISTEN connection is lost.
      if (this.#catchingUp === 0) void this.#catchUp();
      if (!this.#relistening && now - this.#relistened >= RELISTEN_MS && !this.#closed) {
        this.#relistening = true;
        this.#relistened = now;
        try {
          await this.#listener?.unlisten().catch(() => {});
          await this.#listen();
        } catch (error) {
          this.#trouble("listen", `could not listen again (${(error as Error).message})`);
        } finally {
          this.#relistening = false;
        }
      }
    }
    if (this.#closed) return;
    try {
      const ping = { o: this.#me } as const;
      await this.#sql`
        SELECT pg_notify(${this.#channel}, json_build_object(
          'o', ${ping.o}::text, 'ping', (extract(epoch from now()) * 1000)::float8)::text)`;
      this.#pingSent = Date.now();
    } catch {
      // The database is down; postgres.js reconnects, and the next ping tells.
    }
    this.#prune();
  }

  /** Forgets conversations nobody here takes part in any more. */
  #prune(): void {
    for (const [key, conv] of this.#conversations) {
      if (!conv.reading && conv.held.size === 0 && !this.#interested(key)) {
        this.#conversations.delete(key);
      }
    }
  }

  async #poll(): Promise<void> {
    if (this.#polling || this.#closed) return;
    this.#polling = true;
    try {
      // The events first: they carry each batch's first id, so a conversation new here is read
      // from there; the positions then catch up anything an event did not say.
      const rows = await this.#sql`
        SELECT seq::float8 AS seq, payload FROM chat_events
        WHERE seq > ${this.#eventSeq} AND origin <> ${this.#me} ORDER BY seq LIMIT 1000`;
      for (const row of rows) {
        this.#eventSeq = Math.max(this.#eventSeq, Number(row.seq));
        this.#onNotify(row.payload);
      }
      await this.#catchUp();
      this.#cleared("poll");
      if (Date.now() - this.#lastPrune > 10_000) {
        this.#lastPrune = Date.now();
        this.#prune();
        await this.#sql`DELETE FROM chat_events WHERE at < now() - interval '1 minute'`;
      }
    } catch (error) {
      this.#trouble("poll", `polling failed (${(error as Error).message})`);
    } finally {
      this.#polling = false;
    }
  }

  #scheduleFlush(ms: number): void {
    if (this.#flushTimer !== undefined || this.#flushing || this.#closed) return;
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = undefined;
      this.#flushing = this.#flush().finally(() => {
        this.#flushing = undefined;
        if (this.#positions.size > 0 || this.#events.length > 0) this.#scheduleFlush(0);
      });
    }, ms);
  }

  /** Announces what moved since the last tick: one statement, one notification (or a few). */
  async #flush(): Promise<void> {
    const positions = this.#positions;
    const events = this.#events;
    if (positions.size === 0 && events.length === 0) return;
    this.#positions = new Map();
    this.#events = [];
    const moved: Moved = [...positions.keys()].sort().map((k) => [k, ...positions.get(k)!]);
    const { text, params } = this.#announcement(moved, events);
    try {
      await this.#sql.unsafe(text, params as never);
      this.#cleared("announce");
    } catch (error) {
      // Put them back (merged with any newer ones) and try again shortly.
      for (const [key, [from, to]] of positions) {
        const now = this.#positions.get(key);
        this.#positions.set(key, now ? [Math.min(now[0], from), Math.max(now[1], to)] : [from, to]);
      }
      this.#events = [...events, ...this.#events].slice(-MAX_PENDING_EVENTS);
      if (!this.#closed) {
        this.#trouble("announce", `could not announce (${(error as Error).message}); retrying`);
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }
  }

  /**
   * Stops listening or polling after announcing what is pending. From its
   * start nothing new is scheduled, and retries still waiting are dropped:
   * none of them may outlive the bus and query a pool being ended.
   */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    clearTimeout(this.#suspect);
    clearTimeout(this.#flushTimer);
    clearTimeout(this.#readTimer);
    for (const timer of this.#retries) clearTimeout(timer);
    this.#retries.clear();
    this.#flushTimer = undefined;
    await this.#flushing;
    if (this.#positions.size > 0 || this.#events.length > 0) {
      // Bounded: a database that does not answer does not hold the shutdown. The timer is
      // cleared either way, or it would outlive the bus (and fail the tests' ops sanitizer).
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([this.#flush(), new Promise((r) => timer = setTimeout(r, 2000))]);
      clearTimeout(timer);
    }
    await this.#listener?.unlisten().catch(() => {});
  }
}

/** An event cut into parts that fit a notification (only a revocation's session list can be long). */
function split(event: BusEvent): BusEvent[] {
  if (event.kind !== "revoked" || event.sessions === "all" || event.sessions.length <= 100) {
    return [event];
  }
  const parts: BusEvent[] = [];
  for (let i = 0; i < event.sessions.length; i += 100) {
    parts.push({ ...event, sessions: event.sessions.slice(i, i + 100) });
  }
  return parts;
}

/** Packs positions and events into as few payloads under the limit as it can. */
function pack(
  me: string,
  positions: Moved,
  events: BusEvent[],
): string[] {
  const out: string[] = [];
  let current: Payload = { o: me };
  let size = JSON.stringify(current).length;
  const push = () => {
    if (current.p || current.e) out.push(JSON.stringify(current));
    current = { o: me };
    size = JSON.stringify(current).length;
  };
  const add = (item: unknown, field: "p" | "e") => {
    const bytes = new TextEncoder().encode(JSON.stringify(item)).length + 8;
    if (bytes + 64 > MAX_PAYLOAD) {
      console.error(`fan-out: an event of ${bytes} bytes is too large to announce; dropped`);
      return;
    }
    if (size + bytes > MAX_PAYLOAD) push();
    // deno-lint-ignore no-explicit-any
    ((current[field] ??= []) as any[]).push(item);
    size += bytes;
  };
  for (const p of positions) add(p, "p");
  for (const e of events) add(e, "e");
  push();
  return out;
}
