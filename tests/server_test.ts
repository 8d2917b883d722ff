/**
 * The real server over real sockets: an in-process server on 127.0.0.1 and a
 * free port, HTTP through `fetch` (or a raw TCP request where `fetch` would
 * rewrite the path), and real WebSocket clients. Nothing sleeps: every step
 * waits for the frame, close event or HTTP answer it is about.
 */

import assert from "node:assert/strict";
import { VERSION } from "../lib/server.ts";
import { type Frame, isPresence, TestClient } from "./_client.ts";
import { HANDSHAKE, rawGet } from "./_raw.ts";
import { startServer } from "./_server.ts";

// ---------------------------------------------------------------------------
// Helpers

const isType = (type: string) => (f: Frame) => f.type === type;
const isMessage = (text: string) => (f: Frame) => f.type === "message" && f.text === text;
/** A frame in the original page's shape carrying this text. */
const isLegacy = (msg: string) => (f: Frame) => f.msg === msg && f.from_user !== undefined;

/** A frame without its `ts`, after checking `ts` is a time the server just set. */
function withoutTs(frame: Frame): Frame {
  const { ts, ...rest } = frame;
  assert.equal(typeof ts, "number", `ts of ${JSON.stringify(frame)}`);
  assert.ok(Math.abs(ts - Date.now()) < 60_000, `ts ${ts} is not a current time`);
  return rest;
}

/** Opens a chat.v1 connection and waits for its welcome (closing it if none comes). */
async function welcomed(origin: string, user: string): Promise<TestClient> {
  return (await TestClient.join(origin, user))[0];
}

/**
 * Opens a legacy connection (no subprotocol) and waits until the server
 * handles its frames: a blank message is answered with an error, and only
 * after the connection is registered.
 */
async function legacy(origin: string, user: string): Promise<TestClient> {
  const client = await TestClient.connect(origin, user, { protocol: null });
  try {
    client.send({ msg: " " });
    const err = await client.next((f) => f.type === "error");
    assert.equal(err.from_user, "*");
  } catch (error) {
    await client.close();
    throw error;
  }
  return client;
}

/** Proves the connection is served: ping → pong. */
async function ping(client: TestClient): Promise<void> {
  client.send({ type: "ping" });
  assert.deepEqual(await client.next(isType("pong")), { type: "pong" });
}

interface Health {
  ok: boolean;
  version: string;
  connections: number;
  usersOnline: number;
  store: string;
}

async function health(origin: string): Promise<Health> {
  const res = await fetch(`${origin}/healthz`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
  return await res.json();
}

/**
 * Waits until `/healthz` shows the counts: closes are handled by the server
 * after the client sees them, so a count is the only way to know.
 */
async function healthShows(
  origin: string,
  expected: { connections: number; usersOnline: number },
): Promise<Health> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const h = await health(origin);
    if (h.connections === expected.connections && h.usersOnline === expected.usersOnline) {
      return h;
    }
    if (Date.now() > deadline) {
      assert.fail(`healthz never showed ${JSON.stringify(expected)}; last ${JSON.stringify(h)}`);
    }
  }
}

const LIMITS = { maxTextLength: 4000, maxFrameBytes: 64 * 1024 };

// ---------------------------------------------------------------------------
// HTTP

Deno.test("server serves the page at / with a strict CSP, nosniff and an ETag, and 304 for If-None-Match", async () => {
  await using srv = await startServer();
  const res = await fetch(`${srv.origin}/`);
  const body = await res.text();
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/html; charset=utf-8");
  assert.match(body, /^<!doctype html>/i);
  assert.match(body, /<script type="module" src="\/app.js"><\/script>/);
  assert.equal(res.headers.get("x-content-type-options"), "nosniff");
  const csp = res.headers.get("content-security-policy") ?? "";
  const directives = new Map(
    csp.split(";").map((d) => d.trim().split(/\s+/)).map(([k, ...v]) => [k, v]),
  );
  const scriptSrc = directives.get("script-src") ?? directives.get("default-src");
  assert.ok(scriptSrc, `no script-src in ${csp}`);
  assert.ok(!scriptSrc.includes("'unsafe-inline'"), `script-src allows inline: ${csp}`);
  assert.ok(!scriptSrc.includes("'unsafe-eval'"), `script-src allows eval: ${csp}`);
  const etag = res.headers.get("etag");
  assert.match(etag ?? "", /^"[0-9a-f]+"$/);

  const again = await fetch(`${srv.origin}/`, { headers: { "if-none-match": etag! } });
  assert.equal(again.status, 304);
  assert.equal(await again.text(), "");
  assert.equal(again.headers.get("etag"), etag);

  const stale = await fetch(`${srv.origin}/`, { headers: { "if-none-match": '"0000"' } });
  assert.equal(stale.status, 200);
  assert.equal(await stale.text(), body);
});

Deno.test("server serves /app.js as JavaScript and /style.css as CSS, each with its own ETag", async () => {
  await using srv = await startServer();
  const etags = new Set<string>();
  for (
    const [path, type] of [
      ["/app.js", "text/javascript; charset=utf-8"],
      ["/style.css", "text/css; charset=utf-8"],
    ]
  ) {
    const res = await fetch(`${srv.origin}${path}`);
    const body = await res.text();
    assert.equal(res.status, 200, path);
    assert.equal(res.headers.get("content-type"), type, path);
    assert.equal(res.headers.get("x-content-type-options"), "nosniff", path);
    assert.ok(body.length > 0, `${path} is empty`);
    const etag = res.headers.get("etag") ?? "";
    assert.match(etag, /^"[0-9a-f]+"$/, path);
    etags.add(etag);
    const cached = await fetch(`${srv.origin}${path}`, { headers: { "if-none-match": etag } });
    assert.equal(cached.status, 304, path);
    await cached.body?.cancel();
  }
  assert.equal(etags.size, 2);
});

