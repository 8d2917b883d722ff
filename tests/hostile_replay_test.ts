/**
 * Resume that defeats itself: replaying a long gap must be paced by the
 * socket's real backpressure, so a reader that keeps up is never taken for a
 * slow consumer, while one that stops reading still is.
 */

import assert from "node:assert/strict";
import { type Frame, TestClient } from "./_client.ts";
import { startServer } from "./_server.ts";

Deno.test("a fast reader resuming a gap of 3,000 messages with --max-buffered-bytes 16384 gets them all and stays connected", async () => {
  await using srv = await startServer({
    settings: { maxBufferedBytes: 16 * 1024, replayLimit: 5000 },
  });
  const [alice] = await TestClient.join(srv.origin, "alice");
  const text = "x".repeat(200);
  const total = 3000;
  // Paced by acknowledgements, so the writer is not itself a slow consumer.
  for (let sent = 0; sent < total;) {
    const batch = Math.min(20, total - sent);
    for (let i = 0; i < batch; i++) {
      alice.send({ type: "send", room: "lobby", text, cid: `c${sent + i}` });
    }
    await alice.next((f: Frame) => f.cid === `c${sent + batch - 1}`);
    sent += batch;
  }
  await alice.close();
  const bob = await TestClient.connect(srv.origin, "bob", { query: "?resume", timeoutMs: 20_000 });
  try {
    await bob.next((f) => f.type === "welcome");
    bob.send({ type: "resume", conversations: [{ room: "lobby", after: 0 }] });
    const resumed = await bob.next((f) => f.type === "resumed").catch(async (e) => {
      const c = await bob.closed;
      throw new Error(`closed ${c.code} ${c.reason}: ${String(e).slice(0, 100)}`);
    });
    assert.deepEqual([resumed.from, resumed.to, resumed.more], [1, total, false]);
    const ids = bob.queued.filter((f) => f.type === "message").map((f) => f.id);
    assert.equal(ids.length, total);
    assert.deepEqual(ids, Array.from({ length: total }, (_, i) => i + 1));
    bob.send({ type: "ping" });
    await bob.next((f) => f.type === "pong");
  } finally {
    await bob.close();
  }
});
