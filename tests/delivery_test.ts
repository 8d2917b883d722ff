/**
 * Delivery order when the fan-out is imperfect: two servers on one store,
 * joined by a bus that loses and reorders message events as a congested or
 * partitioned network channel between instances would. The store and the
 * sockets are real; only the channel between the hubs is a test double,
 * because losing events on purpose is what it is for. Also: a resuming client
 * whose first message in a DM is not that DM's first, and a client that
 * connects with `?resume` and never sends `resume`.
 */

import assert from "node:assert/strict";
import type { Bus, BusEvent, BusHandler } from "../lib/bus.ts";
import { openStore } from "../lib/sql/open.ts";
import type { ChatMessage } from "../lib/protocol.ts";
import { StoreError } from "../lib/store.ts";
import { type Frame, TestClient } from "./_client.ts";
import { type InProcessServer, startServer } from "./_server.ts";

/** What the lossy bus does with one message event for one subscriber. */
type Fate = "deliver" | "drop" | "delay";

/**
 * A bus whose message events may be dropped or delivered late, per
 * subscriber (hub), as `fate` decides. Other events (presence, joins) always
 * arrive: they are not what these tests are about, and a lost `joined` would
 * test membership, not ordering.
 */
class LossyBus implements Bus, Disposable {
  #handlers = new Map<number, BusHandler>();
  #next = 0;
  #timers = new Set<ReturnType<typeof setTimeout>>();
  #idle: Array<() => void> = [];
  #fate: (message: ChatMessage, subscriber: number) => Fate;
  /** How many message events were dropped and delayed, so a test can tell it was tested. */
  readonly counts = { dropped: 0, delayed: 0 };

  /** Subscribers are numbered 0, 1, … in the order they subscribe (the order servers start). */
  constructor(fate: (message: ChatMessage, subscriber: number) => Fate) {
    this.#fate = fate;
  }

