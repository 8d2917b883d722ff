/**
 * `chat migrate`, run as a user would (`main.ts migrate` in a child process):
 * a Deno KV file from the KV-era server into SQLite, then SQLite into
 * PostgreSQL. Each target must hold exactly the source's rows, a second run
 * must change nothing, and a server on the target must let the old users in
 * with their old tokens and password and show them their history and read state.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { sqlRows, TABLES } from "../lib/migrate.ts";
import type { Row } from "../lib/sql/dialect.ts";
import { openStore } from "../lib/sql/open.ts";
import { type Frame, TestClient } from "./_client.ts";
import { ignoreWithoutPostgres, startPostgres } from "./_pg.ts";
import { startServer } from "./_server.ts";

const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));
const FIXTURE = fileURLToPath(new URL("./_kv_fixture.ts", import.meta.url));

async function deno(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" })
    .output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

async function migrate(from: string, to: string) {
  return await deno(["run", "--unstable-kv", "-A", MAIN, "migrate", "--from", from, "--to", to]);
}

/** Every row of every table, each table sorted, for comparing two databases. */
async function rowsOf(data: string): Promise<Record<string, Row[]>> {
  await using store = await openStore(data);
  const out: Record<string, Row[]> = {};
  for (const table of TABLES) {
    out[table.name] = [];
    for await (const rows of sqlRows(store.db)(table)) {
      out[table.name].push(...rows.map((r) => ({ ...r })));
    }
  }
  return normalize(out);
}

function normalize(tables: Record<string, Row[]>): Record<string, Row[]> {
  const out: Record<string, Row[]> = {};
  for (const [name, rows] of Object.entries(tables)) {
    out[name] = rows.map((r) =>
      Object.fromEntries(
        Object.entries(r).map(([k, v]) => [k, typeof v === "bigint" ? Number(v) : v]),
      )
    ).sort((a, b) => JSON.stringify(a) < JSON.stringify(b) ? -1 : 1);
  }
  return out;
}

const isType = (type: string) => (f: Frame) => f.type === type;

Deno.test({
  name: "migrate copies a Deno KV file into SQLite and SQLite into PostgreSQL, exactly and once",
  ignore: ignoreWithoutPostgres(),
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "chat-migrate-" });
    try {
      const kv = `${dir}/chat.kv`, db = `${dir}/chat.db`;
      const written = await deno(["run", "--unstable-kv", "-A", FIXTURE, "write", kv]);
      assert.equal(written.code, 0, written.stderr);
      const { tokens, passwords } = JSON.parse(written.stdout);

      // The server refuses the old file and says how to migrate it.
      const refused = await deno(["run", "-A", MAIN, "--port", "0", "--data", kv]);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /deno task migrate --from .*chat\.kv --to .*chat\.db/);

      const first = await migrate(kv, db);
      assert.equal(first.code, 0, first.stderr);
      assert.match(first.stdout, /messages +1260 read +1260 new/);
      const dumped = await deno(["run", "--unstable-kv", "-A", FIXTURE, "dump", kv]);
      assert.equal(dumped.code, 0, dumped.stderr);
      const source = normalize(JSON.parse(dumped.stdout));
      assert.deepEqual(await rowsOf(db), source);

      const again = await migrate(kv, db);
      assert.equal(again.code, 0, again.stderr);
      assert.match(again.stdout, /nothing changed/);
      assert.deepEqual(await rowsOf(db), source);

      await using pg = await startPostgres();
      const toPg = await migrate(db, pg.url);
      assert.equal(toPg.code, 0, toPg.stderr);
      assert.deepEqual(await rowsOf(pg.url), source);
      assert.match((await migrate(db, pg.url)).stdout, /nothing changed/);

      // On the migrated database the old users are who they were.
      for (const data of [db, pg.url]) {
        await using server = await startServer({ data });
        const bob = await TestClient.connect(server.origin, "bob", { token: tokens.Bob });
        const welcome = await bob.next(isType("welcome"));
        assert.equal(welcome.user, "Bob");
        assert.deepEqual(welcome.conversations, [
          { room: "lobby", last: 1200, read: 700, unread: 500 },
          { room: "dev", last: 30, read: 0, unread: 30 },
          { with: "alice", last: 30, read: 12, unread: 18 },
        ]);
        bob.send({ type: "history", with: "alice", limit: 2 });
        const history = await bob.next(isType("history"));
        assert.deepEqual(history.messages.map((m: Frame) => [m.id, m.text, m.cid]), [
          [29, "dm 29", "d29"],
          [30, "dm 30", "d30"],
        ]);
        // A re-sent cid from before the migration is still recognised.
        bob.send({ type: "send", room: "dev", text: "again", cid: "b7" });
        const copy = await bob.next((f) => f.cid === "b7");
        assert.equal(copy.id, 7);
        await bob.close();
        const thief = await TestClient.connect(server.origin, "bob", { token: null });
        assert.equal((await thief.closed).code, 4003, "Bob's claim survived");
        const res = await fetch(`${server.origin}/api/login`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ user: "alice", password: passwords.alice }),
        });
        await res.body?.cancel();
        assert.equal(res.status, 200, "alice's password still works");
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
