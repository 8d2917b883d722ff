/**
 * {@linkcode ChatStore} on SQL: SQLite for one machine, PostgreSQL for
 * several instances, one set of queries.
 *
 * Writes are group-committed: while one transaction is in flight, new
 * messages queue, and the next transaction takes them all (up to a bound);
 * messages that arrive in the same turn of the event loop go in one. The
 * transaction itself is `append.ts`: SQLite's engine runs it whole, as one
 * op, PostgreSQL statement by statement on the transaction's
 * connection. Each sender waits only for the commit that holds its own
 * message, and "acknowledged" means committed.
 *
 * Ids are per conversation and consecutive, handed out inside the
 * transaction from the conversation's `heads` row, which the transaction
 * locks first (`INSERT … ON CONFLICT DO UPDATE … RETURNING`): a second
 * instance appending to the same conversation waits for the commit, then
 * continues from the id it left. Rows are locked in sorted order, so two
 * batches never deadlock; a deadlock or a concurrent insert of the same
 * `(from, cid)` rolls back and runs the batch again, which then finds the
 * other copy and answers it as a duplicate.
 *
 * @module
 */

import { setImmediate } from "node:timers";
import { LOBBY } from "../protocol.ts";
import type { ChatMessage, ConversationSummary } from "../protocol.ts";
import {
  type Appended,
  type AppendListener,
  type ChatStore,
  type ConversationKey,
  conversationOf,
  type Conversations,
  type DmPage,
  type HistoryOptions,
  type HistoryPage,
  type JoinOutcome,
  type NewMessage,
  type RoomInfo,
  roomKey,
  StoreError,
} from "../store.ts";
import type { Queryable, SqlDatabase } from "./dialect.ts";
import {
  type AnnounceWith,
  appendedOf,
  type AppendInput,
  appendRounds,
  chunks,
  MESSAGE_COLUMNS,
  type MessageRow,
  ROWS_PER_INSERT,
  toMessage,
} from "./append.ts";
import { migrate } from "./schema.ts";
import { LogOnce } from "../log.ts";

const log = new LogOnce();

/** Options of {@linkcode SqlStore.open}. */
export interface SqlStoreOptions {
  /** The most messages one transaction takes (default 500). */
  maxBatch?: number;
  /**
   * Whether the store fills SQLite's search index by itself, in the
   * background (default true; `--search-index`). Off, `search` scans what the
   * index lacks, and `indexSearch` still fills it when called. PostgreSQL's
   * index is kept by PostgreSQL either way.
   */
  searchIndex?: boolean;
}

const DEFAULT_MAX_BATCH = 500;
/**
 * Messages the search index takes per transaction (SQLite; see
 * `indexSearch`). At 500 a batch a row cost 10–12 µs against 30 at the few
 * dozen rows of an append, but a batch of 500 held SQLite for ~6 ms, and the
 * connection is on the event loop now: every user would wait that long. A
 * tenth of it, ~1 ms, at a little more a row.
 */
const SEARCH_INDEX_BATCH = 100;
/**
 * DM summaries read per statement at most (see `dms`): a page
 * of 500 takes ~0.5 ms of SQLite on the loop (2 × Intel Xeon, pinned), where
 * 5,000 in one statement took 4.5–4.9 ms there and 20 on the AMD machine.
 */
export const DM_SUMMARY_PAGE = 500;
/** The row limits a read of DM summaries is written with (a welcome's 200, plus one, is one). */
const DM_READ_SIZES = [11, 51, 201, DM_SUMMARY_PAGE];
/**
 * A row limit as SQL text. Limits are written into the statement, not bound:
 * on SQLite here a bound `LIMIT $n` cost 10–15 µs more per execution (a
 * history page of a few rows 21–22 µs against 11; a welcome's DM summaries
 * 29 against 13, which made a returning user's arrival ~20 µs dearer). Each
 * distinct limit is one more prepared statement; the callers' limits are
 * bounded (`HISTORY_MAX`, `--replay-limit`, the constants here).
 */