  publish(event: BusEvent): void {
    for (const [index, handler] of this.#handlers) {
      const fate = event.kind === "message" ? this.#fate(event.message, index) : "deliver";
      if (fate === "drop") {
        this.counts.dropped++;
      } else if (fate === "delay") {
        this.counts.delayed++;
        // Late enough that the messages published after it arrive first.
        const timer = setTimeout(() => {
          this.#timers.delete(timer);
          if (this.#handlers.get(index) === handler) handler(event);
          if (this.#timers.size === 0) { for (const w of this.#idle.splice(0)) w(); }
        }, 30);
        this.#timers.add(timer);
      } else {
        handler(event);
      }
    }
  }

  subscribe(handler: BusHandler): Disposable {
    const index = this.#next++;
    this.#handlers.set(index, handler);
    return { [Symbol.dispose]: () => void this.#handlers.delete(index) };
  }

  /** Resolves once every delayed event has been handed over. */
  settled(): Promise<void> {
    if (this.#timers.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  [Symbol.dispose](): void {
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
  }
}

/** Two servers on one in-memory store and one bus, closed (servers first) when disposed. */
async function twoServers(
  bus: Bus,
  settings: Parameters<typeof startServer>[0] = {},
): Promise<{ a: InProcessServer; b: InProcessServer } & AsyncDisposable> {
  const store = await openStore(":memory:");
  const started: InProcessServer[] = [];
  const close = async () => {
    try {
      for (const srv of started) await srv.close();
    } finally {
      await store.close();
    }
  };
  try {
    started.push(await startServer({ ...settings, store, bus }));
    started.push(await startServer({ ...settings, store, bus }));
  } catch (error) {
    await close();
    throw error;
  }
  return { a: started[0], b: started[1], [Symbol.asyncDispose]: close };
}

async function join(origin: string, user: string, query?: string): Promise<TestClient> {
  return (await TestClient.join(origin, user, { query, timeoutMs: 10_000 }))[0];
}

const inLobby = (f: Frame) => f.type === "message" && f.room === "lobby";
const dmOf = (a: string, b: string) => (f: Frame) =>
  f.type === "message" && f.to !== undefined &&
  [f.from, f.to].sort().join() === [a, b].sort().join();

/**
 * Takes messages matching `match` in the order they arrived, failing at the first that is not
 * the next of `expected` (a hole or a repeat shows at once, not as a timeout later).
 */
async function inOrder(
  label: string,
  client: TestClient,
  match: (f: Frame) => boolean,
  expected: number[],
): Promise<void> {
  const got: number[] = [];
  for (const id of expected) {
    got.push((await client.next(match)).id);
    assert.equal(got.at(-1), id, `${label}: expected ids ${expected.join()}; got ${got.join()}`);
  }
}

const oneTo = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

/** Waits for a round trip, so nothing the server sent before it is still on the way. */
async function roundTrip(client: TestClient): Promise<void> {
  client.send({ type: "ping" });
  await client.next((f) => f.type === "pong");
}

Deno.test({
  name:
    "two servers on one store: a bus that loses and reorders messages still gets every message to every member on either server once, in id order",
  timeout: 60_000,
  async fn() {
    // Server 0 loses ids 5, 10, …, server 1 loses 4, 9, …; either gets 3, 10, 17, … late.
    // The last ids (61 in the lobby, 31 in the DM) always arrive, or nothing would show the hole.
    using bus = new LossyBus((m, subscriber) =>
      (m.id + subscriber) % 5 === 0 ? "drop" : m.id % 7 === 3 ? "delay" : "deliver"
    );
    await using servers = await twoServers(bus);
    await using alice = await join(servers.a.origin, "alice");
    await using carol = await join(servers.a.origin, "carol");
    await using bob = await join(servers.b.origin, "bob");
    const lobby = 61, dms = 31;
    for (let i = 0; i < lobby; i++) {
      alice.send({ type: "send", room: "lobby", text: `lobby ${i}`, cid: `l${i}` });
      if (i < dms) alice.send({ type: "send", to: "bob", text: `dm ${i}`, cid: `d${i}` });
    }
    // Each reader, on either server, sees each conversation whole and in order, the
    // sender's own acknowledgements included (they cross the same bus).
    await inOrder("bob's lobby", bob, inLobby, oneTo(lobby));
    await inOrder("bob's DM", bob, dmOf("alice", "bob"), oneTo(dms));
    await inOrder("carol's lobby", carol, inLobby, oneTo(lobby));
    await inOrder("alice's acks in the lobby", alice, inLobby, oneTo(lobby));
    await inOrder("alice's acks in the DM", alice, dmOf("alice", "bob"), oneTo(dms));
    assert.ok(bus.counts.dropped > 20 && bus.counts.delayed > 10, JSON.stringify(bus.counts));
    // The late copies of messages already filled from the store are not sent again.
    await bus.settled();
    for (const client of [alice, bob, carol]) {
      await roundTrip(client);
      assert.deepEqual(client.queued.filter((f) => f.type === "message"), [], "a repeat");
      // A filled gap is not a resume: these clients never asked for one.
      assert.deepEqual(client.queued.filter((f) => f.type === "resumed"), []);
    }
  },
});

Deno.test({
  name:
    "a resuming client gets a DM it did not name from its first message, when the first to reach it is not the first",
  timeout: 30_000,
  async fn() {
    // Server 1 (bob's) never hears of the DM's first message: only the store has it.
    using bus = new LossyBus((m, subscriber) =>
      subscriber === 1 && m.to !== undefined && m.id === 1 ? "drop" : "deliver"
    );
    await using servers = await twoServers(bus);
    await using bob = await join(servers.b.origin, "bob", "?resume");
    bob.send({ type: "resume", conversations: [{ room: "lobby", after: 0 }] });
    await bob.next((f) => f.type === "resumed" && f.room === "lobby");
    await using alice = await join(servers.a.origin, "alice");
    alice.send({ type: "send", to: "bob", text: "hello", cid: "1" });
    await alice.next((f) => f.cid === "1");
    alice.send({ type: "send", to: "bob", text: "are you there?", cid: "2" });
    await alice.next((f) => f.cid === "2");
    const first = await bob.next(dmOf("alice", "bob"));
    assert.deepEqual([first.id, first.text], [1, "hello"]);
    const second = await bob.next(dmOf("alice", "bob"));
    assert.deepEqual([second.id, second.text], [2, "are you there?"]);
    assert.equal(bus.counts.dropped, 1);
    await roundTrip(bob);
    assert.deepEqual(bob.queued.filter((f) => f.type === "message"), [], "a repeat");
  },
});

Deno.test({
  name:
    "a client that connects with ?resume and never sends resume is closed with 4000 once --replay-limit live messages wait for it",
  timeout: 30_000,
  async fn() {
    const replayLimit = 5;
    await using srv = await startServer({ settings: { replayLimit } });
    await using idle = await join(srv.origin, "idle", "?resume");
    await using alice = await join(srv.origin, "alice");
    // The held messages are what it may cost: replayLimit of them are kept for the resume ...
    for (let i = 1; i <= replayLimit; i++) {
      alice.send({ type: "send", room: "lobby", text: `m${i}`, cid: `${i}` });
      await alice.next((f) => f.cid === `${i}`);
    }
    await roundTrip(idle);
    assert.deepEqual(idle.queued.filter((f) => f.type === "message"), [], "held, not sent");
    // ... and the next one closes it: it would otherwise hold every message of every room.
    alice.send({ type: "send", room: "lobby", text: "one too many", cid: "last" });
    await alice.next((f) => f.cid === "last");
    const closed = await idle.closed;
    assert.equal(closed.code, 4000, closed.reason);
    assert.match(closed.reason, /resume/);
    assert.deepEqual(idle.queued.filter((f) => f.type === "message"), []);
    // Its reconnect with a resume gets the newest replayLimit, in order, and is told of the rest.
    await using again = await join(srv.origin, "idle", "?resume");
    again.send({ type: "resume", conversations: [{ room: "lobby", after: 0 }] });
    await inOrder("the replay", again, inLobby, [2, 3, 4, 5, 6]);
    const resumed = await again.next((f) => f.type === "resumed");
    assert.deepEqual([resumed.from, resumed.to, resumed.more], [2, 6, true]);
  },
});

Deno.test({
  name:
    "a client that does not resume gets live messages from when it connected, not the history before",
  timeout: 30_000,
  async fn() {
    await using srv = await startServer();
    await using alice = await join(srv.origin, "alice");
    await using bob = await join(srv.origin, "bob");
    for (const [cid, to] of [["1", "lobby"], ["2", "lobby"], ["d1", "bob"], ["d2", "bob"]]) {
      alice.send({ type: "send", ...(to === "lobby" ? { room: to } : { to }), text: cid, cid });
      await alice.next((f) => f.cid === cid);
    }
    // carol was not there, and bob reconnects without ?resume: each sees only what comes next
    // (earlier messages are theirs to page in with `history`).
    await bob.close();
    await using carol = await join(srv.origin, "carol");
    await using bob2 = await join(srv.origin, "bob");
    alice.send({ type: "send", room: "lobby", text: "now", cid: "3" });
    alice.send({ type: "send", to: "bob", text: "now", cid: "d3" });
    await alice.next((f) => f.cid === "d3");
    assert.deepEqual((await carol.next(inLobby)).id, 3);
    assert.deepEqual((await bob2.next(inLobby)).id, 3);
    assert.deepEqual((await bob2.next(dmOf("alice", "bob"))).id, 3);
    for (const client of [carol, bob2]) {
      await roundTrip(client);
      assert.deepEqual(
        client.queued.filter((f) => f.type === "message" || f.type === "resumed"),
        [],
      );
    }
  },
});

Deno.test({
  name: "the same cid sent three times back to back is stored once and reaches the others once",
  timeout: 30_000,
  async fn() {
    await using srv = await startServer();
    await using alice = await join(srv.origin, "alice");
    await using bob = await join(srv.origin, "bob");
    // Back to back, behind a message that is being stored (whether the copies share a batch
    // is the store's business; tests/conformance_test.ts makes sure of that case).
    alice.send({ type: "send", room: "lobby", text: "lead", cid: "lead" });
    for (let i = 0; i < 3; i++) {
      alice.send({ type: "send", room: "lobby", text: "once", cid: "twice" });
      alice.send({ type: "send", to: "bob", text: "once", cid: "dm-twice" });
    }
    alice.send({ type: "send", room: "lobby", text: "after", cid: "after" });
    await bob.next((f) => f.cid === "after");
    await roundTrip(bob);
    const seen = (match: (f: Frame) => boolean) => bob.queued.filter(match).map((f) => f.cid);
    // ("after" itself was taken above.)
    assert.deepEqual(seen(inLobby), ["lead", "twice"]);
    assert.deepEqual(seen(dmOf("alice", "bob")), ["dm-twice"]);
    alice.send({ type: "history", room: "lobby" });
    const lobby = await alice.next((f) => f.type === "history");
    assert.deepEqual(lobby.messages.map((m: Frame) => m.cid), ["lead", "twice", "after"]);
    alice.send({ type: "history", with: "bob" });
    const dm = await alice.next((f) => f.type === "history");
    assert.deepEqual(dm.messages.map((m: Frame) => m.cid), ["dm-twice"]);
  },
});

Deno.test({
  name:
    "a gap in live traffic longer than --replay-limit is filled with the newest and said: resumed names the conversation with more=true",
  timeout: 30_000,
  async fn() {
    // Server 1 (bob's) loses ids 2–8 of the lobby and of the DM; server 0 (alice's) those of
    // the DM, so her own acknowledgements have the gap too.
    using bus = new LossyBus((m, subscriber) =>
      m.id >= 2 && m.id <= 8 && (subscriber === 1 || m.to !== undefined) ? "drop" : "deliver"
    );
    await using servers = await twoServers(bus, { settings: { replayLimit: 3 } });
    await using alice = await join(servers.a.origin, "alice");
    await using bob = await join(servers.b.origin, "bob");
    for (let i = 1; i <= 9; i++) {
      alice.send({ type: "send", room: "lobby", text: `l${i}`, cid: `l${i}` });
      alice.send({ type: "send", to: "bob", text: `d${i}`, cid: `d${i}` });
    }
    const said = (client: TestClient, ref: Frame) =>
      client.next((f) => f.type === "resumed" && (f.room ?? f.with) === (ref.room ?? ref.with));
    // 1 came live; 9 showed the hole; the newest 3 after 1 are sent, and the rest announced.
    await inOrder("bob's lobby", bob, inLobby, [1, 7, 8, 9]);
    assert.deepEqual(await said(bob, { room: "lobby" }), {
      type: "resumed",
      room: "lobby",
      after: 1,
      from: 7,
      to: 9,
      more: true,
    });
    await inOrder("bob's DM", bob, dmOf("alice", "bob"), [1, 7, 8, 9]);
    assert.deepEqual(await said(bob, { with: "alice" }), {
      type: "resumed",
      with: "alice",
      after: 1,
      from: 7,
      to: 9,
      more: true,
    });
    await inOrder("alice's lobby acks", alice, inLobby, oneTo(9));
    await inOrder("alice's DM acks", alice, dmOf("alice", "bob"), [1, 7, 8, 9]);
    assert.deepEqual(await said(alice, { with: "bob" }), {
      type: "resumed",
      with: "bob",
      after: 1,
      from: 7,
      to: 9,
      more: true,
    });
    // What the page then asks for: the rest of the gap, with history.
    bob.send({ type: "history", room: "lobby", before: 7, after: 1 });
    const page = await bob.next((f) => f.type === "history");
    assert.deepEqual(page.messages.map((m: Frame) => m.id), [2, 3, 4, 5, 6]);
  },
});

Deno.test({
  name:
    "a replay the store cannot read closes the connection with 1011 instead of leaving a hole, and the next resume gets it all",
  timeout: 30_000,
  async fn() {
    const store = await openStore(":memory:");
    let failing = false;
    // The real store, but `history` fails while `failing` is set (a database that is down).
    const flaky = new Proxy(store, {
      get(target, key) {
        if (key === "history" && failing) {
          return () => Promise.reject(new StoreError("the database is down"));
        }
        const value = Reflect.get(target, key, target);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    try {
      await using srv = await startServer({ store: flaky });
      await using alice = await join(srv.origin, "alice");
      alice.send({ type: "send", room: "lobby", text: "before", cid: "1" });
      await alice.next((f) => f.cid === "1");
      await using bob = await join(srv.origin, "bob", "?resume");
      failing = true;
      bob.send({ type: "resume", conversations: [{ room: "lobby", after: 0 }] });
      const closed = await bob.closed;
      assert.equal(closed.code, 1011, closed.reason);
      assert.match(closed.reason, /reconnect/);
      assert.deepEqual(bob.queued.filter((f) => f.type === "message" || f.type === "resumed"), []);
      failing = false;
      await using again = await join(srv.origin, "bob", "?resume");
      again.send({ type: "resume", conversations: [{ room: "lobby", after: 0 }] });
      assert.equal((await again.next(inLobby)).text, "before");
      assert.equal((await again.next((f) => f.type === "resumed")).to, 1);
    } finally {
      await store.close();
    }
  },
});

Deno.test({
  name:
    "after a resume with nothing to replay, a hole in live traffic is still filled, and a live message held for an unnamed room follows the resume",
  timeout: 30_000,
  async fn() {
    // Server 1 (bob's) loses lobby message 4 only.
    using bus = new LossyBus((m, subscriber) =>
      subscriber === 1 && m.room === "lobby" && m.id === 4 ? "drop" : "deliver"
    );
    await using servers = await twoServers(bus);
    await using alice = await join(servers.a.origin, "alice");
    alice.send({ type: "create", room: "side", private: false });
    await alice.next((f) => f.type === "joined" && f.room === "side");
    for (const cid of ["1", "2"]) {
      alice.send({ type: "send", room: "lobby", text: cid, cid });
      await alice.next((f) => f.cid === cid);
    }
    {
      await using first = await join(servers.b.origin, "bob");
      first.send({ type: "join", room: "side" });
      await first.next((f) => f.type === "joined" && f.room === "side");
    }
    // bob has lobby 1–2 and names only the lobby; "side" gets a message while he is held.
    await using bob = await join(servers.b.origin, "bob", "?resume");
    alice.send({ type: "send", room: "side", text: "while held", cid: "s1" });
    await alice.next((f) => f.cid === "s1");
    alice.send({ type: "send", room: "lobby", text: "3", cid: "3" });
    await alice.next((f) => f.cid === "3");
    bob.send({ type: "resume", conversations: [{ room: "lobby", after: 3 }] });
    assert.deepEqual((await bob.next((f) => f.type === "resumed")).to, 0);
    assert.equal(
      (await bob.next((f) => f.type === "message" && f.room === "side")).text,
      "while held",
    );
    // 4 never reaches bob's server; 5 shows the hole, which is filled from the store first.
    alice.send({ type: "send", room: "lobby", text: "4", cid: "4" });
    alice.send({ type: "send", room: "lobby", text: "5", cid: "5" });
    await inOrder("bob's lobby", bob, inLobby, [4, 5]);
    assert.equal(bus.counts.dropped, 1);
  },
});
