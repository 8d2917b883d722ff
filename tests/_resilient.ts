/**
 * What the chaos tests share: a seeded PRNG, a client that behaves like the
 * page under failures (resume, re-send by cid, reconnect, retry after
 * `store_failed`), and the stored history to compare its view with.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Frame } from "./_client.ts";
import { openStore } from "../lib/sql/open.ts";

/** A small seeded PRNG (mulberry32), so a failing run can be replayed with its seed. */
export function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A send not yet acknowledged. */
export interface Sent {
  cid: string;
  frame: Frame;
}

/**
 * A client that behaves like the page: it connects with `?resume`, resumes
 * every conversation from where its view ends, re-sends what was not
 * acknowledged with the same cid, and reconnects whenever it is cut off.
 */
export class ResilientClient {
  readonly user: string;
  /** Messages received, by conversation, in arrival order. */
  readonly views = new Map<string, Frame[]>();
  /** Sends not yet acknowledged, by cid, in send order. */
  readonly pending = new Map<string, Sent>();
  /** Acknowledged cids with their id, by conversation. */
  readonly acked = new Map<string, { conv: string; id: number }>();
  /** Rooms this user has joined (as the server confirmed). */
  readonly rooms = new Set<string>();
  duplicates = 0;
  outOfOrder = 0;
  reconnects = 0;
  /** Close events and frames of a socket that was no longer this client's (ignored). */
  stray = 0;
  /** Sends refused with store_failed (and re-sent). */
  storeFailures = 0;
  #origin: () => string;
  #socket: WebSocket | undefined;
  #token: string | undefined;
  #ready = false;
  #stopped = false;
  #listeners = new Set<() => void>();
  #retry: ReturnType<typeof setTimeout> | undefined;
  #closed = Promise.withResolvers<void>();

  constructor(user: string, origin: () => string) {
    this.user = user;
    this.#origin = origin;
  }