function limitOf(n: number): string {
  return String(Math.max(0, Math.trunc(n)));
}
/** How long fewer than a batch of new messages wait for the search index, at most (ms). */
const SEARCH_INDEX_DELAY_MS = 1000;
const MAX_ATTEMPTS = 20;
// How long a batch keeps retrying while the database is unreachable or busy, before its
// senders get `store_failed`: long enough to ride out a PostgreSQL restart (about 1 s; allow
// for a loaded machine), short enough to be an answer rather than a hang.
const RETRY_BUDGET_MS = 5000;

interface Pending {
  message: NewMessage;
  conversation: ConversationKey;
  listener: AppendListener;
}

/** What one attempt of a batch got as far as sending. */
interface Attempt {
  /** Its answers, once everything but COMMIT was written. */
  results?: Appended[];
  /** One row it wrote, to look for if the connection went during COMMIT. */
  probe?: MessageRow;
}

export { MESSAGE_COLUMNS, type MessageRow, toMessage } from "./append.ts";

/**
 * Sets a user's read mark of a conversation to at least the conversation's
 * newest id: a new member (or a newly registered user, for the lobby) starts
 * with nothing unread.
 */
export async function readFromLatest(
  q: Queryable,
  db: SqlDatabase,
  user: string,
  conversation: ConversationKey,
): Promise<void> {
  await q.query(
    `INSERT INTO reads (name, conv, id)
     VALUES ($1, $2, COALESCE((SELECT last_id FROM heads WHERE conv = $2), 0))
     ON CONFLICT (name, conv) DO UPDATE SET id = ${db.dialect.greatest("reads.id", "excluded.id")}`,
    [user, conversation],
  );
}

/** The lobby's conversation key. */
export const LOBBY_KEY: ConversationKey = roomKey(LOBBY);

/** A {@linkcode ChatStore} on a {@linkcode SqlDatabase}. */
export class SqlStore implements ChatStore, AsyncDisposable {
  #db: SqlDatabase;
  #maxBatch: number;
  #queue: Pending[] = [];
  #flushing: Promise<void> | undefined;
  #dmPairs = new Set<ConversationKey>();
  #closed = false;
  /** Messages appended since the search index last ran, its run under way, and its timer. */
  #searchIndex: boolean;
  #unindexed = 0;
  #indexing: Promise<void> | undefined;
  #indexTimer: ReturnType<typeof setTimeout> | undefined;
  /** What each append commits with, besides its rows (see {@linkcode announceWith}). */
  #announce: AnnounceWith | undefined;

  private constructor(db: SqlDatabase, options: SqlStoreOptions) {
    this.#db = db;
    this.#maxBatch = options.maxBatch ?? DEFAULT_MAX_BATCH;
    this.#searchIndex = (options.searchIndex ?? true) && db.dialect.indexesSearchLater;
  }

