/**
 * The append transaction, written once as rounds of statements, for two
 * drivers:
 *
 * - `SqlStore` (`store.ts`) runs each round inside `SqlDatabase.transaction`,
 *   the round's statements asked together (PostgreSQL pipelines them on the
 *   transaction's connection);
 * - SQLite's engine (`sqlite_engine.ts`) runs all of it as one op of a batch,
 *   from `BEGIN IMMEDIATE` to `COMMIT`.
 *
 * Through `transaction`, a SQLite commit took three round trips to the
 * worker (the BEGIN and the reads, the writes, the RELEASE and COMMIT), 0.29
 * ms each on average at 5,000 DMs/s on one core, and the main thread did
 * other work between them: a commit of 7 DMs took 1.2 ms (p99 5.3) of which
 * the worker ran 0.5.
 *
 * A round is what the statements before it allow: first the conversations'
 * heads (locked) and the messages already stored under the batch's client
 * ids, then every write.
 *
 * @module
 */

import type { ChatMessage } from "../protocol.ts";
import type { Appended, ConversationKey, NewMessage } from "../store.ts";
import type { Dialect, SqlValue } from "./dialect.ts";

/** A row of the messages table (for the fan-out's reads of several conversations). */
export interface MessageRow {
  conv: string;
  id: number;
  sender: string;
  room: string | null;
  recipient: string | null;
  body: string;
  ts: number;
  cid: string | null;
}

/** The messages table's columns, as {@linkcode MessageRow} names them. */
export const MESSAGE_COLUMNS = "conv, id, sender, room, recipient, body, ts, cid";

/** A stored row as the message it is. */
export function toMessage(row: MessageRow): ChatMessage {
  const message: ChatMessage = row.room !== null
    ? { id: Number(row.id), room: row.room, from: row.sender, text: row.body, ts: Number(row.ts) }
    : {
      id: Number(row.id),
      to: row.recipient!,
      from: row.sender,
      text: row.body,
      ts: Number(row.ts),
    };
  if (row.cid !== null) message.cid = row.cid;
  return message;
}

/** Placeholder lists already made: a batch's statements differ only by their row count. */
const placeholderLists = new Map<string, string>();

/**
 * `($1, $2), ($3, $4), …` for `rows` rows of `width` placeholders, from
 * `$start`, with `extra` (constant SQL such as `, 0`) at the end of each row.
 */
export function placeholders(rows: number, width: number, start = 1, extra = ""): string {
  const key = `${rows} ${width} ${start} ${extra}`;
  const cached = placeholderLists.get(key);
  if (cached !== undefined) return cached;
  const out: string[] = [];
  for (let r = 0; r < rows; r++) {
    const cells: string[] = [];
    for (let c = 0; c < width; c++) cells.push(`$${start + r * width + c}`);
    out.push(`(${cells.join(", ")}${extra})`);
  }
  const list = out.join(", ");
  if (placeholderLists.size >= 4096) placeholderLists.clear();
  placeholderLists.set(key, list);
  return list;
}

/** `items` in slices of at most `size`. */
export function chunks<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

// Rows per multi-row INSERT: 8 placeholders each stays below every engine's limit.
export const ROWS_PER_INSERT = 500;

/** One statement of a round. */
export interface Statement {
  text: string;
  params: SqlValue[];
}

/** What one append transaction takes (plain data, as PostgreSQL and SQLite both take it). */
export interface AppendInput {
  messages: Array<{
    message: NewMessage;
    conversation: ConversationKey;
    /** Whether the DM's pair is known to be in `dms` already (then not written again). */
    pairKnown: boolean;
  }>;
  /** The messages' time, ms since the epoch. */
  now: number;
}

/**
 * What it did, once its statements ran (before COMMIT), in few bytes:
 * {@linkcode appendedOf} makes the answers.
 */
export interface AppendOutcome {
  /**
   * One per message, in order: the id it was stored under (its time is the
   * input's `now`), or the message stored before under its client id.
   */
  ids: Array<number | ChatMessage>;
  /** DM pairs it wrote to `dms`. */
  newPairs: ConversationKey[];
  /** One row it wrote, to look for if the connection went during COMMIT. */
  probe?: MessageRow;
}

/** What an append moved: per conversation, its first and last new id. */
export type Moved = Array<[ConversationKey, number, number]>;

/**
 * A statement the append runs with its writes, so that it commits with them
 * (on PostgreSQL, the fan-out's announcement: `PgBus.announceAtCommit`).
 */
export type AnnounceWith = (moved: Moved) => Statement;

