/**
 * A newcomer's first contact, over real sockets on loopback: the original
 * page's protocol from any origin, a socket that is reachable the moment it
 * opens, every standard client's way of listing subprotocols, and read
 * positions that start where the newcomer arrived.
 */

import assert from "node:assert/strict";
// @ts-types="npm:@types/ws@8"
import NodeWebSocket from "npm:ws@8";
import { type Frame, TestClient } from "./_client.ts";
import { HANDSHAKE, rawGet } from "./_raw.ts";
import { startServer } from "./_server.ts";
import { openStore } from "../lib/sql/open.ts";

const isType = (type: string) => (f: Frame) => f.type === type;

Deno.test("a DM sent the instant a legacy recipient's socket opens is delivered, every time of 50", async () => {
  await using server = await startServer();
  await using sender = (await TestClient.join(server.origin, "sender"))[0];
  // A fresh name each try: its registration is what used to race the first DM.
  for (let i = 0; i < 50; i++) {
    const name = `fresh${i}`;
    await using recipient = await TestClient.connect(server.origin, name, { protocol: null });
    sender.send({ type: "send", to: name, text: `hi ${i}`, cid: `c${i}` });
    const outcome = await sender.next((f) =>
      (f.type === "message" && f.cid === `c${i}`) || (f.type === "error" && f.ref === `c${i}`)
    );
    assert.equal(outcome.type, "message", `try ${i}: ${JSON.stringify(outcome)}`);
    const got = await recipient.next((f) => f.msg === `hi ${i}`);
    assert.equal(got.from_user, "sender");
  }
});

Deno.test("a DM sent the instant a chat.v1 recipient's socket opens arrives right after its welcome, every time of 50", async () => {
  await using server = await startServer();
  await using sender = (await TestClient.join(server.origin, "sender"))[0];
  for (let i = 0; i < 50; i++) {
    const name = `newv1${i}`;
    await using recipient = await TestClient.connect(server.origin, name, { token: null });
    sender.send({ type: "send", to: name, text: `hi ${i}`, cid: `v${i}` });
    const outcome = await sender.next((f) =>
      (f.type === "message" && f.cid === `v${i}`) || (f.type === "error" && f.ref === `v${i}`)
    );
    assert.equal(outcome.type, "message", `try ${i}: ${JSON.stringify(outcome)}`);
    const first = await recipient.next();
    assert.equal(first.type, "welcome", `try ${i}: the welcome comes first`);
    const got = await recipient.next((f) => f.type === "message");
    assert.equal(got.text, `hi ${i}`, `try ${i}`);
  }
});

Deno.test("the original page's protocol connects from any origin, a file's null included; chat.v1 and logins only from the allowlist", async () => {
  await using server = await startServer();
  // Raw handshakes: a browser's Origin header, which fetch and Deno's WebSocket would not send.
  for (const origin of ["null", "http://127.0.0.1:1", "https://static.example"]) {
    const legacy = await rawGet(server.port, "/ws/visitor", { ...HANDSHAKE, origin });
    assert.equal(legacy.status, 101, `legacy from ${origin}: ${legacy.body}`);
    assert.equal(legacy.headers.get("sec-websocket-protocol"), null);
    const v1 = await rawGet(server.port, "/ws/visitor", {
      ...HANDSHAKE,
      origin,
      "sec-websocket-protocol": "chat.v1",
    });
    assert.equal(v1.status, 403, `chat.v1 from ${origin}`);
    assert.match(v1.body, /--allow-origin/);
  }
  const login = await fetch(`${server.origin}/api/login`, {
    method: "POST",
    headers: { origin: "https://static.example", "content-type": "application/json" },
    body: JSON.stringify({ user: "visitor", password: "whatever" }),
  });
  assert.equal(login.status, 403);
  await login.body?.cancel();
});

/** A name's token, claimed by a first chat.v1 connection. */
async function claim(origin: string, user: string): Promise<string> {
  await using first = await TestClient.connect(origin, user, { token: null });
  const welcome = await first.next(isType("welcome"));
  assert.equal(typeof welcome.token, "string");
  return welcome.token;
}

Deno.test("a subprotocol list is read as RFC 9110 lists it: ws's a,b, browsers' and Python's a, b, and other spacing", async () => {
  await using server = await startServer();
  const token = await claim(server.origin, "alice");
  const lists = [
    `chat.v1,token.${token}`, // Node's ws
    `chat.v1, token.${token}`, // browsers, Python's websockets
    `token.${token} ,  chat.v1`,
    `chat.v1,\ttoken.${token}`,
  ];
  for (const list of lists) {
    const res = await rawGet(server.port, "/ws/alice", {
      ...HANDSHAKE,
      "sec-websocket-protocol": list,
    });
    assert.equal(res.status, 101, `${JSON.stringify(list)}: ${res.body}`);
    assert.equal(res.headers.get("sec-websocket-protocol"), "chat.v1");
  }
});

