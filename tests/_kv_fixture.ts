/// <reference lib="deno.unstable" />
/**
 * Writes a Deno KV file in the layout the KV-era server kept (see the old
 * `lib/kv_store.ts` and `lib/accounts.ts`), for the migration test:
 * `deno run --unstable-kv -A tests/_kv_fixture.ts write FILE` prints, as JSON,
 * the tokens and passwords it set so the test can log in with them afterwards;
 * `… dump FILE` prints every row `chat migrate` reads from it, by table.
 *
 * @module
 */

import { canonicalName, hashPassword, hashToken, newToken, skeleton } from "../lib/identity.ts";
import type { ChatMessage } from "../lib/protocol.ts";
import { dmKey, roomKey } from "../lib/store.ts";
import { kvRows, TABLES } from "../lib/migrate.ts";

const [command, file] = Deno.args;
if (command === "dump") {
  const { source, close } = await kvRows(file);
  const out: Record<string, unknown[]> = {};
  for (const table of TABLES) {
    out[table.name] = [];
    for await (const rows of source(table)) out[table.name].push(...rows);
  }
  close();
  console.log(JSON.stringify(out));
  Deno.exit(0);
}
const kv = await Deno.openKv(file);
const since = 1_700_000_000_000;
const out: { tokens: Record<string, string>; passwords: Record<string, string> } = {
  tokens: {},
  passwords: {},
};
for (const name of ["alice", "Bob", "carol", "大卫"]) {
  await kv.set(["user", name], { since });
  await kv.set(["canon", canonicalName(name)], name);
  await kv.set(["skel", skeleton(name)], name);
}
for (const name of ["alice", "Bob"]) {
  const token = newToken();
  const session = await hashToken(token);
  const account: Record<string, unknown> = { since };
  if (name === "alice") {
    account.password = await hashPassword("correct horse", 1000);
    out.passwords[name] = "correct horse";
  }
  await kv.set(["account", name], account);
  await kv.set(["token", session], { user: name, since });
  await kv.set(["tokens", name, session], true);
  out.tokens[name] = token;
}
await kv.set(["room", "lobby"], { private: false, owner: "alice" });
await kv.set(["room", "dev"], { private: false, owner: "alice" });
await kv.set(["room", "secret"], { private: true, owner: "alice" });
for (const [user, room] of [["alice", "dev"], ["Bob", "dev"], ["alice", "secret"]]) {
  await kv.set(["member", user, room], true);
}
await kv.set(["members", "dev"], new Deno.KvU64(2n));
await kv.set(["members", "secret"], new Deno.KvU64(1n));
await kv.set(["invite", "carol", "secret"], { by: "alice" });
const conversations: Array<[string, (id: number) => ChatMessage]> = [
  [
    roomKey("lobby"),
    (id) => ({ id, room: "lobby", from: "alice", text: `大家好 ${id}`, ts: since + id }),
  ],
  [
    roomKey("dev"),
    (id) => ({ id, room: "dev", from: "Bob", text: `dev ${id}`, ts: since + id, cid: `b${id}` }),
  ],
  [
    dmKey("alice", "Bob"),
    (id) => ({ id, to: "Bob", from: "alice", text: `dm ${id}`, ts: since + id, cid: `d${id}` }),
  ],
];
for (const [conv, make] of conversations) {
  const n = conv === roomKey("lobby") ? 1200 : 30;
  for (let id = 1; id <= n; id++) {
    const m = make(id);
    await kv.set(["msg", conv, id], m);
    if (m.cid) await kv.set(["cid", m.from, m.cid], [conv, id], { expireIn: 86_400_000 });
  }
  await kv.set(["last", conv], n);
}
await kv.set(["dm", "alice", "Bob"], true);
await kv.set(["dm", "Bob", "alice"], true);
await kv.set(["read", "alice", roomKey("lobby")], 1200);
await kv.set(["read", "Bob", roomKey("lobby")], 700);
await kv.set(["read", "Bob", dmKey("alice", "Bob")], 12);
kv.close();
console.log(JSON.stringify(out));
