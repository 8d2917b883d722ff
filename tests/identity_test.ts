/**
 * Identity, authorization and limits over real sockets: nobody takes anyone's
 * name or reads their messages, and every limit answers with a clear frame,
 * close code or status.
 */

import assert from "node:assert/strict";
import { canonicalName, skeleton } from "../lib/identity.ts";
import { type Frame, TestClient, tokens } from "./_client.ts";
import { startServer } from "./_server.ts";

const isType = (type: string) => (f: Frame) => f.type === type;

/** Connects and expects the server to refuse with a close code; returns the close event. */
async function refused(
  origin: string,
  user: string,
  options: Parameters<typeof TestClient.connect>[2] = {},
) {
  await using client = await TestClient.connect(origin, user, options);
  // Bounded: a name let in without its token fails here, naming what it was sent, instead of
  // waiting for a close that never comes.
  const closed = await client.closed.catch((error) => {
    throw new Error(`expected ${user} to be refused with a close code: ${error.message}`);
  });
  assert.deepEqual(
    client.queued.filter((f) => f.type !== "error"),
    [],
    "nothing was sent before the close",
  );
  return closed;
}

async function status(
  origin: string,
  user: string,
  headers: Record<string, string> = {},
): Promise<number> {
  const res = await fetch(`${origin}/ws/${user}`, {
    headers: {
      upgrade: "websocket",
      connection: "Upgrade",
      "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
      "sec-websocket-version": "13",
      ...headers,
    },
  });
  await res.body?.cancel();
  return res.status;
}

Deno.test("names compare after NFKC and case folding, and look-alikes of other scripts collide", () => {
  assert.equal(canonicalName("ＡＬＩＣＥ"), "alice");
  assert.equal(canonicalName("Alice"), canonicalName("aLiCe"));
  assert.equal(skeleton("аlice"), skeleton("alice"), "Cyrillic а");
  assert.equal(skeleton("pаypal"), skeleton("paypal"));
  assert.equal(skeleton("bob0"), skeleton("bobo"));
  assert.notEqual(skeleton("alice"), skeleton("alina"));
  assert.notEqual(skeleton("小明"), skeleton("小红"));
});

Deno.test("the first chat.v1 connection claims a name and gets a token; without it the name is refused with 4003", async () => {
  await using srv = await startServer();
  const [alice, welcome] = await TestClient.join(srv.origin, "alice");
  assert.match(welcome.token, /^[A-Za-z0-9_-]{43}$/);
  assert.deepEqual(welcome.account, { password: false });
  alice.send({ type: "send", to: "alice", text: "note to self" });
  await alice.next(isType("message"));
  const thief = await refused(srv.origin, "alice", { token: null });
  assert.equal(thief.code, 4003);
  assert.match(thief.reason, /alice is taken/);
  // With the token, a second tab is alice and gets no new token.
  await using tab = await TestClient.connect(srv.origin, "alice");
  const second = await tab.next(isType("welcome"));
  assert.equal(second.token, undefined);
  assert.deepEqual(second.conversations.find((c: Frame) => c.with === "alice")?.last, 1);
  await alice.close();
});

Deno.test("a wrong or forged token is refused and sees nothing", async () => {
  await using srv = await startServer();
  await using _alice = (await TestClient.join(srv.origin, "alice"))[0];
  for (const token of ["x".repeat(43), "short", "a".repeat(500)]) {
    const closed = await refused(srv.origin, "alice", { token });
    assert.equal(closed.code, 4003, token.slice(0, 10));
  }
  // bob's token does not open alice.
  await using bob = (await TestClient.join(srv.origin, "bob"))[0];
  const bobToken = tokens.get(`${srv.origin} bob`)!;
  assert.equal((await refused(srv.origin, "alice", { token: bobToken })).code, 4003);
  await bob.close();
});

Deno.test("Alice and ＡＬＩＣＥ are the same account, and a Cyrillic look-alike is refused", async () => {
  await using srv = await startServer();
  const [alice] = await TestClient.join(srv.origin, "Alice");
  const token = tokens.get(`${srv.origin} alice`)!;
  await using shout = await TestClient.connect(srv.origin, "ＡＬＩＣＥ", { token });
  assert.equal((await shout.next(isType("welcome"))).user, "Alice");
  const fake = await refused(srv.origin, "Аlice", { token: null });
  assert.equal(fake.code, 4003);
  assert.match(fake.reason, /too much like the name Alice/);
  // A DM to any spelling reaches the one account.
  await using bob = (await TestClient.join(srv.origin, "bob"))[0];
  bob.send({ type: "send", to: "ALICE", text: "hi" });
  assert.equal((await alice.next(isType("message"))).to, "Alice");
  await alice.close();
});

