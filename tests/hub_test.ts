/**
 * ChatHub with fake peers: routing, membership, acknowledgement and limits,
 * without sockets. The store is real Deno KV in memory.
 */

import assert from "node:assert/strict";
import { Accounts } from "../lib/accounts.ts";
import { ChatHub, CloseCode, type Connection, type HubLimits, type Peer } from "../lib/hub.ts";
import type { SqlDatabase } from "../lib/sql/dialect.ts";
import { openStore } from "../lib/sql/open.ts";
import type { SqlStore } from "../lib/sql/store.ts";
import type { ChatMessage } from "../lib/protocol.ts";
import { type ChatStore, StoreError } from "../lib/store.ts";

type Frame = Record<string, unknown>;

/** A peer that records what it is sent and lets the test wait for frames. */
class FakePeer implements Peer {
  sent: Frame[] = [];
  /** Every frame ever sent, including those taken. */
  log: Frame[] = [];
  closedWith: { code?: number; reason?: string } | undefined;
  bufferedAmount = 0;
  /** A reader that stopped: every frame sent from now on stays queued (as a real socket's would). */
  stalled = false;
  #waiters: Array<() => void> = [];

  send(data: string): void {
    if (this.stalled) this.bufferedAmount += data.length;
    const frame = JSON.parse(data);
    this.sent.push(frame);
    this.log.push(frame);
    for (const w of this.#waiters.splice(0)) w();
  }

  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Waits until the hub closes this peer (5 s at most), and says how. */
  async closing(): Promise<{ code?: number; reason?: string }> {
    const deadline = Date.now() + 5000;
    while (!this.closedWith && Date.now() < deadline) await this.#change(deadline - Date.now());
    if (!this.closedWith) throw new Error("expected the peer to be closed within 5000 ms");
    return this.closedWith;
  }

  /** Resolves at the next frame or close, or after `ms`. */
  async #change(ms: number): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    await new Promise<void>((resolve) => {
      this.#waiters.push(resolve);
      timer = setTimeout(resolve, ms);
    });
    clearTimeout(timer);
  }

  /** Takes the first frame that matches, waiting until it arrives (5 s at most). */
  async take(match: (f: Frame) => boolean): Promise<Frame> {
    const deadline = Date.now() + 5000;
    for (;;) {
      const i = this.sent.findIndex(match);
      if (i !== -1) return this.sent.splice(i, 1)[0];
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `expected a frame matching ${match} within 5000 ms; queued: ${
            JSON.stringify(this.sent).slice(0, 2000)
          }${this.closedWith ? `, closed with ${JSON.stringify(this.closedWith)}` : ""}`,
        );
      }
      await this.#change(left);
    }
  }

  of(type: string): Frame[] {
    return this.sent.filter((f) => f.type === type);
  }
}

const LIMITS = {
  maxFrameBytes: 64 * 1024,
  maxTextLength: 4000,
  maxBufferedBytes: 1024 * 1024,
  replayLimit: 1000,
  maxRoomsPerUser: 100,
  sendRate: 100_000,
  sendBurst: 100_000,
};

async function withHub(
  fn: (
    hub: ChatHub,
    open: (user: string, legacy?: boolean, session?: string) => Promise<[FakePeer, Connection]>,
  ) => Promise<void>,
  options: { store?: ChatStore & { db: SqlDatabase }; limits?: Partial<HubLimits> } = {},
): Promise<void> {
  const kv = options.store ?? await openStore(":memory:");
  const hub = new ChatHub({
    store: kv,
    accounts: new Accounts(kv.db, { iterations: 1000 }),
    limits: { ...LIMITS, ...options.limits },
  });
  const conns: Connection[] = [];
  const open = async (
    user: string,
    legacy = false,
    session?: string,
  ): Promise<[FakePeer, Connection]> => {
    const peer = new FakePeer();
    const conn = hub.connect(peer, { user, legacy, session });
    conns.push(conn);
    await conn.ready;
    return [peer, conn];
  };
  try {
    await fn(hub, open);
  } finally {
    for (const c of conns) c.close();
    await hub.shutdown();
    await kv.close();
  }
}