/** Options of {@linkcode appendRounds}. */
export interface AppendRoundsOptions {
  /** A statement to run with the writes, so that it commits with them. */
  announce?: AnnounceWith;
  /**
   * Whether the messages already stored under the batch's client ids are
   * left unread (default false). The unique index on `(cid, sender)` then
   * refuses the insert of any of them, and the
   * caller rolls back and runs the append again with them read: SQLite's
   * engine does, where a client id seen before comes only with a client's
   * resend after a reconnect, and the read cost a saturated DM ~0.5 µs of
   * its ~14 (`deno task bench --only dm`, three runs each: 13.8 against
   * 14.3–14.8). A second copy within the batch is refused the same way. A
   * client that re-sends on purpose makes the batches its copies land in run
   * twice, no more often than `--send-rate` lets it send. PostgreSQL would
   * abort the transaction at the refusal. With every message new, each
   * conversation's head is also taken and moved by its count in one
   * statement: three statements an append instead of five.
   */
  optimistic?: boolean;
}

/**
 * The append transaction: yields each round's statements, is resumed with
 * their rows (one array per statement, in order), and returns its outcome.
 * Every statement runs inside one transaction, and the outcome holds only once
 * it commits.
 */
export function* appendRounds(
  input: AppendInput,
  dialect: Dialect,
  { announce, optimistic = false }: AppendRoundsOptions = {},
): Generator<Statement[], AppendOutcome, unknown[][]> {
  const batch = input.messages;
  const postgres = dialect.name === "postgres";
  // 1. Lock the conversations' heads, in sorted order, and read where each stands; and
  // 2. the messages already stored under their (from, cid): committed by now, as their
  // heads are locked first. Asked together.
  // Each head is taken with one statement that also moves it by `moveBy`: by 0 (the writes
  // move it), or, optimistic, where every message is new, by its conversation's count at once.
  const counts = new Map<ConversationKey, number>();
  for (const p of batch) counts.set(p.conversation, (counts.get(p.conversation) ?? 0) + 1);
  const conversations = [...counts.keys()].sort();
  const withCid = optimistic ? [] : batch.filter((p) => p.message.cid !== undefined);
  const moveBy = (conv: ConversationKey) => optimistic ? counts.get(conv)! : 0;
  const headReads = chunks(conversations, ROWS_PER_INSERT).map((part): Statement => ({
    text: `INSERT INTO heads (conv, last_id) VALUES ${placeholders(part.length, 2)}
             ON CONFLICT (conv) DO UPDATE SET last_id = heads.last_id + excluded.last_id
             RETURNING conv, last_id`,
    params: part.flatMap((conv) => [conv, moveBy(conv)]),
  }));
  const cidReads: Statement[] = withCid.length === 0 ? [] : postgres
    // On PostgreSQL, as two arrays and with `cid = ANY`: one text whatever the batch, and
    // an index lookup however it is planned. The pairs as VALUES were planned as a
    // sequential scan and a hash join up to ~10,000 messages, and kept so, as a prepared
    // statement's generic plan, when planned on a new, empty table: 1.3 ms a batch at
    // 11,000 messages, growing with the table, against 0.03 ms.
    ? [{
      text: `SELECT ${MESSAGE_COLUMNS} FROM messages WHERE cid = ANY($1::text[])
               AND (cid, sender) IN (SELECT * FROM unnest($1::text[], $2::text[]))`,
      params: [
        withCid.map((p) => p.message.cid!),
        withCid.map((p) => p.message.from),
      ] as unknown as SqlValue[],
    }]
    : chunks(withCid, ROWS_PER_INSERT).map((part) => ({
      text: `SELECT ${MESSAGE_COLUMNS} FROM messages
             WHERE cid IS NOT NULL AND (cid, sender) IN (VALUES ${placeholders(part.length, 2)})`,
      params: part.flatMap((p) => [p.message.cid!, p.message.from]),
    }));
  const read = yield [...headReads, ...cidReads];
  const last = new Map<ConversationKey, number>();
  for (const rows of read.slice(0, headReads.length)) {
    for (const row of rows as Array<{ conv: string; last_id: number }>) {
      // Where the head stood before this batch.
      last.set(row.conv, Number(row.last_id) - moveBy(row.conv));
    }
  }
  // Rows, made messages only for the duplicates that are answered with them.
  const earlier = new Map<string, MessageRow>();
  for (const rows of read.slice(headReads.length)) {
    for (const row of rows as MessageRow[]) earlier.set(`${row.sender}\n${row.cid}`, row);
  }
  // 3. The new messages, numbered from each head.
  const next = new Map<ConversationKey, number>();
  const fresh: MessageRow[] = [];
  // The senders' read marks, by sender and conversation (no key string made per message).
  const readMarks = new Map<string, Map<ConversationKey, [string, ConversationKey, number]>>();
  const newPairs: ConversationKey[] = [];
  const ids = batch.map((p): number | ChatMessage => {
    const { room, to, from, text, cid } = p.message;
    // Optimistic, a second copy in the batch is refused by the index as a stored one would be.
    const cidKey = cid === undefined || optimistic ? undefined : `${from}\n${cid}`;
    const first = cidKey === undefined ? undefined : earlier.get(cidKey);
    if (first) return toMessage(first);
    const id = (next.get(p.conversation) ?? last.get(p.conversation) ?? 0) + 1;
    next.set(p.conversation, id);
    const row: MessageRow = {
      conv: p.conversation,
      id,
      sender: from,
      room: room ?? null,
      recipient: room === undefined ? to! : null,
      body: text,
      ts: input.now,
      cid: cid ?? null,
    };
    fresh.push(row);
    // A second copy in the same batch is the first one's duplicate.
    if (cidKey !== undefined) earlier.set(cidKey, row);
    // Posting in a conversation means having read it: the sender's read mark moves to its message.
    let marks = readMarks.get(from);
    if (!marks) readMarks.set(from, marks = new Map());
    const mark = marks.get(p.conversation);
    if (mark) mark[2] = id;
    else marks.set(p.conversation, [from, p.conversation, id]);
    if (to !== undefined && room === undefined && !p.pairKnown) newPairs.push(p.conversation);
    return id;
  });
  // 4. The writes, all at once: the messages, the heads, the senders' read marks and the
  // index of DM partners. Rows in sorted order, so that two instances' batches lock them in
  // one order.
  const heads = [...next].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0);
  const marks = [...readMarks.values()].flatMap((m) => [...m.values()]).sort(([u1, c1], [u2, c2]) =>
    u1 < u2 ? -1 : u1 > u2 ? 1 : c1 < c2 ? -1 : c1 > c2 ? 1 : 0
  );
  const pairs = newPairs.flatMap((conversation) => {
    const [, a, b] = conversation.split("/");
    return [[a, b, conversation], [b, a, conversation]];
  });
  const greatest = dialect.greatest("reads.id", "excluded.id");
  // PostgreSQL takes a batch's messages as one array per column: one text whatever the
  // batch (prepared once per connection), and 8 parameters to encode instead of 8 a row.
  const column = (pick: (r: MessageRow) => SqlValue) => fresh.map(pick);
  const writes: Statement[] = [
    ...(postgres && fresh.length > 0
      ? [{
        text: `INSERT INTO messages (${MESSAGE_COLUMNS}) SELECT * FROM unnest($1::text[],
             $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[])`,
        params: [
          column((r) => r.conv),
          column((r) => r.id),
          column((r) => r.sender),
          column((r) => r.room),
          column((r) => r.recipient),
          column((r) => r.body),
          column((r) => r.ts),
          column((r) => r.cid),
        ] as unknown as SqlValue[],
      }]
      : []),
    ...chunks(postgres ? [] : fresh, ROWS_PER_INSERT).map((part) => ({
      text: `INSERT INTO messages (${MESSAGE_COLUMNS}) VALUES ${placeholders(part.length, 8)}`,
      params: rowValues(part),
    })),
    ...chunks(optimistic ? [] : heads, ROWS_PER_INSERT).map((part) => ({
      text: `INSERT INTO heads (conv, last_id) VALUES ${placeholders(part.length, 2)}
             ON CONFLICT (conv) DO UPDATE SET last_id = excluded.last_id`,
      params: part.flat(),
    })),
    ...chunks(marks, ROWS_PER_INSERT).map((part) => ({
      text: `INSERT INTO reads (name, conv, id) VALUES ${placeholders(part.length, 3)}
             ON CONFLICT (name, conv) DO UPDATE SET id = ${greatest}`,
      params: part.flat(),
    })),
    ...chunks(pairs, ROWS_PER_INSERT).map((part) => ({
      text: `INSERT INTO dms (name, peer, conv) VALUES ${placeholders(part.length, 3)}
             ON CONFLICT (name, peer) DO NOTHING`,
      params: part.flat(),
    })),
  ];
  if (announce && heads.length > 0) {
    writes.push(announce(heads.map(([conv, id]) => [conv, (last.get(conv) ?? 0) + 1, id])));
  }
  if (writes.length > 0) yield writes;
  return { ids, newPairs, probe: fresh[0] };
}

/** The rows' values in `MESSAGE_COLUMNS` order, in one array (no array made per row). */
function rowValues(rows: MessageRow[]): SqlValue[] {
  const values: SqlValue[] = [];
  for (const r of rows) {
    values.push(r.conv, r.id, r.sender, r.room, r.recipient, r.body, r.ts, r.cid);
  }
  return values;
}

/** The answers to an append's messages, from its input and outcome. */
export function appendedOf(input: AppendInput, outcome: AppendOutcome): Appended[] {
  return outcome.ids.map((id, i) => {
    if (typeof id !== "number") return { message: id, duplicate: true };
    const { message, conversation } = input.messages[i];
    const stored = toMessage({
      conv: conversation,
      id,
      sender: message.from,
      room: message.room ?? null,
      recipient: message.room === undefined ? message.to! : null,
      body: message.text,
      ts: input.now,
      cid: message.cid ?? null,
    });
    return { message: stored, duplicate: false };
  });
}