  /** Opens a store on a database, creating or migrating its schema first. */
  static async open(db: SqlDatabase, options: SqlStoreOptions = {}): Promise<SqlStore> {
    await migrate(db);
    for (const statement of db.dialect.afterMigrate) await db.query(statement);
    const store = new SqlStore(db, options);
    // What an earlier run appended and did not index (it stopped, or crashed) goes in now.
    if (store.#searchIndex) store.#searchIndexDue(SEARCH_INDEX_BATCH);
    return store;
  }

  /**
   * Makes every append run `announce`'s statement among its writes, so that
   * what an append stored and its announcement commit together: announced
   * after the commit instead, an instance that died in between (or whose
   * database went away) left the others' members without the message for as
   * long as nothing newer came in its conversation. Not for SQLite's engine,
   * which runs the append by itself.
   */
  announceWith(announce: AnnounceWith): void {
    if (this.#db.append) throw new Error(`${this.#db.description} runs its appends by itself`);
    this.#announce = announce;
  }

  /** The database, for services that share it (accounts, the fan-out bus). */
  get db(): SqlDatabase {
    return this.#db;
  }

  append(message: NewMessage): Promise<Appended> {
    return new Promise((stored, failed) => this.appendTo(message, { stored, failed }));
  }

  appendTo(message: NewMessage, listener: AppendListener): void {
    if (this.#closed) {
      queueMicrotask(() => listener.failed(new StoreError("the store is closed")));
      return;
    }
    this.#queue.push({ message, conversation: conversationOf(message), listener });
    this.#flushing ??= this.#drain();
  }

  async #drain(): Promise<void> {
    try {
      // Let the messages that arrive in this turn of the event loop join the first batch (after
      // this turn's microtasks; a setTimeout(0) would wait about 2 ms). Later batches form by
      // themselves: what arrives while one commits goes in the next.
      await new Promise<void>((resolve) => setImmediate(resolve));
      while (this.#queue.length > 0) {
        const batch = this.#queue.splice(0, this.#maxBatch);
        let results: Appended[] | undefined;
        let reason: StoreError | undefined;
        try {
          results = await this.#commitRetrying(batch);
        } catch (error) {
          reason = error instanceof StoreError
            ? error
            : new StoreError(`could not store the message: ${describe(error)}`, { cause: error });
        }
        for (let i = 0; i < batch.length; i++) {
          // A listener that throws must not keep the others from hearing.
          try {
            if (results) batch[i].listener.stored(results[i]);
            else batch[i].listener.failed(reason!);
          } catch (error) {
            log.error("a listener of an append threw", error);
          }
        }
        if (results && this.#searchIndex) this.#searchIndexDue(batch.length);
      }
    } finally {
      this.#flushing = undefined;
    }
  }

  async #commitRetrying(batch: Pending[]): Promise<Appended[]> {
    const started = Date.now();
    const { dialect } = this.#db;
    const pause = (attempt: number) =>
      new Promise((r) => setTimeout(r, Math.min(5 * 2 ** attempt, 250)));
    for (let attempt = 1;; attempt++) {
      const sent: Attempt = {};
      try {
        return await this.#commit(batch, sent);
      } catch (error) {
        const lost = dialect.isConnectionLost(error);
        const again = lost || dialect.isUniqueViolation(error) || dialect.isRetryable(error);
        if (!again || attempt >= MAX_ATTEMPTS || Date.now() - started > RETRY_BUDGET_MS) {
          throw error;
        }
        // The connection went while COMMIT may have been on its way: the transaction may have
        // committed. Find out before running it again, or its messages would be stored twice.
        if (lost && sent.results && sent.probe) {
          for (let probe = attempt;; probe++) {
            await pause(probe);
            try {
              if (await this.#committed(sent.probe)) return sent.results;
              break;
            } catch (error) {
              if (Date.now() - started > RETRY_BUDGET_MS) throw error;
            }
          }
          continue;
        }
        await pause(attempt);
      }
    }
  }

  /** Whether the row a transaction wrote is there (so the transaction committed). */
  async #committed(row: MessageRow): Promise<boolean> {
    const [found] = await this.#db.query<MessageRow>(
      `SELECT ${MESSAGE_COLUMNS} FROM messages WHERE conv = $1 AND id = $2`,
      [row.conv, row.id],
    );
    return found !== undefined && found.sender === row.sender && Number(found.ts) === row.ts &&
      found.body === row.body;
  }

