/**
 * The hostile-input suite: every case is one thing an attacker (mallory)
 * tries against a server where alice and bob keep secrets (a DM and a private
 * room). Each case asserts its exact outcome, then that alice and bob still
 * chat, that the server is healthy, and that mallory saw no secret.
 */

import assert from "node:assert/strict";
import { type Frame, TestClient, tokens } from "./_client.ts";
import { HANDSHAKE, rawGet, rawUpgrade, readCloseCode, writeFrame } from "./_raw.ts";
import { type InProcessServer, startServer } from "./_server.ts";
import { casesIn, HOSTILE_CLASSES } from "./_hostile.ts";
import type { Settings } from "../lib/settings.ts";

const isType = (type: string) => (f: Frame) => f.type === type;
const SECRET = "SECRET";

interface World {
  srv: InProcessServer;
  alice: TestClient;
  bob: TestClient;
  /** Mallory, signed in as herself. */
  mallory: TestClient;
  /** Every frame any of mallory's sockets received, for the leak check. */
  seen: Frame[];
  /** Opens another socket for mallory's use, recorded for the leak check. */
  connect: (
    user: string,
    options?: Parameters<typeof TestClient.connect>[2],
  ) => Promise<TestClient>;
}

interface Case {
  name: string;
  run: (w: World) => Promise<void>;
  /** Settings for this case's server, over the defaults. */
  settings?: Partial<Settings>;
}

async function errorOf(client: TestClient, frame: Frame | string): Promise<Frame> {
  client.send(frame);
  return await client.next(isType("error"));
}

/** The code the server closed `client` with; fails (naming what arrived) if it stays open. */
async function closedWith(client: TestClient): Promise<number> {
  const closed = await client.closed.catch((error) => {
    throw new Error(`expected the server to close the connection: ${error.message}`);
  });
  return closed.code;
}

const bad = (name: string, frame: Frame | string, code: string): Case => ({
  name,
  run: async ({ mallory }) => assert.equal((await errorOf(mallory, frame)).code, code),
});

/** A frame that is odd but valid: answered normally, with `check` on the answer. */
const odd = (name: string, frame: Frame, answer: string, check: (f: Frame) => void): Case => ({
  name,
  run: async ({ mallory }) => {
    mallory.send(frame);
    check(await mallory.next(isType(answer)));
  },
});

const badPath = (name: string, target: string, status: number): Case => ({
  name,
  run: async ({ srv }) => assert.equal((await rawGet(srv.port, target, HANDSHAKE)).status, status),
});

