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

const isType = (type: string) => (f: Frame) => f.type === type;

Deno.test({
  name:
    "a PostgreSQL crash answers sends with store_failed, keeps sockets open, and recovers by itself",
  ignore: ignoreWithoutPostgres(),
  fn: async () => {
    await using pg = await startPostgres();
    await using server = await startServer({ data: pg.url });
    await using alice = await TestClient.connect(server.origin, "alice");
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