Deno.test("server reports health as JSON whose counts follow connected clients", async () => {
  await using srv = await startServer();
  assert.deepEqual(await health(srv.origin), {
    ok: true,
    version: VERSION,
    connections: 0,
    usersOnline: 0,
    store: "ok",
  });
  await using alice1 = await welcomed(srv.origin, "alice");
  await using _alice2 = await welcomed(srv.origin, "alice");
  await using bob = await legacy(srv.origin, "bob");
  assert.deepEqual(await health(srv.origin), {
    ok: true,
    version: VERSION,
    connections: 3,
    usersOnline: 2,
    store: "ok",
  });
  await alice1.close();
  await healthShows(srv.origin, { connections: 2, usersOnline: 2 });
  await bob.close();
  const h = await healthShows(srv.origin, { connections: 1, usersOnline: 1 });
  assert.equal(h.ok, true);
  assert.equal(h.store, "ok");
});

Deno.test("server answers an unknown path with 404", async () => {
  await using srv = await startServer();
  for (const path of ["/nope", "/ws", "/static/app.js", "/healthz/x"]) {
    const res = await fetch(`${srv.origin}${path}`);
    assert.equal(res.status, 404, path);
    assert.equal(await res.text(), "not found\n", path);
  }
});

Deno.test("server answers a GET of /ws/alice without an upgrade with 426 and a reason", async () => {
  await using srv = await startServer();
  const res = await fetch(`${srv.origin}/ws/alice`);
  assert.equal(res.status, 426);
  assert.match(res.headers.get("content-type") ?? "", /^text\/plain/);
  assert.match(await res.text(), /WebSocket/);
});

const BAD_USERNAMES: Array<[label: string, target: string, reason: RegExp]> = [
  ["a space", "/ws/a%20b", /^bad username: .*letters, digits/],
  ["an empty name", "/ws/", /^bad username: .*must not be empty/],
  ["33 characters", `/ws/${"a".repeat(33)}`, /^bad username: .*at most 32/],
  ["33 Chinese characters", `/ws/${encodeURIComponent("小".repeat(33))}`, /at most 32/],
  ["a/b encoded as %2F", "/ws/a%2Fb", /^bad username: .*letters, digits/],
  ["<script>", "/ws/%3Cscript%3E", /^bad username: .*letters, digits/],
  ["bad percent-encoding %E0%A4%A", "/ws/%E0%A4%A", /percent-encoding/],
  ["a lone %", "/ws/50%", /percent-encoding/],
  // Fails today: the URL parser folds /ws/.. into /, so the handshake is answered with
  // the page (200) and no reason. A WebSocket upgrade outside /ws/ should be refused.
  ["..", "/ws/..", /\S/],
];

for (const [label, target, reason] of BAD_USERNAMES) {
  Deno.test(`server refuses a username with ${label} with HTTP 400 and a reason before upgrading`, async () => {
    await using srv = await startServer();
    const res = await rawGet(srv.port, target, HANDSHAKE);
    assert.equal(res.status, 400, `${target} → ${res.status} ${res.body.slice(0, 80)}`);
    assert.match(res.headers.get("content-type") ?? "", /^text\/plain/);
    assert.match(res.body, reason);
    assert.equal(res.headers.get("sec-websocket-accept"), null);
    assert.equal((await health(srv.origin)).connections, 0);
  });
}

Deno.test("server refuses a handshake with a NUL in a header field with HTTP 400, and serves on", async () => {
  await using srv = await startServer();
  const res = await rawGet(srv.port, "/ws/alice", { ...HANDSHAKE, "x-note": "a\0b" });
  assert.equal(res.status, 400, `${res.status} ${res.body.slice(0, 80)}`);
  assert.match(res.body, /not a valid WebSocket handshake/);
  assert.equal(res.headers.get("sec-websocket-accept"), null);
  await using _alice = await welcomed(srv.origin, "alice");
});