  async #commit(batch: Pending[], sent: Attempt): Promise<Appended[]> {
    const input: AppendInput = {
      messages: batch.map(({ message, conversation }) => ({
        message,
        conversation,
        pairKnown: this.#dmPairs.has(conversation),
      })),
      now: Date.now(),
    };
    const db = this.#db;
    // SQLite's engine runs the whole transaction as one op of a batch.
    const outcome = db.append ? await db.append(input) : await db.transaction(async (tx) => {
      const rounds = appendRounds(input, db.dialect, { announce: this.#announce });
      let step = rounds.next();
      while (!step.done) {
        // A round's statements asked together: PostgreSQL pipelines them, in this order.
        const rows = await Promise.all(step.value.map((s) => tx.query(s.text, s.params)));
        step = rounds.next(rows);
      }
      const outcome = step.value;
      // From here COMMIT is on its way: what to answer if it turns out to have committed.
      sent.results = appendedOf(input, outcome);
      sent.probe = outcome.probe;
      return outcome;
    });
    for (const pair of outcome.newPairs) this.#dmPairs.add(pair);
    return sent.results ?? appendedOf(input, outcome);
  }

  async history(conversation: ConversationKey, options: HistoryOptions): Promise<HistoryPage> {
    const rows = await this.#db.query<MessageRow>(
      `SELECT ${MESSAGE_COLUMNS} FROM messages WHERE conv = $1 AND id > $2 AND id < $3
       ORDER BY id DESC LIMIT ${limitOf(options.limit + 1)}`,
      [conversation, options.after ?? 0, options.before ?? Number.MAX_SAFE_INTEGER],
    );
    const more = rows.length > options.limit;
    if (more) rows.pop();
    return { messages: rows.reverse().map(toMessage), more };
  }