const send = (conn: Connection, frame: Frame) => conn.receive(JSON.stringify(frame));
const isMessage = (text: string) => (f: Frame) => f.type === "message" && f.text === text;

Deno.test("ChatHub welcomes a user with the lobby, who is online, and the limits", async () => {
  await withHub(async (_hub, open) => {
    const [alice] = await open("alice");
    const [bob] = await open("bob");
    const welcome = await bob.take((f) => f.type === "welcome");
    assert.equal(welcome.user, "bob");
    assert.deepEqual(welcome.rooms, ["lobby"]);
    assert.deepEqual(new Set(welcome.online as string[]), new Set(["alice", "bob"]));
    assert.deepEqual(welcome.limits, {
      maxTextLength: 4000,
      maxFrameBytes: 64 * 1024,
      replayLimit: 1000,
    });
    assert.deepEqual(await alice.take((f) => f.type === "presence"), {
      type: "presence",
      online: ["bob"],
      offline: [],
    });
  });
});

Deno.test("ChatHub delivers a lobby message to everyone, the sender's copy acknowledging its cid", async () => {
  await withHub(async (_hub, open) => {
    const [alice, a] = await open("alice");
    const [bob] = await open("bob");
    send(a, { type: "send", room: "lobby", text: "hello", cid: "c1" });
    const ack = await alice.take(isMessage("hello"));
    const got = await bob.take(isMessage("hello"));
    assert.equal(ack.cid, "c1");
    assert.equal(ack.id, 1);
    assert.equal(ack.from, "alice");
    assert.equal(ack.room, "lobby");
    assert.deepEqual(got, ack);
  });
});

Deno.test("ChatHub delivers a DM to every tab of the recipient and of the sender, and no one else", async () => {
  await withHub(async (_hub, open) => {
    const [alice1, a1] = await open("alice");
    const [alice2] = await open("alice");
    const [bob1] = await open("bob");
    const [bob2] = await open("bob");
    const [carol] = await open("carol");
    send(a1, { type: "send", to: "bob", text: "psst", cid: "x" });
    for (const peer of [alice1, alice2, bob1, bob2]) {
      const m = await peer.take(isMessage("psst"));
      assert.equal(m.to, "bob");
      assert.equal(m.from, "alice");
    }
    // A later lobby message proves carol's queue is up to date and holds no DM.
    send(a1, { type: "send", room: "lobby", text: "after" });
    await carol.take(isMessage("after"));
    assert.equal(carol.of("message").length, 0);
  });
});

Deno.test("ChatHub refuses a DM to a name never seen with unknown_user, keeping the connection", async () => {
  await withHub(async (_hub, open) => {
    const [alice, a] = await open("alice");
    send(a, { type: "send", to: "nobody", text: "hi", cid: "q" });
    const err = await alice.take((f) => f.type === "error");
    assert.equal(err.code, "unknown_user");
    assert.equal(err.ref, "q");
    send(a, { type: "ping" });
    await alice.take((f) => f.type === "pong");
    assert.equal(alice.closedWith, undefined);
  });
});

Deno.test("ChatHub keeps a DM for an offline user and counts it unread in their next welcome", async () => {
  await withHub(async (_hub, open) => {
    const [bob, b] = await open("bob");
    b.close();
    assert.equal(bob.closedWith, undefined);
    const [alice, a] = await open("alice");
    send(a, { type: "send", to: "bob", text: "while you were out" });
    await alice.take(isMessage("while you were out"));
    const [bob2] = await open("bob");
    const welcome = await bob2.take((f) => f.type === "welcome");
    assert.deepEqual(welcome.conversations, [
      { room: "lobby", last: 0, read: 0, unread: 0 },
      { with: "alice", last: 1, read: 0, unread: 1 },
    ]);
  });
});