  #conv(m: Frame): string {
    if (m.room !== undefined) return `room:${m.room}`;
    return `dm:${m.from === this.user ? m.to : m.from}`;
  }

  #last(conv: string): number {
    return this.views.get(conv)?.at(-1)?.id ?? 0;
  }

  #notify(): void {
    for (const listener of this.#listeners) listener();
  }

  /** Resolves when `condition` holds, checked after every frame. */
  until(condition: () => boolean, what: string, timeoutMs = 60_000): Promise<void> {
    if (condition()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#listeners.delete(check);
        reject(new Error(`${this.user}: timed out waiting for ${what}`));
      }, timeoutMs);
      const check = () => {
        if (!condition()) return;
        clearTimeout(timer);
        this.#listeners.delete(check);
        resolve();
      };
      this.#listeners.add(check);
    });
  }

  connect(): void {
    if (this.#stopped) return;
    const url = `${this.#origin().replace("http", "ws")}/ws/${this.user}?resume`;
    const socket = new WebSocket(
      url,
      this.#token ? ["chat.v1", `token.${this.#token}`] : ["chat.v1"],
    );
    this.#socket = socket;
    this.#ready = false;
    // Only the current socket counts, as in the page (static/app.js): a second close event of
    // one socket, or a late one, must not open a second socket beside it, which would deliver
    // every later message into the same view twice.
    socket.onmessage = (e) => {
      if (this.#socket === socket) this.#onFrame(JSON.parse(e.data));
      else this.stray++;
    };
    socket.onclose = () => {
      if (this.#socket !== socket) return void this.stray++;
      this.#socket = undefined;
      this.#ready = false;
      if (this.#stopped) return this.#closed.resolve();
      this.reconnects++;
      // Back off a little so a dead server is not hammered; the server's restart is awaited by the test.
      this.#retry = setTimeout(() => this.connect(), 20 + Math.random() * 80);
    };
  }

  #onFrame(f: Frame): void {
    if (f.type === "welcome") {
      // The first connection claims the name; later ones prove it with this token.
      if (f.token) this.#token = f.token;
      const conversations = (f.conversations as Frame[]).map((c) => ({
        ...(c.room !== undefined ? { room: c.room } : { with: c.with }),
        after: this.#last(c.room !== undefined ? `room:${c.room}` : `dm:${c.with}`),
      }));
      this.#socket!.send(JSON.stringify({ type: "resume", conversations }));
      this.#ready = true;
      for (const sent of this.pending.values()) this.#socket!.send(JSON.stringify(sent.frame));
    } else if (f.type === "message") {
      const conv = this.#conv(f);
      const view = this.views.get(conv) ?? [];
      this.views.set(conv, view);
      const last = view.at(-1)?.id ?? 0;
      if (view.some((m) => m.id === f.id)) this.duplicates++;
      else if (f.id <= last) this.outOfOrder++;
      view.push(f);
      if (f.from === this.user && f.cid !== undefined && this.pending.has(f.cid)) {
        this.pending.delete(f.cid);
        this.acked.set(f.cid, { conv, id: f.id });
      }
    } else if (f.type === "joined" && f.user === this.user) {
      this.rooms.add(f.room);
    } else if (f.type === "error" && f.code === "store_failed" && this.acked.has(f.ref)) {
      // A second copy (re-sent after a cut) refused while the database was down: the first made it.
    } else if (f.type === "error" && f.code === "store_failed" && this.pending.has(f.ref)) {
      // The database is down: the page offers Retry; this client retries by itself, same cid.
      this.storeFailures++;
      const sent = this.pending.get(f.ref)!;
      const socket = this.#socket;
      setTimeout(() => {
        if (this.pending.has(sent.cid) && this.#socket === socket && this.#ready) {
          socket?.send(JSON.stringify(sent.frame));
        }
      }, 100);
    } else if (f.type === "error") {
      throw new Error(`${this.user} got an error frame: ${JSON.stringify(f)}`);
    }
    this.#notify();
  }

  /** Sends (or queues, while disconnected) a message with a fresh cid. */
  send(where: { room: string } | { to: string }, text: string): void {
    const cid = crypto.randomUUID();
    const frame = { type: "send", ...where, text, cid };
    this.pending.set(cid, { cid, frame });
    if (this.#ready && this.#socket?.readyState === WebSocket.OPEN) {
      this.#socket.send(JSON.stringify(frame));
    }
  }

  /** Joins a room (membership is stored, so it outlives reconnects) and waits for the server's word. */
  join(room: string): Promise<void> {
    this.#socket!.send(JSON.stringify({ type: "join", room }));
    return this.until(() => this.rooms.has(room), `joining ${room}`);
  }

  /** Cuts the connection as a flaky network would; the client reconnects by itself. */
  drop(): void {
    if (this.#socket?.readyState === WebSocket.OPEN) this.#socket.close();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#retry);
    if (this.#socket && this.#socket.readyState !== WebSocket.CLOSED) {
      this.#socket.close();
      await this.#closed.promise;
    }
  }
}

/** Reads every stored message of every conversation straight from the database, as the store returns them. */
export async function storedHistory(data: string): Promise<Map<string, Frame[]>> {
  await using store = await openStore(data);
  const [{ n }] = await store.db.query<{ n: number }>(`SELECT COUNT(*) AS n FROM messages`);
  const out = new Map<string, Frame[]>();
  for (
    const { conv } of await store.db.query<{ conv: string }>(`SELECT DISTINCT conv FROM messages`)
  ) {
    const page = await store.history(conv, { limit: n });
    out.set(conv, page.messages as unknown as Frame[]);
  }
  return out;
}

/** What a chaos run counts once every client has caught up with the store. */
export interface Tally {
  acked: number;
  stored: number;
  lost: number;
  duplicated: number;
  outOfOrder: number;
  reconnects: number;
  /** Events of sockets the clients had already left (see `ResilientClient.stray`). */
  stray: number;
}

/**
 * Waits until every client has caught up with the stored history of each of
 * its conversations, checks the store itself (ids 1..n per conversation, each
 * cid once, every acknowledged cid stored under the id it was acknowledged
 * with), and counts what the clients lost, saw twice or saw out of order.
 */
export async function tally(
  clients: readonly ResilientClient[],
  stored: Map<string, Frame[]>,
): Promise<Tally> {
  const expectedFor = (c: ResilientClient) => {
    const out = new Map<string, Frame[]>();
    for (const [key, messages] of stored) {
      const [kind, a, b] = key.split("/");
      if (kind === "r") out.set(`room:${a}`, messages);
      else if (a === c.user || b === c.user) out.set(`dm:${a === c.user ? b : a}`, messages);
    }
    return out;
  };
  await Promise.all(clients.map(async (c) => {
    const expected = expectedFor(c);
    const behind = () =>
      [...expected].filter(([conv, msgs]) =>
        (c.views.get(conv)?.at(-1)?.id ?? 0) < msgs.at(-1)!.id
      );
    try {
      await c.until(() => behind().length === 0, "catching up");
    } catch (error) {
      // Which conversations, and where the view stops: what a replay (by seed) should look at.
      const where = behind().map(([conv, msgs]) => {
        const view = c.views.get(conv) ?? [];
        const seen = new Set(view.map((m) => m.id));
        const missing = msgs.filter((m) => !seen.has(m.id)).map((m) => m.id);
        return `${conv}: view ends at ${view.at(-1)?.id ?? 0} (${view.length} seen), stored ${
          msgs.at(-1)!.id
        }, missing ${missing.slice(0, 10).join(",")}${missing.length > 10 ? ",…" : ""}`;
      });
      throw new Error(
        `${(error as Error).message} (${c.reconnects} reconnects): ${where.join("; ")}`,
      );
    }
  }));
  const counts: Tally = {
    acked: 0,
    stored: 0,
    lost: 0,
    duplicated: 0,
    outOfOrder: 0,
    reconnects: 0,
    stray: 0,
  };
  for (const c of clients) {
    counts.duplicated += c.duplicates;
    counts.outOfOrder += c.outOfOrder;
    counts.acked += c.acked.size;
    counts.reconnects += c.reconnects;
    counts.stray += c.stray;
    for (const [conv, msgs] of expectedFor(c)) {
      const seen = new Set((c.views.get(conv) ?? []).map((m) => m.id));
      counts.lost += msgs.filter((m) => !seen.has(m.id)).length;
    }
  }
  const byCid = new Map<string, number>();
  for (const [key, msgs] of stored) {
    counts.stored += msgs.length;
    assert.deepEqual(msgs.map((x) => x.id), msgs.map((_, i) => i + 1), `ids of ${key} are 1..n`);
    for (const m of msgs) {
      assert.equal(byCid.has(m.cid), false, `cid ${m.cid} stored twice`);
      byCid.set(m.cid, m.id);
    }
  }
  for (const c of clients) {
    for (const [cid, { id }] of c.acked) {
      assert.equal(byCid.get(cid), id, `acked ${cid} is stored as ${id}`);
    }
  }
  return counts;
}

/**
 * Brings every client in: each connects and has its first message (`<user>
 * is here`, in the lobby) acknowledged, so everyone exists before anyone DMs
 * them; then all join `room`, whose replay and live traffic are checked like
 * the lobby's.
 */
export async function arrive(clients: readonly ResilientClient[], room: string): Promise<void> {
  for (const c of clients) c.connect();
  await Promise.all(clients.map((c) => {
    c.send({ room: "lobby" }, `${c.user} is here`);
    return c.until(() => c.acked.size === 1, `first ack of ${c.user}`);
  }));
  await Promise.all(clients.map((c) => c.join(room)));
}
