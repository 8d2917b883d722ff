/**
 * Peers that misbehave at the socket level: one that stops reading (a frozen
 * tab, a paused process) and one that vanishes without a close (a cut
 * network). Both are raw TCP connections that speak just enough WebSocket to
 * get upgraded, because a real WebSocket client always reads and always pongs.
 */

import assert from "node:assert/strict";
import { type Frame, isPresence, TestClient } from "./_client.ts";
import { rawUpgrade } from "./_raw.ts";
import { startServer } from "./_server.ts";

Deno.test("a client that stops reading is dropped at --max-buffered-bytes while others get every message", async () => {
  const maxBufferedBytes = 256 * 1024;
  // No pings within the test: the bound alone must drop it (a frozen client also stops
  // answering pings, which would drop it after --idle-timeout anyway).
  await using server = await startServer({ settings: { maxBufferedBytes, idleTimeout: 600 } });
  await using alice = await TestClient.connect(server.origin, "alice", { timeoutMs: 60_000 });
  await alice.next((f) => f.type === "welcome");
  await using bob = await TestClient.connect(server.origin, "bob", { timeoutMs: 60_000 });
  await bob.next((f) => f.type === "welcome");
  const frozen = await rawUpgrade(server.port, "frozen");
  try {
    await alice.next(isPresence("frozen", true));
    // Far more than the kernel's socket buffers and the cap together can hold (here it is
    // dropped after about 12 MB).
    const text = "x".repeat(3900);
    const count = 8000;
    let dropped = false;
    const droppedSeen = alice.next(isPresence("frozen", false))
      .then(() => dropped = true);
    let sent = 0;
    while (!dropped && sent < count) {
      sent++;
      alice.send({ type: "send", room: "lobby", text: `${sent} ${text}`, cid: String(sent) });
      // Paced by what the readers have received, not by a timer: neither alice nor bob may fall
      // more than about 30 messages (120 KB) behind, well under the cap, however slow this machine.
      if (sent % 20 === 0) {
        const mark = (f: Frame) => f.type === "message" && f.cid === String(sent - 10);
        await alice.next(mark);
        await bob.seen(mark);
      }
    }
    await droppedSeen;
    console.log(
      `frozen client dropped after ${sent} messages (${(sent * 3.9).toFixed(0)} KB sent)`,
    );
    await alice.next((f) => f.type === "message" && f.cid === String(sent));
    // Bob, reading normally, got every message in order meanwhile.
    for (let id = 1; id <= sent; id++) {
      assert.equal((await bob.next((f) => f.type === "message")).id, id);
    }
    assert.deepEqual(
      (await (await fetch(`${server.origin}/healthz`)).json()).connections,
      2,
      "the frozen connection is gone",
    );
  } finally {
    frozen.close();
  }
});

Deno.test("a peer that vanishes without a close is detected by ping within --idle-timeout and shown offline", async () => {
  await using server = await startServer({ settings: { idleTimeout: 1 } });
  await using alice = await TestClient.connect(server.origin, "alice", { timeoutMs: 10_000 });
  await alice.next((f) => f.type === "welcome");
  const ghost = await rawUpgrade(server.port, "ghost");
  try {
    await alice.next(isPresence("ghost", true));
    const started = Date.now();
    // The raw peer never answers the server's ping: the server must give up on it by itself.
    await alice.next(isPresence("ghost", false));
    const waited = Date.now() - started;
    assert.ok(waited < 10_000, `detected after ${waited} ms`);
    // Alice herself answers pings (a real client), so she stays.
    alice.send({ type: "ping" });
    await alice.next((f) => f.type === "pong");
  } finally {
    ghost.close();
  }
});