const CASES: Case[] = [
  badPath("a username with a space", "/ws/a%20b", 400),
  badPath("an empty username", "/ws/", 400),
  badPath("a 33-character username", `/ws/${"a".repeat(33)}`, 400),
  badPath("a slash smuggled as %2F", "/ws/a%2Fb", 400),
  badPath("markup as a username", "/ws/%3Cscript%3Ealert(1)%3C%2Fscript%3E", 400),
  badPath("broken percent-encoding", "/ws/%E0%A4%A", 400),
  badPath("dot-dot as a username", "/ws/..", 400),
  badPath("a NUL in the username", "/ws/a%00b", 400),
  badPath("a right-to-left override in the username", "/ws/abc%E2%80%AEgpj.exe", 400),
  badPath("a zero-width joiner in the username", "/ws/ali%E2%80%8Dce", 400),
  {
    name: "a chat.v1 handshake from a foreign origin (cross-site WebSocket hijacking)",
    run: async ({ srv }) => {
      const res = await rawGet(srv.port, "/ws/alice", {
        ...HANDSHAKE,
        "sec-websocket-protocol": "chat.v1",
        origin: "https://evil.example",
      });
      assert.equal(res.status, 403);
    },
  },
  {
    name: "an unknown subprotocol",
    run: async ({ srv }) => {
      const res = await rawGet(srv.port, "/ws/x", {
        ...HANDSHAKE,
        "sec-websocket-protocol": "chat.v9",
      });
      assert.equal(res.status, 400);
    },
  },
  {
    name: "alice's name without her token",
    run: async ({ srv, connect }) => {
      const c = await connect("alice", { token: null });
      assert.equal(await closedWith(c), 4003);
      void srv;
    },
  },
  {
    name: "alice's name with a forged token",
    run: async ({ connect }) =>
      assert.equal(await closedWith(await connect("alice", { token: "A".repeat(43) })), 4003),
  },
  {
    name: "alice's name with mallory's own token",
    run: async ({ srv, connect }) => {
      const token = tokens.get(`${srv.origin} mallory`)!;
      assert.equal(await closedWith(await connect("alice", { token })), 4003);
    },
  },
  {
    name: "ALICE in capitals without a token",
    run: async ({ connect }) =>
      assert.equal(await closedWith(await connect("ALICE", { token: null })), 4003),
  },
  {
    name: "a Cyrillic look-alike of alice",
    run: async ({ connect }) =>
      assert.equal(await closedWith(await connect("аlice", { token: null })), 4003),
  },
  {
    name: "the original page's protocol on alice's claimed name",
    run: async ({ connect }) =>
      assert.equal(await closedWith(await connect("alice", { protocol: null })), 4003),
  },
  {
    name: "a token replayed after its owner logged out everywhere",
    run: async ({ srv, connect }) => {
      const victim = await TestClient.connect(srv.origin, "victim");
      await victim.next(isType("welcome"));
      const stolen = tokens.get(`${srv.origin} victim`)!;
      victim.send({ type: "logout", everywhere: true });
      assert.equal(await closedWith(victim), 4001);
      assert.equal(await closedWith(await connect("victim", { token: stolen })), 4003);
    },
  },
  bad("text that is not JSON", "<html>", "bad_frame"),
  bad("a JSON string", '"send"', "bad_frame"),
  bad("JSON nested 30,000 deep", "[".repeat(30_000) + "]".repeat(30_000), "bad_frame"),
  bad(
    "an object nested 10,000 deep",
    '{"a":'.repeat(10_000) + "1" + "}".repeat(10_000),
    "bad_frame",
  ),
  bad("__proto__ carrying the type", '{"__proto__":{"type":"ping"}}', "bad_frame"),
  bad("an unknown type", { type: "admin" }, "unknown_type"),
  bad("a type that is an object", { type: { toString: 1 } }, "bad_frame"),
  bad(
    "4,001 characters of text",
    { type: "send", room: "lobby", text: "x".repeat(4001) },
    "too_large",
  ),
  bad(
    "a cid of 65 characters",
    { type: "send", room: "lobby", text: "x", cid: "c".repeat(65) },
    "bad_frame",
  ),
  bad("a read of id -1", { type: "read", room: "lobby", id: -1 }, "bad_frame"),
  bad(
    "a history frame with NaN in it",
    '{"type":"history","room":"lobby","before":NaN}',
    "bad_frame",
  ),
  bad("a password of 7 characters", { type: "set_password", password: "1234567" }, "bad_frame"),
  {
    name: "a constructor.prototype payload",
    run: async ({ mallory }) => {
      mallory.send({
        type: "send",
        room: "lobby",
        text: "p",
        constructor: { prototype: { polluted: 1 } },
      });
      assert.equal((await mallory.next(isType("message"))).text, "p");
      assert.equal(({} as Frame).polluted, undefined);
    },
  },
  {
    name: "spoofed from, id and ts",
    run: async ({ mallory, alice }) => {
      mallory.send({
        type: "send",
        room: "lobby",
        text: "I am alice",
        from: "alice",
        id: 1e9,
        ts: 0,
      });
      const got = await alice.next((f) => f.text === "I am alice");
      assert.deepEqual([got.from, got.id < 1e9, got.ts > 0], ["mallory", true, true]);
    },
  },
  {
    name: "control characters and bidi overrides in a message",
    run: async ({ mallory, bob }) => {
      const text = "a\u0000b\u0007c\u202ed\u2066e";
      mallory.send({ type: "send", room: "lobby", text });
      assert.equal(
        (await bob.next((f) => f.from === "mallory")).text,
        text,
        "kept verbatim, as text",
      );
    },
  },
  {
    name: "a binary frame",
    run: async ({ mallory }) => {
      mallory.send(new Uint8Array([0xde, 0xad, 0xbe, 0xef]));
      assert.equal((await mallory.next(isType("error"))).code, "binary_unsupported");
    },
  },
  {
    name: "a text frame of 64 KiB + 1",
    run: async ({ mallory }) => {
      mallory.send("x".repeat(64 * 1024 + 1));
      assert.equal(await closedWith(mallory), 1009);
    },
  },
  {
    name: "a binary frame of 1 MiB",
    run: async ({ mallory }) => {
      mallory.send(new Uint8Array(1024 * 1024));
      assert.equal(await closedWith(mallory), 1009);
    },
  },
  {
    name: "a text frame of invalid UTF-8",
    run: async ({ srv }) => {
      const conn = await rawUpgrade(srv.port, "rawmallory");
      try {
        await writeFrame(conn, 1, new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]));
        // RFC 6455: invalid UTF-8 in a text frame fails the connection. Deno's WebSocket
        // drops the TCP connection without a close frame (null); 1007 would be as good.
        const code = await readCloseCode(conn);
        assert.ok(code === null || code === 1007, `closed with ${code}`);
      } finally {
        conn.close();
      }
    },
  },
  {
    name: "history of alice and bob's DM, asked as mallory",
    run: async ({ mallory }) => {
      mallory.send({ type: "history", with: "bob" });
      assert.deepEqual((await mallory.next(isType("history"))).messages, []);
    },
  },
  bad("history of the private room", { type: "history", room: "vault" }, "not_member"),
  bad("joining the private room uninvited", { type: "join", room: "vault" }, "forbidden"),
  bad(
    "creating the private room again",
    { type: "create", room: "vault", private: false },
    "room_exists",
  ),
  bad("typing into the private room", { type: "typing", room: "vault" }, "not_member"),
  bad("sending into the private room", { type: "send", room: "vault", text: "hi" }, "not_member"),
  bad("marking the private room read", { type: "read", room: "vault", id: 1 }, "not_member"),
  bad(
    "inviting oneself into the private room",
    { type: "invite", room: "vault", user: "mallory" },
    "not_member",
  ),
  {
    name: "resuming the private room and the DM",
    run: async ({ mallory }) => {
      mallory.send({
        type: "resume",
        conversations: [{ room: "vault", after: 0 }, { with: "alice", after: 0 }],
      });
      assert.equal((await mallory.next(isType("error"))).code, "not_member");
      await mallory.next(isType("resumed"));
    },
  },
  {
    name: "listing rooms",
    run: async ({ mallory }) => {
      mallory.send({ type: "rooms" });
      assert.deepEqual((await mallory.next(isType("rooms"))).rooms, []);
    },
  },
  {
    name: "logging out everywhere (only mallory's own sessions end)",
    run: async ({ mallory, alice }) => {
      mallory.send({ type: "logout", everywhere: true });
      assert.equal(await closedWith(mallory), 4001);
      alice.send({ type: "ping" });
      await alice.next(isType("pong"));
    },
  },
  {
    name: "a flood of messages",
    run: async ({ mallory }) => {
      // A burst is accepted, the next ones refused; more refusals than a burst closes for abuse.
      for (let i = 0; i < 45; i++) {
        mallory.send({ type: "send", room: "lobby", text: `flood ${i}` });
      }
      assert.equal((await mallory.next(isType("error"))).code, "rate_limited");
      assert.equal(await closedWith(mallory), 1008);
    },
  },
  {
    name: "a flood of connections",
    settings: { connectsPerMinute: 10 },
    run: async ({ connect }) => {
      let refused = 0;
      for (let i = 0; i < 12; i++) {
        await connect(`crowd${i}`).catch(() => refused++);
      }
      // Three connections (alice, bob, mallory) came first: 7 more fit in the minute.
      assert.equal(refused, 5);
    },
  },
  odd(
    "a history page of limit 10^9",
    { type: "history", room: "lobby", limit: 1e9 },
    "history",
    (f) => {
      assert.deepEqual(f.messages, []);
    },
  ),
  odd("a room named __proto__", { type: "join", room: "__proto__" }, "joined", (f) => {
    assert.equal(f.room, "__proto__");
  }),
];