Deno.test("original-page clients may use only unclaimed names, and are told why", async () => {
  await using srv = await startServer();
  await using _alice = (await TestClient.join(srv.origin, "alice"))[0];
  const legacy = await TestClient.connect(srv.origin, "alice", { protocol: null });
  const closed = await legacy.closed;
  assert.equal(closed.code, 4003);
  assert.deepEqual(legacy.queued.map((f) => [f.from_user, f.code]), [["*", "forbidden"]]);
  await using free = await TestClient.connect(srv.origin, "oldtimer", { protocol: null });
  free.send({ msg: "hello lobby" });
  assert.equal((await _alice.next(isType("message"))).from, "oldtimer");
});

Deno.test("a password lets a new device log in; logout closes that device, logout everywhere closes all, and the token is dead", async () => {
  await using srv = await startServer();
  const [alice] = await TestClient.join(srv.origin, "alice");
  alice.send({ type: "set_password", password: "correct horse battery" });
  await alice.next(isType("password_set"));
  const login = (password: string) =>
    fetch(`${srv.origin}/api/login`, {
      method: "POST",
      body: JSON.stringify({ user: "ALICE", password }),
    });
  const bad = await login("wrong password");
  assert.equal(bad.status, 401);
  await bad.body?.cancel();
  const good = await login("correct horse battery");
  assert.equal(good.status, 200);
  const { user, token } = await good.json();
  assert.equal(user, "alice");
  const laptop = await TestClient.connect(srv.origin, "alice", { token });
  assert.deepEqual((await laptop.next(isType("welcome"))).account, { password: true });
  const phone = await TestClient.connect(srv.origin, "alice", { token });
  await phone.next(isType("welcome"));

  // Logging out the laptop's session closes both sockets that used it, not the first device.
  laptop.send({ type: "logout" });
  assert.equal((await laptop.closed).code, 4001);
  assert.equal((await phone.closed).code, 4001);
  alice.send({ type: "ping" });
  await alice.next(isType("pong"));
  assert.equal(
    (await refused(srv.origin, "alice", { token })).code,
    4003,
    "a revoked token is dead",
  );

  alice.send({ type: "logout", everywhere: true });
  assert.equal((await alice.closed).code, 4001);
  assert.equal((await refused(srv.origin, "alice")).code, 4003, "every token is dead");
});

Deno.test("/api/login refuses bad bodies and floods", async () => {
  await using srv = await startServer({ settings: { loginsPerMinute: 3 } });
  const post = async (body: string) => {
    const res = await fetch(`${srv.origin}/api/login`, { method: "POST", body });
    await res.body?.cancel();
    return res.status;
  };
  assert.equal(await post("not json"), 400);
  assert.equal(await post(JSON.stringify({ user: "a b", password: "x" })), 400);
  assert.equal(await post(JSON.stringify({ user: "nobody", password: "whatever1" })), 401);
  assert.equal(await post(JSON.stringify({ user: "nobody", password: "whatever1" })), 429);
});

Deno.test("DM history and live DMs reach only the two parties", async () => {
  await using srv = await startServer();
  await using alice = (await TestClient.join(srv.origin, "alice"))[0];
  await using bob = (await TestClient.join(srv.origin, "bob"))[0];
  await using eve = (await TestClient.join(srv.origin, "eve"))[0];
  alice.send({ type: "send", to: "bob", text: "secret" });
  await bob.next((f) => f.text === "secret");
  // eve can only ever name DMs she is part of: "with: bob" is eve↔bob, empty.
  eve.send({ type: "history", with: "bob" });
  assert.deepEqual((await eve.next(isType("history"))).messages, []);
  eve.send({ type: "history", with: "alice" });
  assert.deepEqual((await eve.next(isType("history"))).messages, []);
  eve.send({
    type: "resume",
    conversations: [{ with: "bob", after: 0 }, { with: "alice", after: 0 }],
  });
  await eve.next(isType("resumed"));
  await eve.next(isType("resumed"));
  assert.equal(eve.queued.filter((f) => f.type === "message").length, 0);
});

Deno.test("a private room shows its messages, history and typing to members only; an invitation lets one in", async () => {
  await using srv = await startServer();
  const [alice] = await TestClient.join(srv.origin, "alice");
  await using bob = (await TestClient.join(srv.origin, "bob"))[0];
  const [eve] = await TestClient.join(srv.origin, "eve");
  alice.send({ type: "create", room: "staff", private: true });
  assert.deepEqual(await alice.next(isType("joined")), {
    type: "joined",
    room: "staff",
    user: "alice",
  });
  alice.send({ type: "send", room: "staff", text: "payroll" });
  await alice.next(isType("message"));
  alice.send({ type: "create", room: "staff" });
  assert.equal((await alice.next(isType("error"))).code, "room_exists");

  eve.send({ type: "join", room: "staff" });
  assert.deepEqual(
    (({ code, request }) => ({ code, request }))(await eve.next(isType("error"))),
    { code: "forbidden", request: { type: "join", room: "staff" } },
  );
  eve.send({ type: "history", room: "staff" });
  assert.equal((await eve.next(isType("error"))).code, "not_member");
  eve.send({ type: "rooms" });
  assert.deepEqual((await eve.next(isType("rooms"))).rooms, [], "a private room is not listed");

  alice.send({ type: "invite", room: "staff", user: "bob" });
  assert.deepEqual(await bob.next(isType("invited")), {
    type: "invited",
    room: "staff",
    by: "alice",
  });
  bob.send({ type: "join", room: "staff" });
  await alice.next((f) => f.type === "joined" && f.user === "bob");
  bob.send({ type: "history", room: "staff" });
  assert.deepEqual((await bob.next(isType("history"))).messages.map((m: Frame) => m.text), [
    "payroll",
  ]);
  bob.send({ type: "typing", room: "staff" });
  await alice.next(isType("typing"));
  // eve saw none of it.
  eve.send({ type: "ping" });
  await eve.next(isType("pong"));
  assert.deepEqual(eve.queued.filter((f) => ["message", "typing", "joined"].includes(f.type)), []);

  // Restarting the connection keeps the room private and the membership.
  await alice.close();
  await using again = await TestClient.connect(srv.origin, "alice");
  const welcome = await again.next(isType("welcome"));
  assert.deepEqual(welcome.privateRooms, ["staff"]);
  await eve.close();
});

