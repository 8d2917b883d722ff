/**
 * The floor under a stored DM (short, bounded): the statements of an append
 * batch as `lib/sql/store.ts` sends them (the heads taken, the client ids
 * looked up, the messages inserted, the heads and the senders' read marks
 * moved), on `node:sqlite` directly, on this thread: no worker, no channel, no
 * store logic, no sockets. Same tables and indexes as the schema, WAL, 20
 * conversations, client ids in time order. Prints CPU µs per DM (whole
 * process, `process.cpuUsage`) and wall µs per commit, split into the
 * statements and the COMMIT.
 *
 * `deno run -A tools/sqlite_floor.ts` (env `SYNC=NORMAL`, `N`: DMs a commit,
 * a list, default `19,100`; `MESSAGES`: DMs stored for each size, default 12,000; `PAIRS`:
 * conversations, default 20, the saturated phase has 50; `PAGE`: SQLite's page size, default
 * 4096; `CLUSTERED=1`: the messages table `WITHOUT ROWID`, its rows in `(conv, id)` order).
 * Pin it with `taskset -c 1` to see it as the benchmark's server does.
 *
 * Measured here (2026-12-01, FULL, pinned, two runs): 41.8 and 47.8 µs a DM at
 * 19 a commit (the size of the 5,000/s phase's batches; COMMIT 1.0–1.1 ms of
 * wall time) and 15.4 and 17.2 at 100 (near the saturated phase's), against
 * the bare relay's 13–16 µs for all it does per DM. In a scratch variant, a
 * table with no `(conv, id)` index at all cost about a third less at 19 a
 * commit and a fifth less at 100; with that index filled every ten commits
 * instead, 15% less and nothing.
 *
 * @module
 */

import { DatabaseSync } from "node:sqlite";

const SYNC = Deno.env.get("SYNC") ?? "FULL";
const SIZES = (Deno.env.get("N") ?? "19,100").split(",").map(Number);
const MESSAGES = Number(Deno.env.get("MESSAGES") ?? 12_000);
const PAIRS = Number(Deno.env.get("PAIRS") ?? 20);
const PAGE = Number(Deno.env.get("PAGE") ?? 4096);
const CLUSTERED = Deno.env.get("CLUSTERED") === "1";

/** `(?, ?, …), …`: `rows` rows of `cols` plain placeholders, as `toSqlite` makes them. */
function rows(count: number, cols: number, extra = ""): string {
  const row = `(${Array(cols).fill("?").join(", ")}${extra})`;
  return Array(count).fill(row).join(", ");
}