Deno.test("ChatHub room messages reach members only, and sending to a room you are not in is refused", async () => {
  await withHub(async (_hub, open) => {
    const [alice, a] = await open("alice");
    const [bob, b] = await open("bob");
    send(a, { type: "join", room: "rust" });
    assert.deepEqual(await alice.take((f) => f.type === "joined"), {
      type: "joined",
      room: "rust",
      user: "alice",
    });
    send(b, { type: "send", room: "rust", text: "let me in" });
    assert.equal((await bob.take((f) => f.type === "error")).code, "not_member");
    send(a, { type: "send", room: "rust", text: "members only" });
    await alice.take(isMessage("members only"));
    send(b, { type: "join", room: "rust" });
    await alice.take((f) => f.type === "joined" && f.user === "bob");
    send(b, { type: "history", room: "rust" });
    const history = await bob.take((f) => f.type === "history");
    assert.deepEqual((history.messages as ChatMessage[]).map((m) => m.text), ["members only"]);
    assert.equal(bob.of("message").length, 0, "bob was not a member when it was sent");
  });
});

Deno.test("ChatHub relays typing to the others in a room, never to the typist, and stores nothing", async () => {
  await withHub(async (_hub, open) => {
    const [alice, a] = await open("alice");
    const [bob] = await open("bob");
    send(a, { type: "typing", room: "lobby" });
    assert.deepEqual(await bob.take((f) => f.type === "typing"), {
      type: "typing",
      room: "lobby",
      from: "alice",
    });
    send(a, { type: "history", room: "lobby" });
    assert.deepEqual((await alice.take((f) => f.type === "history")).messages, []);
    assert.equal(alice.of("typing").length, 0);
  });
});

Deno.test("ChatHub pages history oldest first with more=true until the start", async () => {
  await withHub(async (_hub, open) => {
    const [alice, a] = await open("alice");
    for (let i = 1; i <= 5; i++) send(a, { type: "send", room: "lobby", text: `m${i}` });
    await alice.take(isMessage("m5"));
    send(a, { type: "history", room: "lobby", limit: 2 });
    const newest = await alice.take((f) => f.type === "history");
    assert.deepEqual((newest.messages as ChatMessage[]).map((m) => m.id), [4, 5]);
    assert.equal(newest.more, true);
    send(a, { type: "history", room: "lobby", before: 2, limit: 2 });
    const oldest = await alice.take((f) => f.type === "history");
    assert.deepEqual((oldest.messages as ChatMessage[]).map((m) => m.text), ["m1"]);
    assert.equal(oldest.more, false);
  });
});

Deno.test("ChatHub keeps one sender's messages in order with consecutive ids", async () => {
  await withHub(async (_hub, open) => {
    const [alice, a] = await open("alice");
    const [bob] = await open("bob");
    for (let i = 0; i < 300; i++) send(a, { type: "send", room: "lobby", text: `n${i}` });
    await alice.take(isMessage("n299"));
    await bob.take(isMessage("n299"));
    const seen = [...bob.of("message")];
    assert.equal(seen.length, 299);
    seen.forEach((m, i) => {
      assert.equal(m.text, `n${i}`);
      assert.equal(m.id, i + 1);
    });
  });
});

Deno.test("ChatHub answers bad frames with an error frame and keeps serving", async () => {
  await withHub(async (_hub, open) => {
    const [alice, a] = await open("alice");
    const cases: Array<[string, string]> = [
      ["not json", "bad_frame"],
      ["[1,2]", "bad_frame"],
      [JSON.stringify({ type: "dance" }), "unknown_type"],
      [JSON.stringify({ type: "send", room: "lobby" }), "bad_frame"],
      [JSON.stringify({ type: "send", room: "lobby", text: "x".repeat(4001) }), "too_large"],
      [JSON.stringify({ type: "join", room: "no spaces" }), "bad_name"],
    ];
    for (const [raw, code] of cases) {
      a.receive(raw);
      assert.equal((await alice.take((f) => f.type === "error")).code, code, raw.slice(0, 40));
    }
    a.receive(new Uint8Array([1, 2, 3]));
    assert.equal((await alice.take((f) => f.type === "error")).code, "binary_unsupported");
    send(a, { type: "send", room: "lobby", text: "still here" });
    await alice.take(isMessage("still here"));
  });
});

Deno.test("ChatHub closes a connection with 1009 for a frame over the limit", async () => {
  await withHub(async (_hub, open) => {
    const [alice, a] = await open("alice");
    a.receive("x".repeat(LIMITS.maxFrameBytes + 1));
    assert.equal(alice.closedWith?.code, CloseCode.TooBig);
    assert.equal(a.closed, true);
  });
});

