/**
 * The chat's SQL schema, one list of versioned migrations for both engines,
 * applied in order at start inside one transaction (so a second instance
 * starting at the same moment waits, then finds nothing to do).
 *
 * Tables:
 * - `users`: registered names, unique by canonical form and by look-alike skeleton
 * - `accounts`: claimed names (and their password hash, JSON); `tokens`: sessions by token hash
 * - `rooms`, `members`, `invites`: rooms, who is in them, who is invited
 * - `heads`: per conversation, the newest id (the row locked to hand out the next ones)
 * - `messages`: every message, keyed by `(conv, id)`; `(cid, sender)` unique when `cid` is set
 * - `reads`: per user and conversation, the newest id read
 * - `dms`: per user, the DMs they take part in (with the conversation key)
 * - `skeletons`, `room_names`: look-alike indexes of names and rooms; `rooms_made`: per user
 * - `meta`: small facts about the data (the skeleton version it was indexed with; on SQLite,
 *   `search_indexed`, the newest `messages.rowid` in the search index)
 *
 * Never edit a migration once released: add the next one.
 *
 * @module
 */

import type { Dialect, SqlDatabase } from "./dialect.ts";

/** One step of the schema: its statements, run in order. */
export interface Migration {
  /** 1, 2, 3, …: the schema's version once applied. */
  version: number;
  /** What it adds, for the log. */
  description: string;
  /** Its statements (one statement per string). */
  statements(dialect: Dialect): string[];
}

