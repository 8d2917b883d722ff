/**
 * Shutdown as a client and an operator see it: frames still arriving are no
 * longer taken, those being handled finish (reads beside the chain included)
 * before the store closes, so nobody gets `store_failed` and the log shows no
 * "Database is closed".
 */

import assert from "node:assert/strict";
import { type Frame, TestClient } from "./_client.ts";
import { startServer } from "./_server.ts";

Deno.test("shutting down while history and read frames stream in answers each or none, never store_failed, and logs no 'Database is closed'", async () => {
  const logged: string[] = [];
  const error = console.error;
  console.error = (...args: unknown[]) => logged.push(args.map(String).join(" "));
  try {
    // 2,000 frames in one burst, which the server reads as fast as they come: room for all of
    // them behind the slow ones (--max-queued-bytes has its own test), so shutdown meets them.
    const srv = await startServer({ settings: { maxQueuedBytes: 8 * 1024 * 1024 } });
    const [alice] = await TestClient.join(srv.origin, "alice");
    alice.send({ type: "send", room: "lobby", text: "one", cid: "one" });
    await alice.next((f) => f.cid === "one");
    const answers: Frame[] = [];
    alice.socket.addEventListener("message", (e) => answers.push(JSON.parse(e.data)));
    for (let i = 0; i < 1000; i++) {
      alice.send({ type: "history", room: "lobby" });
      alice.send({ type: "read", room: "lobby", id: 1 });
    }
    alice.send({ type: "join", room: "last" });
    // Some are being handled now; shut down (the server, then its store) in the middle.
    await alice.seen((f) => f.type === "history");
    await srv.close();
    const closed = await alice.closed;
    assert.equal(closed.code, 1001);
    const failed = answers.filter((f) => f.type === "error");
    assert.deepEqual(failed, [], "no error frames");
    assert.deepEqual(logged.filter((l) => /closed|store|unexpected/i.test(l)), []);
  } finally {
    console.error = error;
  }
});