/** Sets up the victims' secrets, runs one case, and checks the aftermath. */
async function runCase(c: Case): Promise<{ leaked: number }> {
  await using srv = await startServer({ settings: { sendRate: 5, sendBurst: 20, ...c.settings } });
  const seen: Frame[] = [];
  const opened: TestClient[] = [];
  const connect = async (user: string, options: Parameters<typeof TestClient.connect>[2] = {}) => {
    const client = await TestClient.connect(srv.origin, user, options);
    client.socket.addEventListener("message", (e) => {
      if (typeof e.data === "string") seen.push(JSON.parse(e.data));
    });
    opened.push(client);
    return client;
  };
  // Everything opened is closed in `finally`, even when setup fails: a failing case must not
  // leave sockets for the sanitizer to blame on the next one.
  const victims: TestClient[] = [];
  try {
    const [alice] = await TestClient.join(srv.origin, "alice");
    victims.push(alice);
    const [bob] = await TestClient.join(srv.origin, "bob");
    victims.push(bob);
    alice.send({ type: "send", to: "bob", text: `${SECRET} dm` });
    await bob.next((f) => f.text === `${SECRET} dm`);
    alice.send({ type: "create", room: "vault", private: true });
    await alice.next(isType("joined"));
    alice.send({ type: "invite", room: "vault", user: "bob" });
    await bob.next(isType("invited"));
    bob.send({ type: "join", room: "vault" });
    await alice.next((f) => f.type === "joined" && f.user === "bob");
    alice.send({ type: "send", room: "vault", text: `${SECRET} room` });
    await bob.next((f) => f.text === `${SECRET} room`);
    const mallory = await connect("mallory");
    await mallory.next(isType("welcome"));
    await c.run({ srv, alice, bob, mallory, seen, connect });
    // Everyone else is served as before.
    alice.send({ type: "send", to: "bob", text: "after", cid: "a1" });
    await alice.next((f) => f.cid === "a1");
    await bob.next((f) => f.text === "after");
    bob.send({ type: "send", room: "vault", text: "still here", cid: "b1" });
    await alice.next((f) => f.text === "still here");
    const health = await (await fetch(`${srv.origin}/healthz`)).json();
    assert.equal(health.ok, true);
  } finally {
    const closing = await Promise.allSettled([...opened, ...victims].map((c) => c.close()));
    // Not thrown, which would hide the case's own failure; a socket left open also fails the
    // resource sanitizer for this case.
    for (const r of closing) if (r.status === "rejected") console.error(String(r.reason));
  }
  return { leaked: seen.filter((f) => JSON.stringify(f).includes(SECRET)).length };
}