/** Every migration, oldest first. */
export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: "users, accounts, tokens, rooms, members, invites, messages, read state",
    statements: () => [
      `CREATE TABLE users (
        name TEXT PRIMARY KEY,
        canon TEXT NOT NULL UNIQUE,
        skel TEXT NOT NULL UNIQUE,
        since BIGINT NOT NULL)`,
      `CREATE TABLE accounts (
        name TEXT PRIMARY KEY,
        since BIGINT NOT NULL,
        password TEXT)`,
      `CREATE TABLE tokens (
        hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        since BIGINT NOT NULL)`,
      `CREATE INDEX tokens_by_name ON tokens (name)`,
      `CREATE TABLE rooms (
        name TEXT PRIMARY KEY,
        private INTEGER NOT NULL,
        owner TEXT NOT NULL,
        since BIGINT NOT NULL)`,
      `CREATE TABLE members (
        room TEXT NOT NULL,
        name TEXT NOT NULL,
        since BIGINT NOT NULL,
        PRIMARY KEY (room, name))`,
      `CREATE INDEX members_by_name ON members (name, room)`,
      `CREATE TABLE invites (
        name TEXT NOT NULL,
        room TEXT NOT NULL,
        by_name TEXT NOT NULL,
        since BIGINT NOT NULL,
        PRIMARY KEY (name, room))`,
      `CREATE TABLE heads (
        conv TEXT PRIMARY KEY,
        last_id BIGINT NOT NULL)`,
      `CREATE TABLE messages (
        conv TEXT NOT NULL,
        id BIGINT NOT NULL,
        sender TEXT NOT NULL,
        room TEXT,
        recipient TEXT,
        body TEXT NOT NULL,
        ts BIGINT NOT NULL,
        cid TEXT,
        PRIMARY KEY (conv, id))`,
      `CREATE UNIQUE INDEX messages_by_cid ON messages (sender, cid) WHERE cid IS NOT NULL`,
      `CREATE TABLE reads (
        name TEXT NOT NULL,
        conv TEXT NOT NULL,
        id BIGINT NOT NULL,
        PRIMARY KEY (name, conv))`,
      `CREATE TABLE dms (
        name TEXT NOT NULL,
        peer TEXT NOT NULL,
        conv TEXT NOT NULL,
        PRIMARY KEY (name, peer))`,
    ],
  },
  {
    version: 2,
    description: "substring search over message text (FTS5 trigram / pg_trgm)",
    statements: (dialect) =>
      dialect.name === "sqlite"
        ? [
          `CREATE VIRTUAL TABLE messages_fts USING fts5(
            body, content='messages', content_rowid='rowid', tokenize='trigram')`,
          `CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
            INSERT INTO messages_fts (rowid, body) VALUES (new.rowid, new.body);
          END`,
          `INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')`,
        ]
        // pg_trgm needs the right to create an extension; without it search still works, by scanning.
        : [
          `DO $$ BEGIN
            CREATE EXTENSION IF NOT EXISTS pg_trgm;
            CREATE INDEX messages_body_trgm ON messages USING gin (body gin_trgm_ops);
          EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'pg_trgm unavailable (%): search scans the messages', SQLERRM;
          END $$`,
        ],
  },
  {
    version: 3,
    description: "look-alike indexes for names and rooms (UTS #39 skeletons), rooms made per user",
    statements: () => [
      // Every skeleton a name has had (skeleton functions improve); the first name keeps one.
      `CREATE TABLE skeletons (skel TEXT PRIMARY KEY, name TEXT NOT NULL)`,
      `INSERT INTO skeletons (skel, name) SELECT skel, name FROM users`,
      `CREATE TABLE room_names (skel TEXT PRIMARY KEY, room TEXT NOT NULL)`,
      `CREATE TABLE rooms_made (name TEXT PRIMARY KEY, made INTEGER NOT NULL)`,
      `CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)`,
    ],
  },
  {
    version: 4,
    description: "search index filled after the appends, in batches (SQLite)",
    // The trigger indexed each message inside its append transaction: ~15 µs of a DM's CPU,
    // 30 µs a row at the few dozen rows a commit of 5,000 DMs/s, against 10 µs in batches of
    // a thousand. `SqlStore` now indexes what is past `search_indexed` (and searches it by
    // scanning until then). PostgreSQL's GIN index batches its own pending entries.
    statements: (dialect) =>
      dialect.name === "sqlite"
        ? [
          `DROP TRIGGER IF EXISTS messages_fts_insert`,
          `INSERT INTO meta (key, value)
           SELECT 'search_indexed', CAST(COALESCE(MAX(rowid), 0) AS TEXT) FROM messages
           WHERE true ON CONFLICT (key) DO NOTHING`,
        ]
        : [],
  },
  {
    version: 5,
    description: "client ids indexed id first, so that ids in time order are appended at one end",
    // Every new entry of an index keyed `(sender, cid)` lands in its sender's range: a page
    // of its own per sender at each commit, and per message when ids are random UUIDs (a
    // DM with one cost 2× the store's time of one without, measured by `tools/store_path.ts`).
    // Keyed `(cid, sender)`, the same uniqueness, ids in time order (the page's UUIDv7s)
    // all land at the index's end, on a page or two per commit whoever sends them.
    statements: () => [
      `DROP INDEX messages_by_cid`,
      `CREATE UNIQUE INDEX messages_by_cid ON messages (cid, sender) WHERE cid IS NOT NULL`,
    ],
  },
];

/** The version a database has once every migration here is applied. */
export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1].version;

/**
 * Brings a database's schema to {@linkcode SCHEMA_VERSION}; resolves with the
 * versions applied now (empty when it was current). Refuses a database from a
 * newer release.
 */
export async function migrate(db: SqlDatabase): Promise<number[]> {
  return await db.transaction(async (tx) => {
    if (db.dialect.schemaLock) await tx.query(db.dialect.schemaLock);
    await tx.query(
      `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied BIGINT NOT NULL)`,
    );
    const [row] = await tx.query<{ v: number | null }>(
      `SELECT MAX(version) AS v FROM schema_version`,
    );
    const current = Number(row?.v ?? 0);
    if (current > SCHEMA_VERSION) {
      throw new Error(
        `the database has schema version ${current}, newer than this server's ${SCHEMA_VERSION}; upgrade the server`,
      );
    }
    const applied: number[] = [];
    for (const m of MIGRATIONS) {
      if (m.version <= current) continue;
      for (const statement of m.statements(db.dialect)) await tx.query(statement);
      await tx.query(`INSERT INTO schema_version (version, applied) VALUES ($1, $2)`, [
        m.version,
        Date.now(),
      ]);
      applied.push(m.version);
    }
    return applied;
  });
}
