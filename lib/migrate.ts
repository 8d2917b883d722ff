/// <reference lib="deno.unstable" />
/**
 * `chat migrate --from SOURCE --to TARGET`: copies everything the chat keeps
 * from an earlier Deno KV file (`*.kv`), or from one SQL database to another
 * (SQLite → PostgreSQL, say), into a SQL database: users, accounts with
 * their password hashes, tokens, rooms, memberships, invitations, the DM
 * index, every message with its id, time and cid, each conversation's newest
 * id, and read state.
 *
 * Rows already in the target are left alone (`ON CONFLICT DO NOTHING`; read
 * marks and conversation heads only ever move forward), so a second run
 * changes nothing, and an interrupted run can simply be run again. Reading a
 * Deno KV file needs `--unstable-kv` (`deno task migrate` has it).
 *
 * @module
 */

import { canonicalName, skeleton } from "./identity.ts";
import { type ChatMessage, LOBBY } from "./protocol.ts";
import type { Row, SqlDatabase, SqlValue } from "./sql/dialect.ts";
import { openDatabase, parseData } from "./sql/open.ts";
import { SqlStore } from "./sql/store.ts";
import { conversationOf, roomKey } from "./store.ts";

/** How a table is copied: its columns, its key, and the column that may only grow. */
interface TableSpec {
  name: string;
  columns: string[];
  key: string[];
  /** Copied over a smaller value in the target (read marks, heads); other rows are kept as they are. */
  grows?: string;
}

/** Every table, in an order that keeps references valid. */
export const TABLES: readonly TableSpec[] = [
  { name: "users", columns: ["name", "canon", "skel", "since"], key: ["name"] },
  { name: "accounts", columns: ["name", "since", "password"], key: ["name"] },
  { name: "tokens", columns: ["hash", "name", "since"], key: ["hash"] },
  { name: "rooms", columns: ["name", "private", "owner", "since"], key: ["name"] },
  { name: "members", columns: ["room", "name", "since"], key: ["room", "name"] },
  { name: "invites", columns: ["name", "room", "by_name", "since"], key: ["name", "room"] },
  { name: "dms", columns: ["name", "peer", "conv"], key: ["name", "peer"] },
  {
    name: "messages",
    columns: ["conv", "id", "sender", "room", "recipient", "body", "ts", "cid"],
    key: ["conv", "id"],
  },
  { name: "heads", columns: ["conv", "last_id"], key: ["conv"], grows: "last_id" },
  { name: "reads", columns: ["name", "conv", "id"], key: ["name", "conv"], grows: "id" },
  // The look-alike indexes; `meta` is not copied, so the target re-indexes names on start.
  { name: "skeletons", columns: ["skel", "name"], key: ["skel"] },
  { name: "room_names", columns: ["skel", "room"], key: ["skel"] },
  { name: "rooms_made", columns: ["name", "made"], key: ["name"], grows: "made" },
];

/** Where rows come from: per table, batches of rows in the table's columns. */
export type RowSource = (table: TableSpec) => AsyncIterable<Row[]>;

/** What a migration did, per table: rows read, and rows the target did not have. */
export type MigrationReport = Record<string, { read: number; written: number }>;

const BATCH = 500;