  async rooms(user: string): Promise<string[]> {
    const rows = await this.#db.query<{ room: string }>(
      `SELECT room FROM members WHERE name = $1`,
      [user],
    );
    return rows.map((r) => r.room);
  }

  async room(room: string): Promise<RoomInfo | undefined> {
    const [row] = await this.#db.query<{ private: number; owner: string }>(
      `SELECT private, owner FROM rooms WHERE name = $1`,
      [room],
    );
    return row ? { private: Number(row.private) !== 0, owner: row.owner } : undefined;
  }

  async createRoom(room: string, info: RoomInfo): Promise<boolean> {
    const rows = await this.#db.query(
      `INSERT INTO rooms (name, private, owner, since) VALUES ($1, $2, $3, $4)
       ON CONFLICT (name) DO NOTHING RETURNING name`,
      [room, info.private ? 1 : 0, info.owner, Date.now()],
    );
    return rows.length > 0;
  }

  async join(user: string, room: string): Promise<void> {
    await this.#db.transaction(async (tx) => {
      const now = Date.now();
      await tx.query(
        `INSERT INTO rooms (name, private, owner, since) VALUES ($1, 0, $2, $3)
         ON CONFLICT (name) DO NOTHING`,
        [room, user, now],
      );
      const added = await tx.query(
        `INSERT INTO members (room, name, since) VALUES ($1, $2, $3)
         ON CONFLICT (room, name) DO NOTHING RETURNING name`,
        [room, user, now],
      );
      if (added.length === 0) return;
      await tx.query(`DELETE FROM invites WHERE name = $1 AND room = $2`, [user, room]);
      await readFromLatest(tx, this.#db, user, roomKey(room));
    });
  }

  async joinIfAllowed(user: string, room: string): Promise<JoinOutcome> {
    return await this.#db.transaction(async (tx): Promise<JoinOutcome> => {
      const now = Date.now();
      // Creating it (public, ours) if new; if another transaction is creating it right now, this
      // waits for that one's commit and then sees its row, private or not.
      const created = await tx.query(
        `INSERT INTO rooms (name, private, owner, since) VALUES ($1, 0, $2, $3)
         ON CONFLICT (name) DO NOTHING RETURNING name`,
        [room, user, now],
      );
      // Locked until commit: a concurrent decision on this room waits for this one.
      const [info] = await tx.query<{ private: number }>(
        `SELECT private FROM rooms WHERE name = $1${this.#db.dialect.forUpdate}`,
        [room],
      );
      const isPrivate = created.length === 0 && Number(info?.private ?? 0) !== 0;
      const [member] = await tx.query(
        `SELECT name FROM members WHERE room = $1 AND name = $2`,
        [room, user],
      );
      if (member) return { result: "member", private: isPrivate };
      const invited = await tx.query(
        `DELETE FROM invites WHERE name = $1 AND room = $2 RETURNING name`,
        [user, room],
      );
      if (isPrivate && invited.length === 0) return { result: "forbidden", private: true };
      const added = await tx.query(
        `INSERT INTO members (room, name, since) VALUES ($1, $2, $3)
         ON CONFLICT (room, name) DO NOTHING RETURNING name`,
        [room, user, now],
      );
      if (added.length === 0) return { result: "member", private: isPrivate };
      await readFromLatest(tx, this.#db, user, roomKey(room));
      return { result: "joined", private: isPrivate };
    });
  }

  async leave(user: string, room: string): Promise<void> {
    await this.#db.query(`DELETE FROM members WHERE room = $1 AND name = $2`, [room, user]);
  }

  async invite(user: string, room: string, by: string): Promise<void> {
    await this.#db.query(
      `INSERT INTO invites (name, room, by_name, since) VALUES ($1, $2, $3, $4)
       ON CONFLICT (name, room) DO UPDATE SET by_name = excluded.by_name, since = excluded.since`,
      [user, room, by, Date.now()],
    );
  }

  async invites(user: string): Promise<Array<{ room: string; by: string }>> {
    const rows = await this.#db.query<{ room: string; by_name: string }>(
      `SELECT room, by_name FROM invites WHERE name = $1 ORDER BY since, room`,
      [user],
    );
    return rows.map((r) => ({ room: r.room, by: r.by_name }));
  }

  async publicRooms(limit: number): Promise<Array<{ room: string; members: number }>> {
    const rows = await this.#db.query<{ room: string; members: number }>(
      `SELECT r.name AS room, COUNT(m.name) AS members
       FROM rooms r LEFT JOIN members m ON m.room = r.name
       WHERE r.private = 0 GROUP BY r.name ORDER BY COUNT(m.name) DESC, r.name LIMIT ${
        limitOf(limit)
      }`,
      [],
    );
    return rows
      .map((r) => ({ room: r.room, members: Number(r.members) }))
      // The same order whatever the database's collation.
      .sort((a, b) => b.members - a.members || (a.room < b.room ? -1 : a.room > b.room ? 1 : 0));
  }

  async conversations(user: string, rooms: string[], dmLimit: number): Promise<Conversations> {
    // The rooms and the first page of DMs asked at once: one batch on SQLite.
    const [summaries, dms] = await Promise.all([
      Promise.all(chunks(rooms, ROWS_PER_INSERT).map((part) => this.#roomSummaries(user, part))),
      this.dms(user, { limit: dmLimit }),
    ]);
    return { conversations: [...summaries.flat(), ...dms.conversations], dmsMore: dms.more };
  }

  /**
   * DMs of `user` with their read state, in partner order after `after`, read
   * in statements of at most {@linkcode DM_SUMMARY_PAGE} along the
   * `(name, peer)` key (one more row than asked tells whether more follow): on
   * SQLite each statement is on the event loop, and 5,000 partners read at
   * once held it for 20 ms, every other user waiting.
   */
  async dms(user: string, query: { after?: string; limit: number }): Promise<DmPage> {
    const out: ConversationSummary[] = [];
    const want = Math.max(0, Math.trunc(query.limit));
    for (let after = query.after ?? "";;) {
      // Rows read: the next of a few sizes, each one prepared statement, whatever limit is asked.
      const need = want + 1 - out.length;
      const take = DM_READ_SIZES.find((n) => n >= need) ?? DM_SUMMARY_PAGE;
      const rows = await this.#db.query<
        { peer: string; last_id: number | null; id: number | null }
      >(
        `SELECT d.peer, h.last_id, r.id FROM dms d
         LEFT JOIN heads h ON h.conv = d.conv
         LEFT JOIN reads r ON r.name = d.name AND r.conv = d.conv
         WHERE d.name = $1 AND d.peer > $2 ORDER BY d.peer LIMIT ${limitOf(take)}`,
        [user, after],
      );
      for (const row of rows) {
        if (out.length === want) return { conversations: out, more: true };
        const last = Number(row.last_id ?? 0);
        const read = Math.min(Number(row.id ?? 0), last);
        out.push({ with: row.peer, last, read, unread: last - read });
      }
      if (rows.length < take) return { conversations: out, more: false };
      after = rows[rows.length - 1].peer;
    }
  }

  async #roomSummaries(user: string, rooms: string[]): Promise<ConversationSummary[]> {
    const keys = rooms.map(roomKey);
    const list = keys.map((_, i) => `$${i + 2}`).join(", ");
    const readsQuery = () =>
      this.#db.query<{ conv: string; id: number }>(
        `SELECT conv, id FROM reads WHERE name = $1 AND conv IN (${list})`,
        [user, ...keys],
      );
    const [heads, marks] = await Promise.all([
      this.#db.query<{ conv: string; last_id: number }>(
        `SELECT conv, last_id FROM heads WHERE conv IN (${
          keys.map((_, i) => `$${i + 1}`).join(", ")
        })`,
        keys,
      ),
      readsQuery(),
    ]);
    const lasts = new Map(heads.map((r) => [r.conv, Number(r.last_id)]));
    let reads = new Map(marks.map((r) => [r.conv, Number(r.id)]));
    // A room the user has no read mark in (the lobby, on their first welcome) starts at its
    // newest message; the mark is kept (even at 0) so what comes later counts as unread.
    const unmarked = keys.filter((k) => !reads.has(k));
    if (unmarked.length > 0) {
      await this.#db.transaction(async (tx) => {
        for (const key of unmarked) await readFromLatest(tx, this.#db, user, key);
      });
      reads = new Map((await readsQuery()).map((r) => [r.conv, Number(r.id)]));
    }
    return rooms.map((room, i) => {
      const last = lasts.get(keys[i]) ?? 0;
      const read = Math.min(reads.get(keys[i]) ?? 0, last);
      return { room, last, read, unread: last - read };
    });
  }

  async markRead(user: string, conversation: ConversationKey, id: number): Promise<number> {
    const { dialect } = this.#db;
    const [row] = await this.#db.query<{ id: number }>(
      `INSERT INTO reads (name, conv, id)
       VALUES ($1, $2, ${
        dialect.least("$3", "COALESCE((SELECT last_id FROM heads WHERE conv = $2), 0)")
      })
       ON CONFLICT (name, conv) DO UPDATE SET id = ${dialect.greatest("reads.id", "excluded.id")}
       RETURNING id`,
      [user, conversation, Math.max(0, Math.trunc(id))],
    );
    return Number(row.id);
  }

  /**
   * Messages whose text contains `text` (case-insensitive for Latin letters;
   * any script, Chinese included), newest first, in the given conversations
   * only (the caller decides what the user may see). Not yet on the wire.
   */
  async search(
    conversations: ConversationKey[],
    text: string,
    limit: number,
  ): Promise<ChatMessage[]> {
    if (conversations.length === 0 || text === "") return [];
    const escaped = /[\\%_]/.test(text);
    const { from, where, tail } = this.#db.dialect.search("$1", escaped);
    const pattern = `%${escaped ? text.replace(/[\\%_]/g, (c) => `\\${c}`) : text}%`;
    const list = conversations.map((_, i) => `$${i + 2}`).join(", ");
    const columns = MESSAGE_COLUMNS.split(", ").map((c) => `m.${c}`).join(", ");
    const part = (p: { from: string; where: string }) =>
      `SELECT ${columns} FROM ${p.from} WHERE ${p.where} AND m.conv IN (${list})`;
    // Messages not in the index yet are scanned by rowid from its mark: at most a batch or a
    // second of them, each found once (the mark moves in the transaction that indexes).
    const rows = await this.#db.query<MessageRow>(
      `SELECT * FROM (${part({ from, where })}${tail ? ` UNION ALL ${part(tail)}` : ""}) AS found
       ORDER BY ts DESC, id DESC LIMIT ${limitOf(limit)}`,
      [pattern, ...conversations],
    );
    return rows.map(toMessage);
  }

  /**
   * Adds up to a batch of the messages past the search index's mark to the
   * index, and moves the mark, in one transaction; resolves with how many.
   * Called by the store itself (once a batch of messages is waiting, or a
   * second after the first of fewer); on PostgreSQL there is nothing to do.
   */
  async indexSearch(): Promise<number> {
    if (!this.#db.dialect.indexesSearchLater) return 0;
    return await this.#db.transaction(async (tx) => {
      const [mark] = await tx.query<{ value: string }>(
        `SELECT value FROM meta WHERE key = 'search_indexed'`,
      );
      const from = Number(mark?.value ?? 0);
      const [range] = await tx.query<{ last: number | null; n: number }>(
        `SELECT MAX(rowid) AS last, COUNT(*) AS n FROM
         (SELECT rowid FROM messages WHERE rowid > $1 ORDER BY rowid LIMIT ${SEARCH_INDEX_BATCH})`,
        [from],
      );
      const n = Number(range?.n ?? 0);
      if (n === 0 || range?.last == null) return 0;
      await Promise.all([
        tx.query(
          `INSERT INTO messages_fts (rowid, body)
           SELECT rowid, body FROM messages WHERE rowid > $1 AND rowid <= $2`,
          [from, range.last],
        ),
        tx.query(
          `INSERT INTO meta (key, value) VALUES ('search_indexed', $1)
           ON CONFLICT (key) DO UPDATE SET value = excluded.value`,
          [String(range.last)],
        ),
      ]);
      return n;
    });
  }

  /** `added` more messages wait for the search index: index now, or set the timer. */
  #searchIndexDue(added: number): void {
    this.#unindexed += added;
    if (this.#closed || this.#indexing) return;
    if (this.#unindexed >= SEARCH_INDEX_BATCH) {
      clearTimeout(this.#indexTimer);
      this.#indexTimer = undefined;
      this.#indexing = this.#runSearchIndex();
    } else if (this.#indexTimer === undefined) {
      this.#indexTimer = setTimeout(() => {
        this.#indexTimer = undefined;
        this.#indexing ??= this.#runSearchIndex();
      }, SEARCH_INDEX_DELAY_MS);
    }
  }

  /** Index runs until what waits is indexed (a backlog goes a batch a transaction). */
  async #runSearchIndex(): Promise<void> {
    try {
      for (;;) {
        this.#unindexed = 0;
        const n = await this.indexSearch();
        if (n < SEARCH_INDEX_BATCH || this.#closed) break;
      }
    } catch (error) {
      // Search finds unindexed messages by scanning; the next batch tries again.
      log.error("the search index could not be filled (search scans meanwhile)", error);
    } finally {
      this.#indexing = undefined;
    }
    if (this.#unindexed > 0 && !this.#closed) this.#searchIndexDue(0);
  }

  async healthy(): Promise<boolean> {
    try {
      await this.#db.query(`SELECT 1`);
      return true;
    } catch {
      return false;
    }
  }

  /** `await using store = …` closes it. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#flushing;
    clearTimeout(this.#indexTimer);
    this.#indexTimer = undefined;
    await this.#indexing;
    await this.#db.close();
  }
}

/** An error's message, for a `store_failed` reason. */
function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