Deno.test("a Node client (npm:ws) presents its token and is welcomed as its name", async () => {
  await using server = await startServer();
  const token = await claim(server.origin, "alice");
  const socket = new NodeWebSocket(`${server.origin.replace("http", "ws")}/ws/alice`, [
    "chat.v1",
    `token.${token}`,
  ]);
  const closed = new Promise<number>((resolve) => socket.on("close", (code) => resolve(code)));
  try {
    const welcome = await new Promise<Frame>((resolve, reject) => {
      socket.on("message", (data) => {
        const frame = JSON.parse(String(data));
        if (frame.type === "welcome") resolve(frame);
      });
      socket.on("error", reject);
      socket.on("unexpected-response", (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    });
    assert.equal(socket.protocol, "chat.v1");
    assert.equal(welcome.user, "alice");
    assert.equal(welcome.token, undefined, "no new token: it presented its own");
  } finally {
    socket.close();
    await closed;
  }
});

Deno.test("a handshake the upgrade refuses is answered 400 with why, and claims no name", async () => {
  await using server = await startServer();
  // Everything a handshake needs but its key.
  const { "sec-websocket-key": _key, ...withoutKey } = HANDSHAKE;
  const res = await rawGet(server.port, "/ws/newbie", {
    ...withoutKey,
    "sec-websocket-protocol": "chat.v1",
  });
  assert.equal(res.status, 400, res.body);
  assert.match(res.body, /not a valid WebSocket handshake/);
  // The name is still free: the next proper handshake claims it and gets its token.
  await using newbie = await TestClient.connect(server.origin, "newbie", { token: null });
  const welcome = await newbie.next(isType("welcome"));
  assert.equal(typeof welcome.token, "string");
});

/** The summary of one conversation in a welcome. */
function summary(welcome: Frame, ref: { room: string } | { with: string }): Frame {
  const found = welcome.conversations.find((c: Frame) =>
    "room" in ref ? c.room === ref.room : c.with === ref.with
  );
  assert.ok(found, `no ${JSON.stringify(ref)} in ${JSON.stringify(welcome.conversations)}`);
  return found;
}

Deno.test("a newcomer starts read up to the latest message of the lobby and of each room they join; unread counts what came after", async () => {
  await using server = await startServer();
  await using alice = (await TestClient.join(server.origin, "alice"))[0];
  alice.send({ type: "join", room: "rust" });
  await alice.next(isType("joined"));
  for (let i = 1; i <= 11; i++) {
    alice.send({ type: "send", room: "lobby", text: `old ${i}`, cid: `l${i}` });
    alice.send({ type: "send", room: "rust", text: `old ${i}`, cid: `r${i}` });
  }
  await alice.next((f) => f.cid === "r11");

  // Bob arrives: nothing that was said before him is unread.
  const [bob, welcome] = await TestClient.join(server.origin, "bob");
  assert.deepEqual(summary(welcome, { room: "lobby" }), {
    room: "lobby",
    last: 11,
    read: 11,
    unread: 0,
  });
  bob.send({ type: "join", room: "rust" });
  await bob.next((f) => f.type === "joined" && f.user === "bob");
  await bob.close();

  // While he is away: one more in each room, and a first DM.
  alice.send({ type: "send", room: "lobby", text: "new", cid: "l12" });
  alice.send({ type: "send", room: "rust", text: "new", cid: "r12" });
  alice.send({ type: "send", to: "bob", text: "psst", cid: "d1" });
  await alice.next((f) => f.cid === "d1");

  const [again, next] = await TestClient.join(server.origin, "bob");
  await using _again = again;
  assert.deepEqual(summary(next, { room: "lobby" }), {
    room: "lobby",
    last: 12,
    read: 11,
    unread: 1,
  });
  assert.deepEqual(summary(next, { room: "rust" }), {
    room: "rust",
    last: 12,
    read: 11,
    unread: 1,
  });
  assert.deepEqual(summary(next, { with: "alice" }), {
    with: "alice",
    last: 1,
    read: 0,
    unread: 1,
  });
});

Deno.test("a refused name closes with 4003 and a reason that starts with its code", async () => {
  await using server = await startServer();
  const [alice] = await TestClient.join(server.origin, "alice");
  const refusal = async (name: string, options: Parameters<typeof TestClient.connect>[2]) => {
    const client = await TestClient.connect(server.origin, name, options);
    const closed = await client.closed;
    assert.equal(closed.code, 4003, closed.reason);
    return closed.reason;
  };
  assert.match(await refusal("alice", { token: null }), /^taken_no_password: alice is taken/);
  assert.match(await refusal("alice", { token: "A".repeat(43) }), /^bad_token: /);
  assert.match(await refusal("alice", { protocol: null }), /^claimed_legacy: /);
  assert.match(
    await refusal("\u0430lice", { token: null }),
    /^lookalike: too much like the name alice/,
  );
  alice.send({ type: "set_password", password: "correct horse battery" });
  await alice.next(isType("password_set"));
  assert.match(
    await refusal("ALICE", { token: null }),
    /^taken: alice is taken; log in with its password/,
  );
  await alice.close();
});

Deno.test("a name claimed by a connection that closes before its welcome is free again, not lost to a token nobody got", async () => {
  const store = await openStore(":memory:");
  // The real store, but the welcome's reads wait until released: the socket closes meanwhile.
  const gate = Promise.withResolvers<void>();
  const held = new Proxy(store, {
    get(target, key) {
      if (key === "conversations") {
        return (...args: Parameters<typeof store.conversations>) =>
          gate.promise.then(() => target.conversations(...args));
      }
      const value = Reflect.get(target, key, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  try {
    await using server = await startServer({ store: held });
    const early = await TestClient.connect(server.origin, "dora", { token: null });
    await early.close();
    gate.resolve();
    // The give-back runs when the server sees the close; a new device may claim the name
    // from then on (before the fix: 4003 taken_no_password, for good).
    const deadline = Date.now() + 5000;
    for (;;) {
      await using again = await TestClient.connect(server.origin, "dora", { token: null });
      const welcome = await again.next(isType("welcome")).catch(() => undefined);
      if (welcome) {
        assert.equal(typeof welcome.token, "string");
        break;
      }
      const refused = await again.closed;
      assert.ok(Date.now() < deadline, `dora stayed claimed: ${refused.code} ${refused.reason}`);
    }
  } finally {
    gate.resolve();
    await store.close();
  }
});
