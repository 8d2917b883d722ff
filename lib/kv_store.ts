/**
 * {@linkcode ChatStore} on Deno KV, the embedded database: a SQLite file
 * locally, a shared database on Deno Deploy.
 *
 * Writes are group-committed: while one atomic commit is in flight, new
 * messages queue, and the next commit takes them all (up to a bound). One
 * commit costs about as much as one `fsync`, so a busy server pays it once
 * per batch instead of once per message, and each sender still waits only
 * for the commit that holds its own message.
 *
 * Ids are per conversation and assigned at commit time from the `last` key,
 * guarded by a versionstamp check, so two processes sharing one database
 * never hand out the same id: the loser reloads and retries.
 *
 * Keys:
 * - `["msg", conversation, id]` → {@linkcode ChatMessage}
 * - `["last", conversation]` → the newest id
 * - `["cid", from, cid]` → `[conversation, id]`, for idempotent re-sends
 * - `["user", name]` → `{ since }`
 * - `["member", user, room]` → `true`
 * - `["dm", user, peer]` → `true`, the DMs a user takes part in
 * - `["read", user, conversation]` → the newest id the user has read
 * - `["room", room]` → {@linkcode RoomInfo}; `["members", room]` → member count (KvU64)
 * - `["invite", user, room]` → `{ by }`
 * - accounts (names, tokens, passwords) live in the same database: see `accounts.ts`
 *
 * @module
 */

import type { ChatMessage, ConversationSummary } from "./protocol.ts";
import {
  type Appended,
  type ChatStore,
  type ConversationKey,
  conversationOf,
  dmKey,
  type HistoryOptions,
  type HistoryPage,
  type JoinOutcome,
  type NewMessage,
  type RoomInfo,
  roomKey,
  StoreError,
} from "./store.ts";

/** Options of {@linkcode KvStore.open}. */
export interface KvStoreOptions {
  /** The most messages one commit takes. */
  maxBatch?: number;
  /** How long a `cid` is remembered for deduplication, in milliseconds. */
  cidTtlMs?: number;
}

const DEFAULT_MAX_BATCH = 500;
const DEFAULT_CID_TTL_MS = 7 * 24 * 3600 * 1000;
// Deno KV caps one atomic at 800 KiB of mutations; stay well below.
const MAX_BATCH_BYTES = 400 * 1024;
// ... and at most 1000 mutations and 100 checks (one per conversation in the batch).
const MAX_MUTATIONS = 1000;
const MAX_CHECKS = 100;
// KV's getMany reads at most 10 keys at once.
const GET_MANY = 10;
const MAX_CONFLICT_RETRIES = 20;
// About five seconds of waiting for a busy database before a write is reported failed.
const BUSY_RETRIES = 60;

interface Pending {
  message: NewMessage;
  conversation: ConversationKey;
  bytes: number;
  resolve(result: Appended): void;
  reject(error: unknown): void;
}

interface Counter {
  last: number;
  versionstamp: string | null;
}

async function getMany<T>(kv: Deno.Kv, keys: Deno.KvKey[]): Promise<Deno.KvEntryMaybe<T>[]> {
  const out: Deno.KvEntryMaybe<T>[] = [];
  for (let i = 0; i < keys.length; i += GET_MANY) {
    out.push(...await kv.getMany<T[]>(keys.slice(i, i + GET_MANY)));
  }
  return out;
}

/**
 * Commits, retrying while SQLite reports the database busy: another process
 * (or handle) sharing the file holds the write lock for a moment.
 */
async function commitRetrying(
  atomic: Deno.AtomicOperation,
): Promise<Deno.KvCommitResult | Deno.KvCommitError> {
  for (let attempt = 0;; attempt++) {
    try {
      return await atomic.commit();
    } catch (error) {
      const busy = /database is locked|busy/i.test(String(error));
      if (!busy || attempt >= BUSY_RETRIES) throw error;
      await new Promise((resolve) => setTimeout(resolve, Math.min(2 ** attempt, 100)));
    }
  }
}

/** A {@linkcode ChatStore} on Deno KV. */
export class KvStore implements ChatStore {
  #kv: Deno.Kv;
  #maxBatch: number;
  #cidTtlMs: number;
  #queue: Pending[] = [];
  #flushing: Promise<void> | undefined;
  #counters = new Map<ConversationKey, Counter>();
  #dmPairs = new Set<ConversationKey>();
  #closed = false;

