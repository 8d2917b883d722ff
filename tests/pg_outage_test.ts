/**
 * PostgreSQL going away under a running server: what a user sees. Sends are
 * answered `store_failed` within seconds (not left hanging), the socket stays
 * open, and once PostgreSQL is back the same client's re-send is stored,
 * with no restart of the chat server.
 */

import assert from "node:assert/strict";
import { type Frame, TestClient } from "./_client.ts";
import { ignoreWithoutPostgres, startPostgres } from "./_pg.ts";
import { startServer } from "./_server.ts";
import { openStore } from "../lib/sql/open.ts";
import { roomKey } from "../lib/store.ts";

const isType = (type: string) => (f: Frame) => f.type === type;

Deno.test({
  name:
    "a PostgreSQL crash answers sends with store_failed, keeps sockets open, and recovers by itself",
  ignore: ignoreWithoutPostgres(),
  fn: async () => {
    await using pg = await startPostgres();
    await using server = await startServer({ data: pg.url });
    // store_failed comes after the store has tried for about 5 s: wait longer than that, not forever.
    await using alice = await TestClient.connect(server.origin, "alice", { timeoutMs: 10_000 });
    await alice.next(isType("welcome"));
    alice.send({ type: "send", room: "lobby", text: "before", cid: "c1" });
    assert.equal((await alice.next((f) => f.cid === "c1")).id, 1);

    await pg.crash();
    alice.send({ type: "send", room: "lobby", text: "during", cid: "c2" });
    const refused = await alice.next((f) => f.ref === "c2" || f.cid === "c2");
    assert.equal(refused.type, "error", JSON.stringify(refused));
    assert.equal(refused.code, "store_failed");
    alice.send({ type: "ping" });
    await alice.next(isType("pong"));

    await pg.restart();
    alice.send({ type: "send", room: "lobby", text: "during", cid: "c2" });
    const stored = await alice.next((f) => f.cid === "c2");
    assert.equal(stored.type, "message", JSON.stringify(stored));
    assert.equal(stored.id, 2, "nothing was stored by the failed attempt");
    alice.send({ type: "history", room: "lobby" });
    const history = await alice.next(isType("history"));
    assert.deepEqual(history.messages.map((m: Frame) => m.text), ["before", "during"]);
  },
});

Deno.test({
  name: "appends in flight across a PostgreSQL crash and restart are all stored, once, in order",
  ignore: ignoreWithoutPostgres(),
  fn: async () => {
    await using pg = await startPostgres();
    await using store = await openStore(pg.url);
    await store.append({ room: "lobby", from: "alice", text: "before" });
    // SIGKILL and restart at once (as a supervisor would), while 50 appends are waiting.
    const restarted = pg.restart();
    const appends = Array.from(
      { length: 50 },
      (_, i) => store.append({ room: "lobby", from: "alice", text: `m${i}`, cid: `m${i}` }),
    );
    await restarted;
    const results = await Promise.all(appends);
    assert.deepEqual(
      results.map((r) => r.message.id).sort((a, b) => a - b),
      Array.from({ length: 50 }, (_, i) => i + 2),
    );
    const page = await store.history(roomKey("lobby"), { limit: 100 });
    assert.deepEqual(page.messages.map((m) => m.text), [
      "before",
      ...results.map((r) => r.message.text),
    ]);
  },
});