/** Rows of a Deno KV file in the SQL tables' shape. */
export async function kvRows(path: string): Promise<{ source: RowSource; close(): void }> {
  const kv = await Deno.openKv(path);
  async function* list<T>(prefix: Deno.KvKey): AsyncIterable<Deno.KvEntry<T>> {
    yield* kv.list<T>({ prefix });
  }
  const canon = new Map<string, string>();
  const skel = new Map<string, string>();
  for await (const e of list<string>(["canon"])) canon.set(e.value, e.key[1] as string);
  for await (const e of list<string>(["skel"])) skel.set(e.value, e.key[1] as string);
  const tables: Record<string, () => AsyncIterable<Row>> = {
    async *users() {
      for await (const e of list<{ since: number }>(["user"])) {
        const name = e.key[1] as string;
        yield {
          name,
          canon: canon.get(name) ?? canonicalName(name),
          skel: skel.get(name) ?? skeleton(name),
          since: e.value.since ?? 0,
        };
      }
    },
    async *accounts() {
      for await (const e of list<{ since: number; password?: unknown }>(["account"])) {
        yield {
          name: e.key[1] as string,
          since: e.value.since ?? 0,
          password: e.value.password === undefined ? null : JSON.stringify(e.value.password),
        };
      }
    },
    async *tokens() {
      for await (const e of list<{ user: string; since: number }>(["token"])) {
        yield { hash: e.key[1] as string, name: e.value.user, since: e.value.since ?? 0 };
      }
    },
    async *rooms() {
      for await (const e of list<{ private: boolean; owner: string }>(["room"])) {
        yield {
          name: e.key[1] as string,
          private: e.value.private ? 1 : 0,
          owner: e.value.owner,
          since: 0,
        };
      }
    },
    async *members() {
      for await (const e of list(["member"])) {
        yield { room: e.key[2] as string, name: e.key[1] as string, since: 0 };
      }
    },
    async *invites() {
      for await (const e of list<{ by: string }>(["invite"])) {
        yield { name: e.key[1] as string, room: e.key[2] as string, by_name: e.value.by, since: 0 };
      }
    },
    async *dms() {
      for await (const e of list(["dm"])) {
        const [name, peer] = [e.key[1] as string, e.key[2] as string];
        yield { name, peer, conv: conversationOf({ from: name, to: peer }) };
      }
    },
    async *messages() {
      for await (const e of list<ChatMessage>(["msg"])) {
        const m = e.value;
        yield {
          conv: e.key[1] as string,
          id: m.id,
          sender: m.from,
          room: m.room ?? null,
          recipient: m.room === undefined ? m.to ?? null : null,
          body: m.text,
          ts: m.ts,
          cid: m.cid ?? null,
        };
      }
    },
    async *heads() {
      for await (const e of list<number>(["last"])) {
        yield { conv: e.key[1] as string, last_id: Number(e.value) };
      }
    },
    async *reads() {
      const marked = new Set<string>();
      for await (const e of list<number>(["read"])) {
        marked.add(`${e.key[1] as string}\n${e.key[2] as string}`);
        yield { name: e.key[1] as string, conv: e.key[2] as string, id: Number(e.value) };
      }
      // In KV no read mark meant nothing read; in SQL a room without one starts at its newest
      // message (a newcomer's). Keep what users had unread: a mark at 0 where KV had none.
      const unmarked = function* (name: string, conv: string) {
        if (!marked.has(`${name}\n${conv}`)) {
          marked.add(`${name}\n${conv}`);
          yield { name, conv, id: 0 };
        }
      };
      for await (const e of list(["user"])) yield* unmarked(e.key[1] as string, roomKey(LOBBY));
      for await (const e of list(["member"])) {
        yield* unmarked(e.key[1] as string, roomKey(e.key[2] as string));
      }
    },
    // A KV file predates these indexes: the server fills the names' one when it starts.
    async *skeletons() {},
    async *room_names() {},
    async *rooms_made() {},
  };
  return {
    source: (table) => batches(tables[table.name]()),
    close: () => kv.close(),
  };
}

async function* batches(rows: AsyncIterable<Row>): AsyncIterable<Row[]> {
  let batch: Row[] = [];
  for await (const row of rows) {
    batch.push(row);
    if (batch.length >= BATCH) {
      yield batch;
      batch = [];
    }
  }
  if (batch.length > 0) yield batch;
}

/** Rows of a chat SQL database, in key order. */
export function sqlRows(db: SqlDatabase): RowSource {
  return async function* (table) {
    for (let offset = 0;; offset += BATCH) {
      const rows = await db.query(
        `SELECT ${table.columns.join(", ")} FROM ${table.name} ORDER BY ${table.key.join(", ")}
         LIMIT ${BATCH} OFFSET ${offset}`,
      );
      if (rows.length > 0) yield rows;
      if (rows.length < BATCH) return;
    }
  };
}