function measure(n: number): string {
  const dir = Deno.makeTempDirSync({ prefix: "chat-sqlite-floor-" });
  const db = new DatabaseSync(`${dir}/floor.db`);
  try {
    db.exec(
      `PRAGMA page_size = ${PAGE}; PRAGMA journal_mode = WAL; PRAGMA synchronous = ${SYNC}; PRAGMA temp_store = MEMORY`,
    );
    db.exec(`
      CREATE TABLE heads (conv TEXT PRIMARY KEY, last_id BIGINT NOT NULL);
      CREATE TABLE messages (conv TEXT NOT NULL, id BIGINT NOT NULL, sender TEXT NOT NULL,
        room TEXT, recipient TEXT, body TEXT NOT NULL, ts BIGINT NOT NULL, cid TEXT,
        PRIMARY KEY (conv, id)) ${CLUSTERED ? "WITHOUT ROWID" : ""};
      CREATE UNIQUE INDEX messages_by_cid ON messages (cid, sender) WHERE cid IS NOT NULL;
      CREATE TABLE reads (name TEXT NOT NULL, conv TEXT NOT NULL, id BIGINT NOT NULL,
        PRIMARY KEY (name, conv));`);
    const convs = Array.from({ length: PAIRS }, (_, i) => `dm/user${i * 2}/user${i * 2 + 1}`);
    const take = db.prepare(
      `INSERT INTO heads (conv, last_id) VALUES ${rows(PAIRS, 1, ", 0")}
       ON CONFLICT (conv) DO UPDATE SET last_id = heads.last_id RETURNING conv, last_id`,
    );
    const lookup = db.prepare(
      `SELECT conv, id FROM messages WHERE cid IS NOT NULL AND (cid, sender) IN (VALUES ${
        rows(n, 2)
      })`,
    );
    const insert = db.prepare(
      `INSERT INTO messages (conv, id, sender, room, recipient, body, ts, cid) VALUES ${
        rows(n, 8)
      }`,
    );
    const move = db.prepare(
      `INSERT INTO heads (conv, last_id) VALUES ${rows(PAIRS, 2)}
       ON CONFLICT (conv) DO UPDATE SET last_id = excluded.last_id`,
    );
    const mark = db.prepare(
      `INSERT INTO reads (name, conv, id) VALUES ${rows(PAIRS, 3)}
       ON CONFLICT (name, conv) DO UPDATE SET id = max(reads.id, excluded.id)`,
    );
    const last = new Map<string, number>();
    let seq = 0;
    let statements = 0;
    const commitTimes: number[] = [];
    const commits = Math.max(20, Math.floor(MESSAGES / n));
    const cpu = process.cpuUsage();
    for (let k = 0; k < commits; k++) {
      const values: (string | number | null)[] = [], ids: string[] = [];
      for (let i = 0; i < n; i++) {
        const conv = convs[i % PAIRS], from = `user${(i % PAIRS) * 2}`;
        const id = (last.get(conv) ?? 0) + 1;
        last.set(conv, id);
        const cid = `${(Date.now() * 4096 + seq++ % 4096).toString(16).padStart(16, "0")}-${
          crypto.randomUUID().slice(19)
        }`;
        ids.push(cid, from);
        values.push(conv, id, from, null, `user${(i % PAIRS) * 2 + 1}`, `message ${seq}`, 0, cid);
      }
      let t = performance.now();
      db.exec("BEGIN IMMEDIATE; SAVEPOINT t1");
      take.all(...convs);
      lookup.all(...ids);
      insert.run(...values);
      move.run(...convs.flatMap((c) => [c, last.get(c) ?? 0]));
      mark.run(...convs.flatMap((c, i) => [`user${i * 2}`, c, last.get(c) ?? 0]));
      db.exec("RELEASE t1");
      statements += performance.now() - t;
      t = performance.now();
      db.exec("COMMIT");
      commitTimes.push(performance.now() - t);
    }
    const used = process.cpuUsage(cpu);
    const perDm = (used.user + used.system) / commits / n;
    // The slowest commits show whether SQLite's checkpoints (every 1,000 WAL pages, inside
    // a COMMIT) stall the commits behind them.
    commitTimes.sort((a, b) => a - b);
    const commit = commitTimes.reduce((sum, ms) => sum + ms, 0);
    const at = (q: number) => commitTimes[Math.floor(q * (commitTimes.length - 1))].toFixed(2);
    return `${n} a commit: ${perDm.toFixed(1)} µs CPU a DM (user ${
      (used.user / commits).toFixed(0)
    }, system ${(used.system / commits).toFixed(0)} µs a commit); per commit ${
      (statements * 1000 / commits).toFixed(0)
    } µs in statements, ${(commit * 1000 / commits).toFixed(0)} in COMMIT (wall; p99 ${
      at(0.99)
    } ms, max ${at(1)})`;
  } finally {
    db.close();
    Deno.removeSync(dir, { recursive: true });
  }
}

console.log(
  `SQLite alone, synchronous=${SYNC}, ${PAIRS} conversations, pages of ${PAGE} bytes${
    CLUSTERED ? ", messages WITHOUT ROWID" : ""
  }:`,
);
for (const n of SIZES) console.log(`  ${measure(n)}`);