Deno.test("server reads a header field sent on two lines as one list: Connection: Upgrade, then keep-alive", async () => {
  await using srv = await startServer();
  const res = await rawGet(srv.port, "/ws/carol", [
    ["Upgrade", "websocket"],
    ["Connection", "Upgrade"],
    ["Connection", "keep-alive"],
    ["Sec-WebSocket-Key", HANDSHAKE["sec-websocket-key"]],
    ["Sec-WebSocket-Version", "13"],
  ]);
  assert.equal(res.status, 101);
  // RFC 6455's answer to this key.
  assert.equal(res.headers.get("sec-websocket-accept"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
});

Deno.test("server never opens a socket for a user named .. (WebSocket clients fold /ws/.. into /)", async () => {
  await using srv = await startServer();
  const socket = new WebSocket(`${srv.origin.replace("http", "ws")}/ws/..`, "chat.v1");
  let opened = false;
  socket.onopen = () => opened = true;
  const closed = await new Promise<CloseEvent>((resolve) => socket.onclose = resolve);
  assert.equal(opened, false);
  assert.equal(closed.wasClean, false);
  assert.equal((await health(srv.origin)).connections, 0);
});

Deno.test("server accepts usernames of any script, with _ - . and up to 32 characters, NFC-normalised", async () => {
  await using srv = await startServer();
  const names: Array<[sent: string, user: string]> = [
    ["小明", "小明"],
    ["Zoë", "Zoë"],
    ["Zoe\u0308", "Zoë"], // decomposed: the server normalises to NFC
    ["a_b-c.d", "a_b-c.d"],
    ["a".repeat(32), "a".repeat(32)],
    ["小".repeat(32), "小".repeat(32)],
  ];
  for (const [sent, user] of names) {
    await using client = await TestClient.connect(srv.origin, sent);
    assert.equal(client.socket.protocol, "chat.v1");
    const welcome = await client.next(isType("welcome"));
    assert.equal(welcome.user, user, JSON.stringify(sent));
  }
});

Deno.test("server refuses a handshake offering only an unknown subprotocol with 400", async () => {
  await using srv = await startServer();
  for (const offered of ["chat.v2", "chat.v2, graphql-ws"]) {
    const res = await rawGet(srv.port, "/ws/alice", {
      ...HANDSHAKE,
      "sec-websocket-protocol": offered,
    });
    assert.equal(res.status, 400, offered);
    assert.match(res.body, /unsupported subprotocol; offer chat\.v1 or none/);
  }
  assert.equal((await health(srv.origin)).connections, 0);
});

Deno.test("server picks chat.v1 among offered subprotocols, and legacy when none is offered", async () => {
  await using srv = await startServer();
  await using v1 = await TestClient.connect(srv.origin, "alice", { protocol: "chat.v1" });
  assert.equal(v1.socket.protocol, "chat.v1");
  assert.equal((await v1.next(isType("welcome"))).user, "alice");
  const url = `${srv.origin.replace("http", "ws")}/ws/bob`;
  const socket = new WebSocket(url, ["chat.v2", "chat.v1"]);
  const opened = Promise.withResolvers<void>();
  const closed = Promise.withResolvers<void>();
  const first = Promise.withResolvers<string>();
  socket.onopen = () => opened.resolve();
  socket.onerror = () => opened.reject(new Error("handshake failed"));
  socket.onclose = () => closed.resolve();
  socket.onmessage = (e) => first.resolve(e.data);
  await opened.promise;
  assert.equal(socket.protocol, "chat.v1");
  assert.equal(JSON.parse(await first.promise).type, "welcome");
  socket.close();
  await closed.promise;
  await using old = await legacy(srv.origin, "carol");
  assert.equal(old.socket.protocol, "");
});

// ---------------------------------------------------------------------------
// chat.v1 end to end

Deno.test("server welcomes a chat.v1 user with the lobby, who is online, conversations and limits", async () => {
  await using srv = await startServer();
  await using _alice = await welcomed(srv.origin, "alice");
  await using bob = await TestClient.connect(srv.origin, "bob");
  const welcome = await bob.next(isType("welcome"));
  assert.equal(welcome.user, "bob");
  assert.deepEqual(welcome.rooms, ["lobby"]);
  assert.deepEqual([...welcome.online].sort(), ["alice", "bob"]);
  assert.equal(welcome.onlineCount, 2);
  assert.equal(welcome.onlineMore, false);
  assert.deepEqual(welcome.conversations, [{ room: "lobby", last: 0, read: 0, unread: 0 }]);
  // The limits a client needs to check its input; more may be added.
  assert.deepEqual({ ...welcome.limits, ...LIMITS }, welcome.limits);
  for (const [key, value] of Object.entries(welcome.limits)) {
    assert.ok(Number.isSafeInteger(value) && (value as number) > 0, `limits.${key}: ${value}`);
  }
});

Deno.test("server announces join and leave to the room's members only, and gates sending on membership", async () => {
  await using srv = await startServer();
  await using alice = await welcomed(srv.origin, "alice");
  await using bob = await welcomed(srv.origin, "bob");
  await using carol = await welcomed(srv.origin, "carol");

  alice.send({ type: "join", room: "rust" });
  assert.deepEqual(await alice.next(isType("joined")), {
    type: "joined",
    room: "rust",
    user: "alice",
  });
  bob.send({ type: "join", room: "rust" });
  const joined = { type: "joined", room: "rust", user: "bob" };
  assert.deepEqual(await alice.next(isType("joined")), joined);
  assert.deepEqual(await bob.next(isType("joined")), joined);

  bob.send({ type: "send", room: "rust", text: "hi rust", cid: "b1" });
  const ack = await bob.next(isMessage("hi rust"));
  assert.deepEqual(withoutTs(ack), {
    type: "message",
    id: 1,
    room: "rust",
    from: "bob",
    text: "hi rust",
    cid: "b1",
  });
  assert.deepEqual(await alice.next(isMessage("hi rust")), ack);

  bob.send({ type: "leave", room: "rust" });
  const left = { type: "left", room: "rust", user: "bob" };
  assert.deepEqual(await alice.next(isType("left")), left);
  assert.deepEqual(await bob.next(isType("left")), left);

  bob.send({ type: "send", room: "rust", text: "still here?", cid: "b2" });
  assert.deepEqual(await bob.next(isType("error")), {
    type: "error",
    code: "not_member",
    message: "join rust before sending to it",
    ref: "b2",
    request: { type: "send", room: "rust" },
  });
  alice.send({ type: "send", room: "rust", text: "bye bob" });
  await alice.next(isMessage("bye bob"));

  // carol was never in rust: a lobby message proves her queue is current.
  alice.send({ type: "send", room: "lobby", text: "marker" });
  await carol.next(isMessage("marker"));
  await bob.next(isMessage("marker"));
  assert.deepEqual(carol.queued, [], "carol, never in rust, saw its frames");
  assert.deepEqual(bob.queued.filter(isMessage("bye bob")), [], "bob got rust after leaving");

  // Membership is kept: alice's next welcome lists rust.
  await using alice2 = await TestClient.connect(srv.origin, "alice");
  assert.deepEqual((await alice2.next(isType("welcome"))).rooms, ["lobby", "rust"]);
  await using bob2 = await TestClient.connect(srv.origin, "bob");
  assert.deepEqual((await bob2.next(isType("welcome"))).rooms, ["lobby"]);
});

Deno.test("server acknowledges a send with the stored message, echoing cid, and delivers it to everyone in the room", async () => {
  await using srv = await startServer();
  await using alice = await welcomed(srv.origin, "alice");
  await using bob = await welcomed(srv.origin, "bob");
  alice.send({ type: "send", room: "lobby", text: "hello <b>world</b> 小明", cid: "c-1" });
  const ack = await alice.next(isMessage("hello <b>world</b> 小明"));
  assert.deepEqual(withoutTs(ack), {
    type: "message",
    id: 1,
    room: "lobby",
    from: "alice",
    text: "hello <b>world</b> 小明",
    cid: "c-1",
  });
  assert.deepEqual(await bob.next(isMessage("hello <b>world</b> 小明")), ack);

  alice.send({ type: "send", room: "lobby", text: "no cid" });
  const second = await alice.next(isMessage("no cid"));
  assert.equal(second.id, 2);
  assert.equal("cid" in second, false);
  assert.ok(second.ts >= ack.ts);
  assert.deepEqual(await bob.next(isMessage("no cid")), second);

  const text4000 = "x".repeat(LIMITS.maxTextLength);
  alice.send({ type: "send", room: "lobby", text: text4000, cid: "max" });
  assert.equal((await bob.next(isMessage(text4000))).id, 3);
  assert.equal((await alice.next(isMessage(text4000))).cid, "max");
});

Deno.test("server numbers each room and each DM as its own sequence starting at 1", async () => {
  await using srv = await startServer();
  await using alice = await welcomed(srv.origin, "alice");
  await using bob = await welcomed(srv.origin, "bob");
  alice.send({ type: "join", room: "rust" });
  await alice.next(isType("joined"));
  const steps: Array<[TestClient, Frame, number]> = [
    [alice, { room: "lobby", text: "l1" }, 1],
    [alice, { to: "bob", text: "d1" }, 1],
    [alice, { room: "lobby", text: "l2" }, 2],
    [alice, { room: "rust", text: "r1" }, 1],
    [bob, { to: "alice", text: "d2" }, 2],
    [bob, { room: "lobby", text: "l3" }, 3],
    [alice, { room: "rust", text: "r2" }, 2],
    [alice, { to: "bob", text: "d3" }, 3],
    [bob, { to: "carol-never-seen", text: "lost" }, 0],
    [alice, { to: "alice", text: "note to self" }, 1],
  ];
  for (const [i, [client, where, id]] of steps.entries()) {
    const cid = `s${i}`;
    client.send({ type: "send", ...where, cid });
    const got = await client.next((f) => f.cid === cid || f.ref === cid);
    if (id === 0) {
      assert.equal(got.code, "unknown_user");
      continue;
    }
    assert.equal(got.type, "message", JSON.stringify(got));
    assert.equal(got.id, id, `${where.text}: ${JSON.stringify(got)}`);
  }
});

Deno.test("server delivers a DM to every tab of both parties and to no one else", async () => {
  await using srv = await startServer();
  await using alice1 = await welcomed(srv.origin, "alice");
  await using alice2 = await welcomed(srv.origin, "alice");
  await using bob1 = await welcomed(srv.origin, "bob");
  await using bob2 = await welcomed(srv.origin, "bob");
  await using carol = await welcomed(srv.origin, "carol");
  alice1.send({ type: "send", to: "bob", text: "psst", cid: "dm1" });
  const ack = await alice1.next(isMessage("psst"));
  assert.deepEqual(withoutTs(ack), {
    type: "message",
    id: 1,
    to: "bob",
    from: "alice",
    text: "psst",
    cid: "dm1",
  });
  for (const tab of [alice2, bob1, bob2]) assert.deepEqual(await tab.next(isMessage("psst")), ack);

  bob2.send({ type: "send", to: "alice", text: "what?", cid: "dm2" });
  const reply = await bob2.next(isMessage("what?"));
  assert.deepEqual(withoutTs(reply), {
    type: "message",
    id: 2,
    to: "alice",
    from: "bob",
    text: "what?",
    cid: "dm2",
  });
  for (const tab of [alice1, alice2, bob1]) {
    assert.deepEqual(await tab.next(isMessage("what?")), reply);
  }

  alice1.send({ type: "send", room: "lobby", text: "marker" });
  await carol.next(isMessage("marker"));
  assert.deepEqual(carol.queued.filter(isType("message")), [], "carol saw a DM");
});

Deno.test("server pages history oldest first: default 50, before, limit capped at 200, and a more flag", async () => {
  await using srv = await startServer();
  await using alice = await welcomed(srv.origin, "alice");
  const total = 210;
  for (let i = 1; i <= total; i++) alice.send({ type: "send", room: "lobby", text: `m${i}` });
  await alice.next(isMessage(`m${total}`));

  const history = async (frame: Frame) => {
    alice.send({ type: "history", ...frame });
    const page = await alice.next(isType("history"));
    return page;
  };
  const ids = (page: Frame) => page.messages.map((m: Frame) => m.id);
  const range = (from: number, to: number) =>
    Array.from({ length: to - from + 1 }, (_, i) => from + i);

  const newest = await history({ room: "lobby" });
  assert.deepEqual(Object.keys(newest).sort(), ["messages", "more", "room", "type"]);
  assert.equal(newest.room, "lobby");
  assert.deepEqual(ids(newest), range(161, 210));
  assert.equal(newest.more, true);
  const m = newest.messages[0];
  assert.deepEqual(withoutTs(m), { id: 161, room: "lobby", from: "alice", text: "m161" });

  const capped = await history({ room: "lobby", limit: 1000 });
  assert.deepEqual(ids(capped), range(11, 210));
  assert.equal(capped.more, true);

  const page = await history({ room: "lobby", before: 11, limit: 4 });
  assert.deepEqual(ids(page), [7, 8, 9, 10]);
  assert.deepEqual(page.messages.map((x: Frame) => x.text), ["m7", "m8", "m9", "m10"]);
  assert.equal(page.more, true);

  const start = await history({ room: "lobby", before: 4, limit: 3 });
  assert.deepEqual(ids(start), [1, 2, 3]);
  assert.equal(start.more, false);

  const none = await history({ room: "lobby", before: 1 });
  assert.deepEqual(none.messages, []);
  assert.equal(none.more, false);

  const dm = await history({ with: "bob" });
  assert.deepEqual(dm, { type: "history", with: "bob", messages: [], more: false });
});

Deno.test("server relays typing to the others in a room and to the DM recipient, and stores nothing", async () => {
  await using srv = await startServer();
  await using alice = await welcomed(srv.origin, "alice");
  await using bob1 = await welcomed(srv.origin, "bob");
  await using bob2 = await welcomed(srv.origin, "bob");
  await using carol = await welcomed(srv.origin, "carol");

  alice.send({ type: "typing", room: "lobby" });
  const inRoom = { type: "typing", room: "lobby", from: "alice" };
  for (const c of [bob1, bob2, carol]) assert.deepEqual(await c.next(isType("typing")), inRoom);

  alice.send({ type: "typing", to: "bob" });
  const inDm = { type: "typing", to: "bob", from: "alice" };
  for (const c of [bob1, bob2]) assert.deepEqual(await c.next(isType("typing")), inDm);

  alice.send({ type: "typing", to: "nobody" });
  assert.equal((await alice.next(isType("error"))).code, "unknown_user");
  alice.send({ type: "typing", room: "secret" });
  assert.equal((await alice.next(isType("error"))).code, "not_member");

  await ping(alice);
  assert.deepEqual(alice.queued.filter(isType("typing")), [], "the typist saw its own typing");
  alice.send({ type: "history", room: "lobby" });
  assert.deepEqual((await alice.next(isType("history"))).messages, []);
  alice.send({ type: "history", with: "bob" });
  assert.deepEqual((await alice.next(isType("history"))).messages, []);
  // carol got the room's typing only, never the DM's.
  await ping(carol);
  assert.deepEqual(carol.queued.filter(isType("typing")), []);
});

Deno.test("server tells a user's other tabs what was read, and the next welcome shows it", async () => {
  await using srv = await startServer();
  await using alice1 = await welcomed(srv.origin, "alice");
  await using alice2 = await welcomed(srv.origin, "alice");
  await using bob = await welcomed(srv.origin, "bob");
  for (const text of ["one", "two", "three"]) bob.send({ type: "send", room: "lobby", text });
  bob.send({ type: "send", to: "alice", text: "dm one" });
  await alice2.next(isMessage("three"));
  await alice2.next(isMessage("dm one"));

  {
    await using peek = await TestClient.connect(srv.origin, "alice");
    const welcome = await peek.next(isType("welcome"));
    assert.deepEqual(welcome.conversations, [
      { room: "lobby", last: 3, read: 0, unread: 3 },
      { with: "bob", last: 1, read: 0, unread: 1 },
    ]);
  }

  alice1.send({ type: "read", room: "lobby", id: 3 });
  assert.deepEqual(await alice2.next(isType("read")), { type: "read", room: "lobby", id: 3 });
  alice1.send({ type: "read", with: "bob", id: 1 });
  assert.deepEqual(await alice2.next(isType("read")), { type: "read", with: "bob", id: 1 });
  // Reading never moves backwards.
  alice1.send({ type: "read", room: "lobby", id: 1 });
  assert.deepEqual(await alice2.next(isType("read")), { type: "read", room: "lobby", id: 3 });

  await ping(bob);
  assert.deepEqual(bob.queued.filter(isType("read")), [], "bob saw alice's read state");

  await using alice3 = await TestClient.connect(srv.origin, "alice");
  const welcome = await alice3.next(isType("welcome"));
  assert.deepEqual(welcome.conversations, [
    { room: "lobby", last: 3, read: 3, unread: 0 },
    { with: "bob", last: 1, read: 1, unread: 0 },
  ]);
});

Deno.test("server announces presence when a user's first tab opens and last tab closes, not for other tabs", async () => {
  await using srv = await startServer();
  await using alice = await welcomed(srv.origin, "alice");
  await using bob1 = await TestClient.connect(srv.origin, "bob");
  assert.deepEqual([...(await bob1.next(isType("welcome"))).online].sort(), ["alice", "bob"]);
  assert.deepEqual(await alice.next(isType("presence")), {
    type: "presence",
    online: ["bob"],
    offline: [],
  });

  await using bob2 = await welcomed(srv.origin, "bob");
  await ping(alice);
  assert.deepEqual(alice.queued, [], "a second tab was announced");

  await bob2.close();
  await healthShows(srv.origin, { connections: 2, usersOnline: 2 });
  await ping(alice);
  assert.deepEqual(alice.queued, [], "closing one of two tabs was announced");

  await bob1.close();
  assert.deepEqual(await alice.next(isType("presence")), {
    type: "presence",
    online: [],
    offline: ["bob"],
  });
  await ping(alice);
  assert.deepEqual(alice.queued, []);
  // bob never hears about himself.
  assert.deepEqual(bob1.queued.filter(isType("presence")), []);
});

Deno.test("server answers ping with pong", async () => {
  await using srv = await startServer();
  await using alice = await welcomed(srv.origin, "alice");
  for (let i = 0; i < 3; i++) alice.send({ type: "ping" });
  for (let i = 0; i < 3; i++) assert.deepEqual(await alice.next(), { type: "pong" });
});

Deno.test("server refuses a DM to a user who never connected with unknown_user carrying the cid as ref", async () => {
  await using srv = await startServer();
  await using alice = await welcomed(srv.origin, "alice");
  alice.send({ type: "send", to: "nobody", text: "hi", cid: "q1" });
  assert.deepEqual(await alice.next(isType("error")), {
    type: "error",
    code: "unknown_user",
    message: "no user is called nobody",
    ref: "q1",
    request: { type: "send", to: "nobody" },
  });
  await ping(alice);
  alice.send({ type: "history", with: "nobody" });
  assert.deepEqual((await alice.next(isType("history"))).messages, []);
});

Deno.test("server refuses history of a room you are not in with not_member", async () => {
  await using srv = await startServer();
  await using alice = await welcomed(srv.origin, "alice");
  await using bob = await welcomed(srv.origin, "bob");
  alice.send({ type: "join", room: "secret" });
  await alice.next(isType("joined"));
  alice.send({ type: "send", room: "secret", text: "classified" });
  await alice.next(isMessage("classified"));
  bob.send({ type: "history", room: "secret" });
  assert.deepEqual(await bob.next(isType("error")), {
    type: "error",
    code: "not_member",
    message: "join secret to read it",
    request: { type: "history", room: "secret" },
  });
  bob.send({ type: "read", room: "secret", id: 1 });
  assert.equal((await bob.next(isType("error"))).code, "not_member");
  await ping(bob);
  assert.deepEqual(bob.queued, []);
});

Deno.test("server keeps a DM for an offline user, delivers it from history and counts it unread in the next welcome", async () => {
  await using srv = await startServer();
  {
    await using _bob = await welcomed(srv.origin, "bob");
  }
  await healthShows(srv.origin, { connections: 0, usersOnline: 0 });
  await using alice = await welcomed(srv.origin, "alice");
  alice.send({ type: "send", to: "bob", text: "while you were out", cid: "o1" });
  const ack = await alice.next(isMessage("while you were out"));
  assert.equal(ack.id, 1);

  await using bob = await TestClient.connect(srv.origin, "bob");
  const welcome = await bob.next(isType("welcome"));
  assert.deepEqual(welcome.conversations, [
    { room: "lobby", last: 0, read: 0, unread: 0 },
    { with: "alice", last: 1, read: 0, unread: 1 },
  ]);
  bob.send({ type: "history", with: "alice" });
  const history = await bob.next(isType("history"));
  const { type: _type, ...stored } = ack;
  assert.deepEqual(history, { type: "history", with: "alice", messages: [stored], more: false });
  await ping(bob);
  assert.deepEqual(bob.queued.filter(isType("message")), [], "delivered live as well");
});

// ---------------------------------------------------------------------------
// The original page's protocol (no subprotocol)

Deno.test("server passes a legacy DM to a legacy recipient in the original shape and to a chat.v1 user as a message", async () => {
  await using srv = await startServer();
  await using alice = await legacy(srv.origin, "alice");
  await using bob = await legacy(srv.origin, "bob");
  // A chat.v1 user's name is claimed: the original page cannot share it (issue 9).
  await using carol = await welcomed(srv.origin, "carol");
  alice.send(JSON.stringify({ to_user: "bob", msg: "hi" }));
  const old = await bob.next(isLegacy("hi"));
  assert.deepEqual(withoutTs(old), { from_user: "alice", to_user: "bob", msg: "hi", id: 1 });
  assert.equal(old.type, undefined);
  alice.send(JSON.stringify({ to_user: "carol", msg: "hi carol" }));
  assert.deepEqual(withoutTs(await carol.next(isMessage("hi carol"))), {
    type: "message",
    id: 1,
    to: "carol",
    from: "alice",
    text: "hi carol",
  });
  // No echo to a legacy sender: the original page shows its own line itself.
  await legacySync(alice);
  assert.deepEqual(alice.queued, []);
});

Deno.test("server passes a chat.v1 DM to a legacy recipient as {from_user, to_user, msg}", async () => {
  await using srv = await startServer();
  await using bob = await legacy(srv.origin, "bob");
  await using alice = await welcomed(srv.origin, "alice");
  alice.send({ type: "send", to: "bob", text: "yo <i>bob</i>", cid: "n1" });
  assert.equal((await alice.next(isMessage("yo <i>bob</i>"))).cid, "n1");
  assert.deepEqual(withoutTs(await bob.next(isLegacy("yo <i>bob</i>"))), {
    from_user: "alice",
    to_user: "bob",
    msg: "yo <i>bob</i>",
    id: 1,
  });
});

Deno.test("server sends a legacy lobby message to every lobby member, in each one's protocol", async () => {
  await using srv = await startServer();
  await using alice = await legacy(srv.origin, "alice");
  await using bob = await legacy(srv.origin, "bob");
  await using carol = await welcomed(srv.origin, "carol");
  alice.send(JSON.stringify({ msg: "hi" }));
  assert.deepEqual(withoutTs(await bob.next(isLegacy("hi"))), {
    from_user: "alice",
    msg: "hi",
    room: "lobby",
    id: 1,
  });
  assert.deepEqual(withoutTs(await carol.next(isMessage("hi"))), {
    type: "message",
    id: 1,
    room: "lobby",
    from: "alice",
    text: "hi",
  });
  // The original page sends an empty recipient box as "".
  alice.send(JSON.stringify({ to_user: "", msg: "to all" }));
  assert.equal((await bob.next(isLegacy("to all"))).room, "lobby");
  assert.equal((await carol.next(isMessage("to all"))).id, 2);
  // A chat.v1 lobby message reaches legacy users too.
  carol.send({ type: "send", room: "lobby", text: "from carol" });
  assert.deepEqual(withoutTs(await alice.next(isLegacy("from carol"))), {
    from_user: "carol",
    msg: "from carol",
    room: "lobby",
    id: 3,
  });
  await legacySync(alice);
  assert.deepEqual(alice.queued, [], "legacy sender got an echo or a chat.v1-only frame");
});

Deno.test("server gives legacy clients only message objects: no welcome, presence, typing or joins", async () => {
  await using srv = await startServer();
  await using old = await legacy(srv.origin, "old");
  await using alice = await welcomed(srv.origin, "alice");
  alice.send({ type: "typing", room: "lobby" });
  alice.send({ type: "join", room: "rust" });
  await alice.next(isType("joined"));
  alice.send({ type: "send", room: "rust", text: "not for the lobby" });
  await alice.next(isMessage("not for the lobby"));
  alice.send({ type: "typing", to: "old" });
  alice.send({ type: "send", room: "lobby", text: "marker" });
  await old.next(isLegacy("marker"));
  await alice.close();
  await healthShows(srv.origin, { connections: 1, usersOnline: 1 });
  await legacySync(old);
  assert.deepEqual(old.queued, []);
});

Deno.test("server answers a legacy DM to an unknown user with an error from '*' and keeps the connection", async () => {
  await using srv = await startServer();
  await using alice = await legacy(srv.origin, "alice");
  await using carol = await welcomed(srv.origin, "carol");
  alice.send(JSON.stringify({ to_user: "ghost", msg: "boo" }));
  const err = await alice.next(isType("error"));
  assert.deepEqual(err, {
    type: "error",
    code: "unknown_user",
    message: "no user is called ghost",
    from_user: "*",
    msg: "⚠ no user is called ghost",
  });
  for (
    const [raw, code] of [
      ["not json", "bad_frame"],
      [JSON.stringify({ to_user: "a b", msg: "x" }), "bad_name"],
      [JSON.stringify({ msg: "x".repeat(4001) }), "too_large"],
      ['{"__proto__":{"msg":"inherited"}}', "bad_frame"],
    ]
  ) {
    alice.send(raw);
    const e = await alice.next(isType("error"));
    assert.equal(e.code, code, raw.slice(0, 40));
    assert.equal(e.from_user, "*");
  }
  alice.send(JSON.stringify({ msg: "still here" }));
  assert.equal((await carol.next(isMessage("still here"))).from, "alice");
  await ping(carol);
  assert.deepEqual(carol.queued, [], "carol saw the rejected frames");
});

/** For a legacy client: a round trip through its frame queue, so what was sent before has arrived. */
async function legacySync(client: TestClient): Promise<void> {
  client.send({ msg: "" });
  const err = await client.next(isType("error"));
  assert.equal(err.code, "bad_frame");
  assert.equal(err.from_user, "*");
}

// ---------------------------------------------------------------------------
// Bad input over real sockets

type BadCase = {
  label: string;
  frame: string | Uint8Array<ArrayBuffer>;
  /** The error frame expected back (its message need only match). */
  error: { code: string; message: RegExp; ref?: string; request?: Frame };
};

const deepArrays = "[".repeat(60_000);

/** A send whose frame is exactly `maxFrameBytes` long: accepted as a frame, too long as text. */
function exactly64KiB(): string {
  const base = '{"type":"send","room":"lobby","text":""}';
  return base.replace('""', `"${"y".repeat(64 * 1024 - base.length)}"`);
}

const BAD_FRAMES: BadCase[] = [
  { label: "non-JSON text", frame: "hello?", error: { code: "bad_frame", message: /JSON object/ } },
  { label: "a JSON array", frame: "[1,2]", error: { code: "bad_frame", message: /JSON object/ } },
  { label: "a JSON number", frame: "42", error: { code: "bad_frame", message: /JSON object/ } },
  { label: "JSON null", frame: "null", error: { code: "bad_frame", message: /JSON object/ } },
  { label: "a JSON string", frame: '"ping"', error: { code: "bad_frame", message: /JSON/ } },
  { label: "an object without a type", frame: "{}", error: { code: "bad_frame", message: /type/ } },
  {
    label: "a numeric type",
    frame: '{"type":7}',
    error: { code: "bad_frame", message: /string type/ },
  },
  {
    label: "an unknown type",
    frame: '{"type":"dance"}',
    error: { code: "unknown_type", message: /unknown frame type: dance/ },
  },
  {
    label: "send without text",
    frame: '{"type":"send","room":"lobby","cid":"t1"}',
    error: { code: "bad_frame", message: /text must be a string/, ref: "t1" },
  },
  {
    label: "send with a numeric text",
    frame: '{"type":"send","room":"lobby","text":5,"cid":"t2"}',
    error: { code: "bad_frame", message: /text must be a string/, ref: "t2" },
  },
  {
    label: "send with both room and to",
    frame: '{"type":"send","room":"lobby","to":"bob","text":"x","cid":"t3"}',
    error: { code: "bad_frame", message: /exactly one of room or to/, ref: "t3" },
  },
  {
    label: "send with neither room nor to",
    frame: '{"type":"send","text":"x"}',
    error: { code: "bad_frame", message: /exactly one of room or to/ },
  },
  {
    label: "send with a blank text",
    frame: '{"type":"send","room":"lobby","text":" \\n\\t ","cid":"t4"}',
    error: { code: "bad_frame", message: /must not be blank/, ref: "t4" },
  },
  {
    label: "send with a 4001-character text",
    frame: JSON.stringify({ type: "send", room: "lobby", text: "x".repeat(4001), cid: "big" }),
    error: { code: "too_large", message: /at most 4000/, ref: "big" },
  },
  {
    label: "send with a numeric cid",
    frame: '{"type":"send","room":"lobby","text":"x","cid":5}',
    error: { code: "bad_frame", message: /cid/ },
  },
  {
    label: "send with a 65-character cid",
    frame: JSON.stringify({ type: "send", room: "lobby", text: "x", cid: "c".repeat(65) }),
    error: { code: "bad_frame", message: /cid/ },
  },
  {
    label: "send to a name with a slash",
    frame: '{"type":"send","to":"a/b","text":"x"}',
    error: { code: "bad_name", message: /^to: / },
  },
  {
    label: "join of a room named with a space",
    frame: '{"type":"join","room":"no spaces"}',
    error: { code: "bad_name", message: /^room: / },
  },
  {
    label: "leave of the lobby",
    frame: '{"type":"leave","room":"lobby"}',
    error: { code: "bad_frame", message: /lobby/, request: { type: "leave", room: "lobby" } },
  },
  {
    label: "history with limit 0",
    frame: '{"type":"history","room":"lobby","limit":0}',
    error: { code: "bad_frame", message: /limit/ },
  },
  {
    label: "history with a fractional before",
    frame: '{"type":"history","room":"lobby","before":1.5}',
    error: { code: "bad_frame", message: /before/ },
  },
  {
    label: "read without an id",
    frame: '{"type":"read","room":"lobby"}',
    error: { code: "bad_frame", message: /id/ },
  },
  {
    label: "an inherited type under __proto__",
    frame: '{"__proto__":{"type":"ping"}}',
    error: { code: "bad_frame", message: /string type/ },
  },
  {
    label: "send fields only under __proto__",
    frame: '{"type":"send","__proto__":{"room":"lobby","text":"x"}}',
    error: { code: "bad_frame", message: /exactly one of room or to/ },
  },
  {
    label: "type __proto__",
    frame: '{"type":"__proto__"}',
    error: { code: "unknown_type", message: /__proto__/ },
  },
  {
    label: "type constructor",
    frame: '{"type":"constructor"}',
    error: { code: "unknown_type", message: /constructor/ },
  },
  {
    label: "a binary frame",
    frame: new Uint8Array([123, 34, 116, 121, 112, 101, 34, 58, 34, 112, 105, 110, 103, 34, 125]),
    error: { code: "binary_unsupported", message: /text frames/ },
  },
  {
    label: "60 000 unclosed [ (deep nesting)",
    frame: deepArrays,
    error: { code: "bad_frame", message: /JSON object/ },
  },
  {
    label: "30 000 levels of nested arrays, closed",
    frame: "[".repeat(30_000) + "]".repeat(30_000),
    error: { code: "bad_frame", message: /JSON object/ },
  },
  {
    label: "a frame of exactly 64 KiB",
    frame: exactly64KiB(),
    error: { code: "too_large", message: /at most 4000/ },
  },
];

for (const c of BAD_FRAMES) {
  Deno.test(`server answers ${c.label} with ${c.error.code} and both connections keep working`, async () => {
    if (typeof c.frame === "string" && c.label.includes("64 KiB")) {
      assert.equal(new TextEncoder().encode(c.frame).length, 64 * 1024);
    }
    await using srv = await startServer();
    await using alice = await welcomed(srv.origin, "alice");
    await using bob = await welcomed(srv.origin, "bob");
    await alice.next(isPresence("bob", true));
    alice.send(c.frame);
    const err = await alice.next(isType("error"));
    const { message, ...rest } = err;
    const expected: Frame = { type: "error", code: c.error.code };
    if (c.error.ref !== undefined) expected.ref = c.error.ref;
    if (c.error.request !== undefined) expected.request = c.error.request;
    assert.deepEqual(rest, expected);
    assert.match(message, c.error.message);
    await ping(alice);
    alice.send({ type: "send", room: "lobby", text: "after", cid: "after" });
    const ack = await alice.next(isMessage("after"));
    assert.equal(ack.id, 1, "the bad frame was stored");
    assert.deepEqual(await bob.next(isMessage("after")), ack);
    bob.send({ type: "send", to: "alice", text: "still there?" });
    const dm = await bob.next(isMessage("still there?"));
    assert.deepEqual(await alice.next(isMessage("still there?")), dm);
    await ping(bob);
    assert.deepEqual(alice.queued, [], "more than one answer");
    assert.deepEqual(bob.queued, [], "bob saw something of the bad frame");
    assert.deepEqual(await health(srv.origin), {
      ok: true,
      version: VERSION,
      connections: 2,
      usersOnline: 2,
      store: "ok",
    });
  });
}

Deno.test("server ignores spoofed from, id and ts and __proto__/constructor keys in a send: it sets them itself", async () => {
  await using srv = await startServer();
  await using alice = await welcomed(srv.origin, "alice");
  await using bob = await welcomed(srv.origin, "bob");
  alice.send(
    '{"type":"send","room":"lobby","text":"spoof","cid":"p1","from":"mallory","id":999,' +
      '"ts":1,"to_user":"x","from_user":"mallory","__proto__":{"from":"evil","admin":true},' +
      '"constructor":{"prototype":{"from":"evil"}}}',
  );
  const ack = await alice.next(isMessage("spoof"));
  assert.deepEqual(withoutTs(ack), {
    type: "message",
    id: 1,
    room: "lobby",
    from: "alice",
    text: "spoof",
    cid: "p1",
  });
  assert.deepEqual(await bob.next(isMessage("spoof")), ack);
  alice.send({ type: "history", room: "lobby" });
  const { type: _type, ...stored } = ack;
  assert.deepEqual((await alice.next(isType("history"))).messages, [stored]);
  assert.equal(({} as Record<string, unknown>).admin, undefined);
});

Deno.test("server treats rooms named __proto__ and constructor as ordinary rooms", async () => {
  await using srv = await startServer();
  await using alice = await welcomed(srv.origin, "alice");
  await using bob = await welcomed(srv.origin, "bob");
  for (const room of ["__proto__", "constructor", "hasOwnProperty"]) {
    bob.send({ type: "send", room, text: "early" });
    assert.equal((await bob.next(isType("error"))).code, "not_member", room);
    alice.send({ type: "join", room });
    // Room names are case folded like usernames (issue 9): hasOwnProperty is hasownproperty.
    const canonical = room.toLowerCase();
    assert.deepEqual(await alice.next(isType("joined")), {
      type: "joined",
      room: canonical,
      user: "alice",
    });
    alice.send({ type: "send", room, text: `in ${room}` });
    const ack = await alice.next(isMessage(`in ${room}`));
    assert.equal(ack.id, 1, room);
    assert.equal(ack.room, canonical);
  }
  await ping(bob);
  assert.deepEqual(bob.queued, []);
  await using alice2 = await TestClient.connect(srv.origin, "alice");
  assert.deepEqual(
    [...(await alice2.next(isType("welcome"))).rooms].sort(),
    ["__proto__", "constructor", "hasownproperty", "lobby"],
  );
});

const TOO_BIG: Array<[label: string, frame: () => string | Uint8Array<ArrayBuffer>]> = [
  ["a text frame of 64 KiB + 1 byte", () => "x".repeat(64 * 1024 + 1)],
  ["a text frame of 22 000 CJK characters (66 000 bytes)", () => "中".repeat(22_000)],
  ["a binary frame of 64 KiB + 1 byte", () => new Uint8Array(64 * 1024 + 1)],
];

// Behind the guard, lib/websocket.ts bounds the message before it is read; with
// `Deno.upgradeWebSocket` (Deno Deploy: no guard), the connection checks it once Deno has it.
for (const guard of [true, false]) {
  for (const [label, frame] of TOO_BIG) {
    const how = guard ? "" : " with Deno.upgradeWebSocket (as on Deno Deploy)";
    Deno.test(`server closes a connection with 1009 for ${label}${how}, and others are unaffected`, async () => {
      // Presence batches a fifth of a second apart: the test waits for two of them.
      await using srv = await startServer({ settings: { fanoutInterval: 0.2 }, guard });
      await using alice = await welcomed(srv.origin, "alice");
      await using bob = await welcomed(srv.origin, "bob");
      await using carol = await welcomed(srv.origin, "carol");
      // Seen online first: an arrival and departure within one interval cancel out.
      await alice.next(isPresence("carol", true));
      carol.send(frame());
      const closed = await carol.closed;
      assert.equal(closed.code, 1009);
      assert.match(closed.reason, /65536 bytes/);
      await healthShows(srv.origin, { connections: 2, usersOnline: 2 });
      assert.deepEqual(
        await alice.next(isPresence("carol", false)),
        { type: "presence", online: [], offline: ["carol"] },
      );
      await ping(alice);
      alice.send({ type: "send", room: "lobby", text: "after", cid: "a" });
      const ack = await alice.next(isMessage("after"));
      assert.equal(ack.id, 1);
      assert.deepEqual(await bob.next(isMessage("after")), ack);
      assert.deepEqual(carol.queued.filter(isType("message")), []);
      assert.equal((await health(srv.origin)).ok, true);
    });
  }
}