/** Copies every table from `source` into `target` (whose schema is current); see the module doc. */
export async function copyAll(
  source: RowSource,
  target: SqlDatabase,
  progress: (line: string) => void = () => {},
): Promise<MigrationReport> {
  const report: MigrationReport = {};
  for (const table of TABLES) {
    const counts = report[table.name] = { read: 0, written: 0 };
    const onConflict = table.grows
      ? `ON CONFLICT (${
        table.key.join(", ")
      }) DO UPDATE SET ${table.grows} = excluded.${table.grows}
         WHERE ${table.name}.${table.grows} < excluded.${table.grows}`
      : "ON CONFLICT DO NOTHING";
    for await (const rows of source(table)) {
      const width = table.columns.length;
      const values = rows.map((_, r) =>
        `(${table.columns.map((_, c) => `$${r * width + c + 1}`).join(", ")})`
      ).join(", ");
      const params: SqlValue[] = rows.flatMap((row) => table.columns.map((c) => row[c] ?? null));
      const written = await target.transaction((tx) =>
        tx.query(
          `INSERT INTO ${table.name} (${table.columns.join(", ")}) VALUES ${values} ${onConflict}
           RETURNING 1 AS one`,
          params,
        )
      );
      counts.read += rows.length;
      counts.written += written.length;
      progress(`${table.name}: ${counts.read} read, ${counts.written} new`);
    }
  }
  return report;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

const USAGE = "usage: chat migrate --from ./data/chat.kv --to ./data/chat.db\n" +
  "       (--from: a Deno KV file, a SQLite file or postgres://…; --to: a SQLite file or postgres://…)";

/** The `migrate` command; resolves with the process's exit code. */
export async function migrateMain(args: readonly string[]): Promise<number> {
  const flags = new Map<string, string>();
  for (let i = 0; i < args.length; i++) {
    const m = args[i].match(/^--(from|to)(?:=(.*))?$/);
    if (!m) {
      console.error(`error: unexpected argument ${args[i]}\n${USAGE}`);
      return 2;
    }
    const value = m[2] ?? args[++i];
    if (value === undefined) {
      console.error(`error: --${m[1]} needs a value\n${USAGE}`);
      return 2;
    }
    flags.set(m[1], value);
  }
  const from = flags.get("from"), to = flags.get("to");
  if (!from || !to) {
    console.error(USAGE);
    return 2;
  }
  if (from === to) {
    console.error("error: --from and --to are the same");
    return 2;
  }
  let source: { source: RowSource; close(): void | Promise<void> };
  try {
    if (/\.kv$/i.test(from)) {
      if (typeof Deno.openKv !== "function") {
        console.error("error: reading a Deno KV file needs --unstable-kv (use deno task migrate)");
        return 2;
      }
      await Deno.stat(from);
      source = await kvRows(from);
    } else {
      const db = await openDatabase(
        parseData(from, { onDeploy: false, env: () => undefined, explicit: true }),
      );
      source = { source: sqlRows(db), close: () => db.close() };
    }
  } catch (error) {
    console.error(`error: cannot read ${from}: ${describe(error)}`);
    return 1;
  }
  let target: SqlStore;
  try {
    if (/\.kv$/i.test(to)) throw new Error("the target must be a SQLite file or postgres://…");
    target = await SqlStore.open(
      await openDatabase(parseData(to, { onDeploy: false, env: () => undefined, explicit: true })),
    );
  } catch (error) {
    await source.close();
    console.error(`error: cannot write ${to}: ${describe(error)}`);
    return 1;
  }
  const encoder = new TextEncoder();
  const tty = Deno.stderr.isTerminal();
  try {
    const report = await copyAll(source.source, target.db, (line) => {
      if (tty) Deno.stderr.writeSync(encoder.encode(`\r\x1b[K${line}`));
    });
    if (tty) Deno.stderr.writeSync(encoder.encode("\r\x1b[K"));
    const total = Object.values(report).reduce((n, r) => n + r.written, 0);
    for (const [table, r] of Object.entries(report)) {
      console.log(
        `${table.padEnd(9)} ${String(r.read).padStart(8)} read ${
          String(r.written).padStart(8)
        } new`,
      );
    }
    console.log(
      total === 0
        ? `${to} already had everything in ${from}: nothing changed`
        : `copied ${from} into ${to}; start the server with --data ${to}`,
    );
    return 0;
  } catch (error) {
    console.error(`\nerror: migration stopped (run it again to continue): ${describe(error)}`);
    return 1;
  } finally {
    await source.close();
    await target.close();
  }
}