  private constructor(kv: Deno.Kv, options: KvStoreOptions) {
    this.#kv = kv;
    this.#maxBatch = options.maxBatch ?? DEFAULT_MAX_BATCH;
    this.#cidTtlMs = options.cidTtlMs ?? DEFAULT_CID_TTL_MS;
  }

  /**
   * Opens a store. `path` is a file for Deno KV's SQLite backend, `:memory:`
   * for a throwaway one, or undefined for the platform's default (Deno Deploy).
   */
  static async open(path: string | undefined, options: KvStoreOptions = {}): Promise<KvStore> {
    return new KvStore(await Deno.openKv(path), options);
  }

  append(message: NewMessage): Promise<Appended> {
    if (this.#closed) return Promise.reject(new StoreError("the store is closed"));
    return new Promise((resolve, reject) => {
      this.#queue.push({
        message,
        conversation: conversationOf(message),
        // UTF-8 is at most 3 bytes per UTF-16 unit; the rest is a generous allowance for keys.
        bytes: message.text.length * 3 + 256,
        resolve,
        reject,
      });
      this.#flushing ??= this.#drain();
    });
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue.splice(0, this.#batchSize());
        try {
          await this.#commit(batch);
        } catch (error) {
          const reason = error instanceof StoreError
            ? error
            : new StoreError(`could not store the message: ${String(error)}`, { cause: error });
          for (const p of batch) p.reject(reason);
        }
      }
    } finally {
      this.#flushing = undefined;
    }
  }

  /** How many queued messages fit one atomic commit within Deno KV's limits. */
  #batchSize(): number {
    let bytes = 0, mutations = 0, n = 0;
    const conversations = new Set<ConversationKey>();
    for (; n < this.#queue.length && n < this.#maxBatch; n++) {
      const p = this.#queue[n];
      const first = !conversations.has(p.conversation);
      // The message, the sender's read mark, its cid, the DM index pair, and the
      // conversation's `last` once per batch.
      const cost = 2 + (p.message.cid === undefined ? 0 : 1) +
        (p.message.to === undefined ? 0 : 2) +
        (first ? 1 : 0);
      if (
        n > 0 && (bytes + p.bytes > MAX_BATCH_BYTES || mutations + cost > MAX_MUTATIONS ||
          (first && conversations.size >= MAX_CHECKS))
      ) break;
      bytes += p.bytes;
      mutations += cost;
      conversations.add(p.conversation);
    }
    return n;
  }

  async #loadCounters(conversations: Iterable<ConversationKey>, reload: boolean): Promise<void> {
    const missing = [...new Set(conversations)].filter((c) => reload || !this.#counters.has(c));
    const entries = await getMany<number>(this.#kv, missing.map((c) => ["last", c]));
    missing.forEach((c, i) => {
      const entry = entries[i];
      this.#counters.set(c, { last: entry.value ?? 0, versionstamp: entry.versionstamp });
    });
  }

  /** Messages already stored under their `(from, cid)`, by position in `batch`. */
  async #duplicates(batch: Pending[]): Promise<Map<number, ChatMessage>> {
    const found = new Map<number, ChatMessage>();
    const withCid = batch.flatMap((p, i) => p.message.cid === undefined ? [] : [i]);
    if (withCid.length === 0) return found;
    const refs = await getMany<[ConversationKey, number]>(
      this.#kv,
      withCid.map((i) => ["cid", batch[i].message.from, batch[i].message.cid!]),
    );
    const hits = withCid.flatMap((i, j) => refs[j].value ? [[i, refs[j].value!] as const] : []);
    const messages = await getMany<ChatMessage>(
      this.#kv,
      hits.map(([, [conversation, id]]) => ["msg", conversation, id]),
    );
    hits.forEach(([i], j) => {
      const message = messages[j].value;
      if (message) found.set(i, message);
    });
    return found;
  }

  async #commit(batch: Pending[]): Promise<void> {
    const stored = await this.#duplicates(batch);
    for (let attempt = 0;; attempt++) {
      const fresh = batch.filter((_, i) => !stored.has(i));
      const conversations = fresh.map((p) => p.conversation);
      await this.#loadCounters(conversations, attempt > 0);
      const atomic = this.#kv.atomic();
      const next = new Map<ConversationKey, number>();
      const byCid = new Map<string, ChatMessage>();
      const newPairs: ConversationKey[] = [];
      // Posting in a conversation means having read it: the sender's read mark moves to its message.
      const readMarks = new Map<string, [string, ConversationKey, number]>();
      const results: Appended[] = [];
      const now = Date.now();
      batch.forEach((p, i) => {
        const earlier = stored.get(i);
        if (earlier) return void (results[i] = { message: earlier, duplicate: true });
        const { room, to, from, text, cid } = p.message;
        const cidKey = cid === undefined ? undefined : `${from}\n${cid}`;
        const twin = cidKey === undefined ? undefined : byCid.get(cidKey);
        if (twin) return void (results[i] = { message: twin, duplicate: true });
        const id = (next.get(p.conversation) ?? this.#counters.get(p.conversation)!.last) + 1;
        next.set(p.conversation, id);
        const message: ChatMessage = room !== undefined
          ? { id, room, from, text, ts: now }
          : { id, to, from, text, ts: now };
        if (cid !== undefined) {
          message.cid = cid;
          byCid.set(cidKey!, message);
          atomic.set(["cid", from, cid], [p.conversation, id], { expireIn: this.#cidTtlMs });
        }
        atomic.set(["msg", p.conversation, id], message);
        readMarks.set(`${from}\n${p.conversation}`, [from, p.conversation, id]);
        // The DM index changes once per pair: write it only the first time this process sees the pair.
        if (to !== undefined && !this.#dmPairs.has(p.conversation)) {
          atomic.set(["dm", from, to], true);
          atomic.set(["dm", to, from], true);
          newPairs.push(p.conversation);
        }
        results[i] = { message, duplicate: false };
      });
      for (const [user, conversation, id] of readMarks.values()) {
        atomic.set(["read", user, conversation], id);
      }
      for (const [conversation, last] of next) {
        atomic.check({
          key: ["last", conversation],
          versionstamp: this.#counters.get(conversation)!.versionstamp,
        });
        atomic.set(["last", conversation], last);
      }
      const result = next.size === 0
        ? { ok: true, versionstamp: null }
        : await commitRetrying(atomic);
      if (!result.ok) {
        if (attempt >= MAX_CONFLICT_RETRIES) {
          throw new StoreError("too much contention on the store");
        }
        continue;
      }
      for (const [conversation, last] of next) {
        this.#counters.set(conversation, { last, versionstamp: result.versionstamp });
      }
      for (const pair of newPairs) this.#dmPairs.add(pair);
      batch.forEach((p, i) => p.resolve(results[i]));
      return;
    }
  }

  async history(conversation: ConversationKey, options: HistoryOptions): Promise<HistoryPage> {
    const prefix = ["msg", conversation];
    const selector: Deno.KvListSelector = options.before === undefined
      ? options.after === undefined ? { prefix } : { prefix, start: [...prefix, options.after + 1] }
      : options.after === undefined
      ? { prefix, end: [...prefix, options.before] }
      : { start: [...prefix, options.after + 1], end: [...prefix, options.before] };
    const messages: ChatMessage[] = [];
    const newestFirst = this.#kv.list<ChatMessage>(selector, {
      reverse: true,
      limit: options.limit + 1,
    });
    for await (const entry of newestFirst) messages.push(entry.value);
    const more = messages.length > options.limit;
    if (more) messages.pop();
    return { messages: messages.reverse(), more };
  }

  /** The database, for services that share it (accounts). */
  get kv(): Deno.Kv {
    return this.#kv;
  }

  async rooms(user: string): Promise<string[]> {
    const rooms: string[] = [];
    for await (const entry of this.#kv.list({ prefix: ["member", user] })) {
      rooms.push(entry.key[2] as string);
    }
    return rooms;
  }

  async room(room: string): Promise<RoomInfo | undefined> {
    return (await this.#kv.get<RoomInfo>(["room", room])).value ?? undefined;
  }

  async createRoom(room: string, info: RoomInfo): Promise<boolean> {
    const result = await this.#kv.atomic()
      .check({ key: ["room", room], versionstamp: null })
      .set(["room", room], info)
      .commit();
    return result.ok;
  }

  async join(user: string, room: string): Promise<void> {
    for (;;) {
      const [member, info] = await this.#kv.getMany<[true, RoomInfo]>([
        ["member", user, room],
        ["room", room],
      ]);
      if (member.value) return;
      const atomic = this.#kv.atomic().check(member).check(info)
        .set(["member", user, room], true)
        .delete(["invite", user, room])
        .sum(["members", room], 1n);
      if (!info.value) {
        atomic.set(["room", room], { private: false, owner: user } satisfies RoomInfo);
      }
      if ((await atomic.commit()).ok) return;
    }
  }

  async joinIfAllowed(user: string, room: string): Promise<JoinOutcome> {
    for (;;) {
      const [member, info, invite] = await this.#kv.getMany<[true, RoomInfo, { by: string }]>([
        ["member", user, room],
        ["room", room],
        ["invite", user, room],
      ]);
      const isPrivate = info.value?.private ?? false;
      if (member.value) return { result: "member", private: isPrivate };
      if (isPrivate && invite.value === null) return { result: "forbidden", private: true };
      // The three reads are checked at commit: a change to any of them decides again.
      const atomic = this.#kv.atomic().check(member).check(info).check(invite)
        .set(["member", user, room], true)
        .delete(["invite", user, room])
        .sum(["members", room], 1n);
      if (!info.value) {
        atomic.set(["room", room], { private: false, owner: user } satisfies RoomInfo);
      }
      if ((await atomic.commit()).ok) return { result: "joined", private: isPrivate };
    }
  }

  async leave(user: string, room: string): Promise<void> {
    const member = await this.#kv.get(["member", user, room]);
    if (!member.value) return;
    // KvU64 sums wrap around: adding 2^64 - 1 takes one away.
    await this.#kv.atomic().check(member).delete(["member", user, room])
      .sum(["members", room], 0xffff_ffff_ffff_ffffn).commit();
  }

  async invite(user: string, room: string, by: string): Promise<void> {
    await this.#kv.set(["invite", user, room], { by });
  }

  async invites(user: string): Promise<Array<{ room: string; by: string }>> {
    const out: Array<{ room: string; by: string }> = [];
    for await (const entry of this.#kv.list<{ by: string }>({ prefix: ["invite", user] })) {
      out.push({ room: entry.key[2] as string, by: entry.value.by });
    }
    return out;
  }

  async publicRooms(limit: number): Promise<Array<{ room: string; members: number }>> {
    const rooms: Array<{ room: string; members: number }> = [];
    for await (const entry of this.#kv.list<RoomInfo>({ prefix: ["room"] })) {
      if (!entry.value.private) rooms.push({ room: entry.key[1] as string, members: 0 });
    }
    const counts = await getMany<Deno.KvU64>(this.#kv, rooms.map((r) => ["members", r.room]));
    rooms.forEach((r, i) => r.members = Number(counts[i].value?.value ?? 0n));
    return rooms.sort((a, b) => b.members - a.members || (a.room < b.room ? -1 : 1)).slice(
      0,
      limit,
    );
  }

  async conversations(user: string, rooms: string[]): Promise<ConversationSummary[]> {
    const refs: Array<{ ref: { room: string } | { with: string }; key: ConversationKey }> = rooms
      .map((room) => ({ ref: { room }, key: roomKey(room) }));
    for await (const entry of this.#kv.list({ prefix: ["dm", user] })) {
      const peer = entry.key[2] as string;
      refs.push({ ref: { with: peer }, key: dmKey(user, peer) });
    }
    const lasts = await getMany<number>(this.#kv, refs.map((r) => ["last", r.key]));
    const reads = await getMany<number>(this.#kv, refs.map((r) => ["read", user, r.key]));
    return refs.map((r, i) => {
      const last = lasts[i].value ?? 0;
      const read = Math.min(reads[i].value ?? 0, last);
      return { ...r.ref, last, read, unread: last - read };
    });
  }

  async markRead(user: string, conversation: ConversationKey, id: number): Promise<number> {
    const key = ["read", user, conversation];
    for (;;) {
      const [current, last] = await this.#kv.getMany<[number, number]>([key, [
        "last",
        conversation,
      ]]);
      const target = Math.min(id, last.value ?? 0);
      if ((current.value ?? 0) >= target) return current.value ?? 0;
      const result = await this.#kv.atomic().check(current).set(key, target).commit();
      if (result.ok) return target;
    }
  }

  async healthy(): Promise<boolean> {
    try {
      await this.#kv.get(["health"]);
      return true;
    } catch {
      return false;
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#flushing;
    this.#kv.close();
  }
}