Deno.test("ChatHub disconnects a client that stopped reading instead of buffering without bound", async () => {
  await withHub(async (_hub, open) => {
    const [slow] = await open("slow");
    const [alice, a] = await open("alice");
    slow.stalled = true;
    // Enough to pass the limit twice over; the loop ends once it is passed.
    const text = "x".repeat(LIMITS.maxTextLength);
    const most = Math.ceil((2 * LIMITS.maxBufferedBytes) / text.length);
    for (let i = 0; i < most && !slow.closedWith; i++) {
      send(a, { type: "send", room: "lobby", text });
      await alice.take(isMessage(text));
    }
    assert.equal(slow.closedWith?.code, CloseCode.SlowConsumer);
    // Closed soon after the limit, not at the end of the flood.
    assert.ok(slow.bufferedAmount <= LIMITS.maxBufferedBytes + 2 * text.length);
  });
});

Deno.test("ChatHub leaves idempotently: a second close changes nothing", async () => {
  await withHub(async (hub, open) => {
    const [, a1] = await open("alice");
    await open("alice");
    const [bob] = await open("bob");
    a1.close();
    a1.close();
    assert.deepEqual(hub.stats, { connections: 2, usersOnline: 2 });
    assert.equal(
      bob.sent.filter((f) => f.type === "presence" && (f.offline as string[]).length > 0).length,
      0,
    );
  });
});

Deno.test("ChatHub speaks the original protocol to legacy clients", async () => {
  await withHub(async (_hub, open) => {
    const [old1, o1] = await open("old1", true);
    const [old2] = await open("old2", true);
    const [modern] = await open("modern");
    o1.receive(JSON.stringify({ to_user: "old2", msg: "hi" }));
    const dm = await old2.take((f) => f.msg === "hi");
    assert.equal(dm.from_user, "old1");
    assert.equal(dm.to_user, "old2");
    o1.receive(JSON.stringify({ msg: "all" }));
    assert.deepEqual(
      { ...(await modern.take(isMessage("all"))), ts: 0 },
      { type: "message", id: 1, room: "lobby", from: "old1", text: "all", ts: 0 },
    );
    const lobby = await old2.take((f) => f.msg === "all");
    assert.equal(lobby.room, "lobby");
    assert.equal(old1.sent.filter((f) => f.msg === "all").length, 0, "no echo to a legacy sender");
    o1.receive(JSON.stringify({ to_user: "ghost", msg: "boo" }));
    const err = await old1.take((f) => f.code === "unknown_user");
    assert.equal(err.from_user, "*");
    assert.equal(old1.of("welcome").length, 0, "legacy clients get no welcome");
  });
});

/** A store whose appends fail while `failing` is set, as a full disk would make them. */
class FailingStore implements ChatStore {
  failing = true;
  #inner: SqlStore;
  constructor(inner: SqlStore) {
    this.#inner = inner;
  }
  get db(): SqlDatabase {
    return this.#inner.db;
  }
  append: ChatStore["append"] = (m) =>
    this.failing ? Promise.reject(new StoreError("disk full")) : this.#inner.append(m);
  appendTo: ChatStore["appendTo"] = (m, listener) =>
    this.failing
      ? queueMicrotask(() => listener.failed(new StoreError("disk full")))
      : this.#inner.appendTo(m, listener);
  history: ChatStore["history"] = (c, o) => this.#inner.history(c, o);
  rooms: ChatStore["rooms"] = (u) => this.#inner.rooms(u);
  room: ChatStore["room"] = (r) => this.#inner.room(r);
  createRoom: ChatStore["createRoom"] = (r, i) => this.#inner.createRoom(r, i);
  join: ChatStore["join"] = (u, r) => this.#inner.join(u, r);
  joinIfAllowed: ChatStore["joinIfAllowed"] = (u, r) => this.#inner.joinIfAllowed(u, r);
  leave: ChatStore["leave"] = (u, r) => this.#inner.leave(u, r);
  invite: ChatStore["invite"] = (u, r, b) => this.#inner.invite(u, r, b);
  invites: ChatStore["invites"] = (u) => this.#inner.invites(u);
  publicRooms: ChatStore["publicRooms"] = (l) => this.#inner.publicRooms(l);
  conversations: ChatStore["conversations"] = (u, r, n) => this.#inner.conversations(u, r, n);
  dms: ChatStore["dms"] = (u, q) => this.#inner.dms(u, q);
  markRead: ChatStore["markRead"] = (u, c, i) => this.#inner.markRead(u, c, i);
  healthy = () => Promise.resolve(false);
  close = () => this.#inner.close();
}