Deno.test("the server accepts chat.v1 upgrades from its own origin, the allowlist and non-browsers only", async () => {
  await using srv = await startServer({
    settings: { allowOrigin: "https://chat.example, https://other.example" },
  });
  const v1 = { "sec-websocket-protocol": "chat.v1" };
  assert.equal(await status(srv.origin, "a", { ...v1, origin: "https://evil.example" }), 403);
  assert.equal(await status(srv.origin, "a", { ...v1, origin: "null" }), 403);
  assert.equal(
    await status(srv.origin, "a", { ...v1, origin: "https://chat.example.evil.example" }),
    403,
  );
  for (const origin of [srv.origin, "https://chat.example", "https://other.example"]) {
    await using c = await TestClient.connect(srv.origin, `u${origin.length}`, {
      headers: { origin },
    });
    await c.next(isType("welcome"));
  }
  await using bot = await TestClient.connect(srv.origin, "bot");
  await bot.next(isType("welcome"));
});

Deno.test("sending faster than the rate limit gets rate_limited with retry_after, abuse closes with 1008, others are unaffected", async () => {
  await using srv = await startServer({ settings: { sendRate: 5, sendBurst: 5 } });
  await using alice = (await TestClient.join(srv.origin, "alice"))[0];
  const flooder = (await TestClient.join(srv.origin, "flooder"))[0];
  for (let i = 0; i < 6; i++) {
    flooder.send({ type: "send", room: "lobby", text: `f${i}`, cid: `f${i}` });
  }
  const limited = await flooder.next(isType("error"));
  assert.equal(limited.code, "rate_limited");
  assert.equal(limited.ref, "f5");
  assert.ok(
    limited.retry_after > 0 && limited.retry_after <= 200,
    `retry_after ${limited.retry_after}`,
  );
  for (let i = 0; i < 5; i++) await alice.next((f) => f.text === `f${i}`);
  // Keep hammering: more refusals than a burst in a minute close the connection for abuse.
  for (let i = 0; i < 10; i++) flooder.send({ type: "send", room: "lobby", text: "spam" });
  assert.equal((await flooder.closed).code, 1008);
  alice.send({ type: "send", room: "lobby", text: "still fine", cid: "ok" });
  assert.equal((await alice.next((f) => f.text === "still fine")).cid, "ok");
});

Deno.test("connection limits answer 429 per user, per address and per minute; room limits answer too_many_rooms", async () => {
  {
    await using srv = await startServer({ settings: { maxConnectionsPerUser: 2 } });
    await using a = (await TestClient.join(srv.origin, "alice"))[0];
    await using b = await TestClient.connect(srv.origin, "alice");
    await b.next(isType("welcome"));
    const token = tokens.get(`${srv.origin} alice`)!;
    assert.equal(
      await status(srv.origin, "alice", { "sec-websocket-protocol": `chat.v1, token.${token}` }),
      429,
    );
    await a.close();
  }
  {
    await using srv = await startServer({ settings: { maxConnectionsPerIp: 2 } });
    await using _a = await TestClient.connect(srv.origin, "a");
    await using _b = await TestClient.connect(srv.origin, "b");
    assert.equal(await status(srv.origin, "c"), 429);
  }
  {
    await using srv = await startServer({ settings: { connectsPerMinute: 2 } });
    (await TestClient.connect(srv.origin, "a")).close();
    (await TestClient.connect(srv.origin, "b")).close();
    assert.equal(await status(srv.origin, "c"), 429);
  }
  {
    await using srv = await startServer({ settings: { maxRoomsPerUser: 2 } });
    await using a = (await TestClient.join(srv.origin, "alice"))[0];
    for (const room of ["r1", "r2"]) {
      a.send({ type: "join", room });
      await a.next(isType("joined"));
    }
    a.send({ type: "join", room: "r3" });
    assert.equal((await a.next(isType("error"))).code, "too_many_rooms");
  }
});