Deno.test(`hostile inputs: ${CASES.length} cases, each refused exactly, no crash, no leak`, async (t) => {
  assert.ok(CASES.length >= 40, `${CASES.length} cases`);
  let crashes = 0, leaks = 0;
  // Any promise the server leaves rejected with no handler is a failure of its own.
  const rejections: unknown[] = [];
  const onRejection = (e: PromiseRejectionEvent) => {
    rejections.push(e.reason);
    e.preventDefault();
  };
  globalThis.addEventListener("unhandledrejection", onRejection);
  for (const c of CASES) {
    const ok = await t.step(c.name, async () => {
      const { leaked } = await runCase(c);
      leaks += leaked;
      assert.equal(leaked, 0, "mallory saw a secret");
    });
    if (!ok) crashes++;
  }
  globalThis.removeEventListener("unhandledrejection", onRejection);
  const others = HOSTILE_CLASSES.slice(1).map((c) => casesIn(c.file));
  console.log(
    `hostile suite: ${HOSTILE_CLASSES.length} classes, ${
      CASES.length + others.reduce((a, b) => a + b, 0)
    } cases (${CASES.length} inputs here, ${others.join(" + ")} in tests/hostile_*_test.ts); ` +
      `here ${crashes} crashes, ${leaks} leaks, ${rejections.length} unhandled rejections`,
  );
  assert.deepEqual({ crashes, leaks, rejections: rejections.map(String) }, {
    crashes: 0,
    leaks: 0,
    rejections: [],
  });
});