Deno.test("ChatHub answers store_failed when a message cannot be stored, no one sees it, and it recovers", async () => {
  const store = new FailingStore(await openStore(":memory:"));
  await withHub(async (_hub, open) => {
    const [alice, a] = await open("alice");
    const [bob] = await open("bob");
    send(a, { type: "send", room: "lobby", text: "lost?", cid: "f1" });
    const err = await alice.take((f) => f.type === "error");
    assert.equal(err.code, "store_failed");
    assert.equal(err.ref, "f1");
    // It names what failed, so the page can mark that message (and not another) as failed.
    assert.deepEqual(err.request, { type: "send", room: "lobby" });
    assert.match(err.message as string, /not sent/);
    send(a, { type: "send", to: "bob", text: "lost too?", cid: "f1d" });
    const dmErr = await alice.take((f) => f.type === "error");
    assert.deepEqual([dmErr.code, dmErr.ref, dmErr.request], [
      "store_failed",
      "f1d",
      { type: "send", to: "bob" },
    ]);
    assert.equal(alice.of("message").length + bob.of("message").length, 0);
    store.failing = false;
    send(a, { type: "send", room: "lobby", text: "back", cid: "f2" });
    assert.equal((await bob.take(isMessage("back"))).id, 1, "the failed message took no id");
    assert.equal((await alice.take(isMessage("back"))).cid, "f2");
    assert.equal(alice.of("message").length + bob.of("message").length, 0);
  }, { store });
});

Deno.test("ChatHub answers store_failed to every request the store fails, naming it, and keeps the connection open", async () => {
  // The real store (and the accounts on its database) closed under the hub, as a dead disk or
  // database would leave them: every request that needs it is answered, none is left hanging,
  // none is mistaken for a bad frame.
  const store = await openStore(":memory:");
  await withHub(async (hub, open) => {
    const [alice, a] = await open("alice", false, "alice-session");
    await open("bob");
    send(a, { type: "join", room: "den" });
    await alice.take((f) => f.type === "joined" && f.room === "den");
    const resumer = new FakePeer();
    const r = hub.connect(resumer, { user: "dora", resume: true });
    await r.ready;
    await store.close();
    const asked: Array<[Frame, Frame]> = [
      [{ type: "send", room: "lobby", text: "lost?", cid: "c1" }, { type: "send", room: "lobby" }],
      [{ type: "send", to: "bob", text: "lost?", cid: "c2" }, { type: "send", to: "bob" }],
      [{ type: "join", room: "attic" }, { type: "join", room: "attic" }],
      [{ type: "leave", room: "den" }, { type: "leave", room: "den" }],
      [{ type: "create", room: "cellar" }, { type: "create", room: "cellar" }],
      [{ type: "invite", room: "den", user: "bob" }, { type: "invite", room: "den" }],
      [{ type: "rooms" }, { type: "rooms" }],
      [{ type: "history", room: "den" }, { type: "history", room: "den" }],
      [{ type: "read", room: "den", id: 1 }, { type: "read", room: "den" }],
      [{ type: "typing", to: "carol" }, { type: "typing", to: "carol" }],
      [{ type: "set_password", password: "correct horse" }, { type: "set_password" }],
      [{ type: "logout" }, { type: "logout" }],
    ];
    for (const [frame, request] of asked) {
      send(a, frame);
      const err = await alice.take((f) => f.type === "error");
      assert.deepEqual(
        [err.code, err.request, err.ref],
        ["store_failed", request, frame.cid],
        `the answer to ${JSON.stringify(frame)}`,
      );
    }
    assert.equal(alice.closedWith, undefined, "the connection stays open");
    assert.deepEqual(alice.of("error"), [], "one answer each");
    // A resume that cannot be read is not half done: the client reconnects and resumes again.
    r.receive(JSON.stringify({ type: "resume", conversations: [{ with: "erin", after: 0 }] }));
    assert.equal((await resumer.closing()).code, CloseCode.InternalError);
    r.close();
  }, { store });
});

