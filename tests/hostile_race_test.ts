/**
 * Checks racing writes: an authorisation decided on one read and written on
 * a later one lets a racer through. Each race here is run many times, since
 * one try may not hit the window.
 */

import assert from "node:assert/strict";
import { type Frame, TestClient } from "./_client.ts";
import { startServer } from "./_server.ts";

/** The answer to a create or join of `room` by `user`: joined, or the error code. */
function outcome(client: TestClient, user: string, room: string): Promise<string> {
  return client.next((f: Frame) =>
    (f.type === "joined" && f.room === room && f.user === user) ||
    (f.type === "error" && f.request?.room === room)
  ).then((f) => f.type === "joined" ? "joined" : f.code);
}

Deno.test("a join racing the creation of a private room never makes the joiner a member (40 races)", async () => {
  await using srv = await startServer();
  const [alice] = await TestClient.join(srv.origin, "alice");
  const [mallory] = await TestClient.join(srv.origin, "mallory");
  const tally = new Map<string, number>();
  try {
    for (let i = 0; i < 40; i++) {
      const room = `race${i}`;
      // Both frames leave at once; which the server takes first varies.
      if (i % 2 === 0) {
        alice.send({ type: "create", room, private: true });
        mallory.send({ type: "join", room });
      } else {
        mallory.send({ type: "join", room });
        alice.send({ type: "create", room, private: true });
      }
      const [a, m] = await Promise.all([
        outcome(alice, "alice", room),
        outcome(mallory, "mallory", room),
      ]);
      const key = `create ${a}, join ${m}`;
      tally.set(key, (tally.get(key) ?? 0) + 1);
    }
  } finally {
    await Promise.all([alice.close(), mallory.close()]);
  }
  console.log(Object.fromEntries(tally));
  // Either mallory made the (public) room first, or alice's is private and mallory was refused.
  assert.equal(tally.get("create joined, join joined") ?? 0, 0, "mallory is in a private room");
});
