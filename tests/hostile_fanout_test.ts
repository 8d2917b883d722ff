/**
 * Hostile fan-out and identity: one user's frames must not flood everyone
 * else, and a name that changes hands must take every unproven socket with it.
 */

import assert from "node:assert/strict";
import { type Frame, TestClient } from "./_client.ts";
import { startServer } from "./_server.ts";
import { within } from "./_hostile.ts";

const isType = (type: string) => (f: Frame) => f.type === type;

Deno.test("a flood of 5,000 typing frames to the lobby reaches a reader as one, and the reader keeps chatting", async () => {
  await using srv = await startServer({ settings: { maxBufferedBytes: 64 * 1024 } });
  const [bob] = await TestClient.join(srv.origin, "bob");
  const [alice] = await TestClient.join(srv.origin, "alice");
  const [mallory] = await TestClient.join(srv.origin, "mallory");
  try {
    for (let i = 0; i < 5000; i++) mallory.send({ type: "typing", room: "lobby" });
    alice.send({ type: "send", room: "lobby", text: "during the flood", cid: "a1" });
    mallory.send({ type: "send", room: "lobby", text: "flood over", cid: "m1" });
    await bob.next((f) => f.text === "during the flood");
    await bob.seen((f) => f.text === "flood over");
    const typing = bob.queued.filter((f) => f.type === "typing" && f.from === "mallory");
    assert.ok(typing.length <= 1, `bob got ${typing.length} typing frames from mallory`);
    // Typing still works for a normal typist.
    alice.send({ type: "typing", room: "lobby" });
    await bob.next((f) => f.type === "typing" && f.from === "alice");
  } finally {
    await Promise.all([bob.close(), alice.close(), mallory.close()]);
  }
});

Deno.test("a typing frame per DM is paced the same way", async () => {
  await using srv = await startServer();
  const [bob] = await TestClient.join(srv.origin, "bob");
  const [mallory] = await TestClient.join(srv.origin, "mallory");
  try {
    for (let i = 0; i < 1000; i++) mallory.send({ type: "typing", to: "bob" });
    mallory.send({ type: "send", to: "bob", text: "done", cid: "m1" });
    await bob.seen((f) => f.text === "done");
    const typing = bob.queued.filter((f) => f.type === "typing" && f.from === "mallory");
    assert.equal(typing.length, 1);
  } finally {
    await Promise.all([bob.close(), mallory.close()]);
  }
});

Deno.test("claiming a name closes the original page's socket on it (4003): it gets none of the name's DMs after", async () => {
  await using srv = await startServer();
  const squatter = await TestClient.connect(srv.origin, "carol", { protocol: null });
  const [alice] = await TestClient.join(srv.origin, "alice");
  try {
    // The legacy socket works while the name is free.
    alice.send({ type: "send", to: "carol", text: "before the claim", cid: "a0" });
    await squatter.next((f) => f.msg === "before the claim");
    const [carol, welcome] = await TestClient.join(srv.origin, "carol");
    assert.equal(typeof welcome.token, "string");
    const closed = await within(5000, "the squatter's close", squatter.closed);
    assert.equal(closed.code, 4003);
    alice.send({ type: "send", to: "carol", text: "for the owner", cid: "a1" });
    await carol.next((f) => f.text === "for the owner");
    assert.equal(squatter.queued.some((f) => f.msg === "for the owner"), false);
    // And the claimed name refuses the original page from now on.
    const again = await TestClient.connect(srv.origin, "carol", { protocol: null });
    assert.equal((await again.closed).code, 4003);
    await carol.close();
  } finally {
    await Promise.all([squatter.close(), alice.close()]);
  }
});

Deno.test("joining and leaving a room over and over is rate-limited like sending", async () => {
  await using srv = await startServer({ settings: { sendRate: 1, sendBurst: 5 } });
  const [bob] = await TestClient.join(srv.origin, "bob");
  const [mallory] = await TestClient.join(srv.origin, "mallory");
  try {
    bob.send({ type: "join", room: "den" });
    await bob.next(isType("joined"));
    for (let i = 0; i < 20; i++) {
      mallory.send({ type: i % 2 === 0 ? "join" : "leave", room: "den" });
    }
    const refused = await mallory.next(isType("error"));
    assert.equal(refused.code, "rate_limited");
    bob.send({ type: "ping" });
    await bob.next(isType("pong"));
    const seen = bob.queued.filter((f) => f.user === "mallory").length;
    assert.ok(seen <= 6, `bob saw ${seen} joins and leaves`);
  } finally {
    await Promise.all([bob.close(), mallory.close()]);
  }
});