Deno.test("ChatHub replays exactly the gap on resume, holding live messages until it is sent", async () => {
  await withHub(async (_hub, open) => {
    const [alice, a] = await open("alice");
    for (let i = 1; i <= 5; i++) send(a, { type: "send", room: "lobby", text: `m${i}` });
    await alice.take(isMessage("m5"));
    const bob = new FakePeer();
    const b = _hub.connect(bob, { user: "bob", resume: true });
    await b.ready;
    send(a, { type: "send", room: "lobby", text: "m6" });
    await alice.take(isMessage("m6"));
    assert.equal(bob.of("message").length, 0, "live traffic waits for resume");
    send(b, { type: "resume", conversations: [{ room: "lobby", after: 2 }] });
    const resumed = await bob.take((f) => f.type === "resumed");
    assert.deepEqual(resumed, {
      type: "resumed",
      room: "lobby",
      after: 2,
      from: 3,
      to: 6,
      more: false,
    });
    // m6 was stored before the resume, so the replay holds it and the held live copy is dropped.
    send(a, { type: "send", room: "lobby", text: "m7" });
    await bob.take(isMessage("m7"));
    const order = bob.log.filter((f) => f.type === "message" || f.type === "resumed");
    assert.deepEqual(order.map((f) => f.type === "resumed" ? "resumed" : f.id), [
      3,
      4,
      5,
      6,
      "resumed",
      7,
    ]);
    b.close();
  });
});

Deno.test("ChatHub caps a replay at replayLimit and says older messages remain", async () => {
  await withHub(async (hub, open) => {
    const [alice, a] = await open("alice");
    const total = hub.limits.replayLimit + 5;
    for (let i = 1; i <= total; i++) send(a, { type: "send", room: "lobby", text: `m${i}` });
    await alice.take(isMessage(`m${total}`));
    const [bob, b] = await open("bob");
    send(b, { type: "resume", conversations: [{ room: "lobby", after: 0 }] });
    const resumed = await bob.take((f) => f.type === "resumed");
    assert.deepEqual(resumed, {
      type: "resumed",
      room: "lobby",
      after: 0,
      from: 6,
      to: total,
      more: true,
    });
    assert.deepEqual(
      bob.of("message").map((m) => m.id),
      Array.from({ length: 1000 }, (_, i) => i + 6),
    );
  });
});

Deno.test("ChatHub stores a re-sent cid once and answers the re-sender with the original", async () => {
  await withHub(async (_hub, open) => {
    const [alice, a] = await open("alice");
    const [bob, b] = await open("bob");
    send(a, { type: "send", to: "bob", text: "once", cid: "same" });
    const first = await alice.take(isMessage("once"));
    await bob.take(isMessage("once"));
    a.close();
    const [alice2, a2] = await open("alice");
    send(a2, { type: "send", to: "bob", text: "once", cid: "same" });
    assert.deepEqual(await alice2.take(isMessage("once")), first);
    send(b, { type: "history", with: "alice" });
    const history = await bob.take((f) => f.type === "history");
    assert.deepEqual((history.messages as ChatMessage[]).map((m) => m.cid), ["same"]);
    assert.equal(bob.of("message").length, 0, "the re-send reached no one else");
  });
});

Deno.test("ChatHub acknowledges a re-sent cid even after newer live messages reached that tab", async () => {
  await withHub(async (_hub, open) => {
    const [alice, a] = await open("alice");
    const [, b] = await open("bob");
    send(a, { type: "send", room: "lobby", text: "mine", cid: "z" });
    const original = await alice.take(isMessage("mine"));
    a.close();
    const [alice2, a2] = await open("alice");
    send(b, { type: "send", room: "lobby", text: "newer" });
    assert.equal((await alice2.take(isMessage("newer"))).id, 2);
    send(a2, { type: "send", room: "lobby", text: "mine", cid: "z" });
    assert.deepEqual(await alice2.take(isMessage("mine")), original);
  });
});
