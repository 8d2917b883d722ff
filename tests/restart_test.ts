/**
 * The real `main.ts` in a child process on a temporary KV file, killed and
 * restarted on the same data and port: what the server acknowledged must
 * survive a SIGKILL, and a SIGTERM must close clients with 1001 and exit 0.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { type Frame, TestClient } from "./_client.ts";
import { spawnServer } from "./_server.ts";

const isType = (type: string) => (f: Frame) => f.type === type;

/** Runs `fn` with a fresh temporary folder, removed afterwards whatever happens. */
async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "chat-restart-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Opens a chat.v1 connection and returns it with its welcome. */
function open(origin: string, user: string): Promise<[TestClient, Frame]> {
  return TestClient.join(origin, user);
}

/** A client's own acknowledgements (its messages with a cid) still queued, by cid. */
function takeAcks(client: TestClient, user: string, into: Map<string, Frame>): void {
  for (const f of client.queued) {
    if (f.type === "message" && f.from === user && typeof f.cid === "string") {
      assert.equal(into.has(f.cid), false, `two acks for ${f.cid}`);
      into.set(f.cid, f);
    }
  }
}

/** Waits for `count` acknowledgements (own messages with a cid) on a client. */
async function awaitAcks(client: TestClient, user: string, count: number): Promise<Frame[]> {
  const acks: Frame[] = [];
  while (acks.length < count) {
    acks.push(
      await client.next((f) => f.type === "message" && f.from === user && f.cid !== undefined),
    );
  }
  return acks;
}

/** A whole conversation, paged with `history` from the newest back to the first message. */
async function fullHistory(client: TestClient, ref: Frame): Promise<Frame[]> {
  const pages: Frame[][] = [];
  let before: number | undefined;
  for (;;) {
    client.send({ type: "history", ...ref, limit: 200, ...(before ? { before } : {}) });
    const page = await client.next(isType("history"));
    pages.unshift(page.messages);
    if (!page.more) break;
    assert.ok(page.messages.length > 0, "more=true with an empty page");
    before = page.messages[0].id;
  }
  return pages.flat();
}

/**
 * Every acknowledged message is in the history once, as acknowledged, and the
 * history is in id order with no gap and no repeated cid.
 */
function assertDurable(label: string, history: Frame[], acks: Frame[]): void {
  history.forEach((m, i) => assert.equal(m.id, i + 1, `${label}: id ${m.id} at position ${i}`));
  const byCid = new Map<string, Frame>();
  for (const m of history) {
    if (m.cid === undefined) continue;
    const key = `${m.from}\n${m.cid}`;
    assert.equal(byCid.has(key), false, `${label}: ${m.from}'s cid ${m.cid} stored twice`);
    byCid.set(key, m);
  }
  for (const ack of acks) {
    const stored = byCid.get(`${ack.from}\n${ack.cid}`);
    assert.ok(stored, `${label}: acknowledged ${ack.cid} (id ${ack.id}) was lost`);
    const { type: _type, ...expected } = ack;
    assert.deepEqual(stored, expected, `${label}: ${ack.cid} changed`);
  }
}

interface Traffic {
  lobby: Frame[];
  dm: Frame[];
}

/**
 * alice and bob each send `perUser` lobby messages and `dmsPerUser` DMs to
 * the other, interleaved and without waiting, then wait for all their acks.
 */
async function chatter(
  alice: TestClient,
  bob: TestClient,
  perUser: number,
  dmsPerUser: number,
): Promise<Traffic> {
  const sendAll = (client: TestClient, me: string, other: string) => {
    for (let i = 0; i < perUser; i++) {
      client.send({ type: "send", room: "lobby", text: `${me} lobby ${i}`, cid: `${me}-l-${i}` });
      if (i % Math.ceil(perUser / dmsPerUser) === 0) {
        const n = i / Math.ceil(perUser / dmsPerUser);
        client.send({
          type: "send",
          to: other,
          text: `${me} → ${other} ${n}`,
          cid: `${me}-d-${n}`,
        });
      }
    }
  };
  sendAll(alice, "alice", "bob");
  sendAll(bob, "bob", "alice");
  const [a, b] = await Promise.all([
    awaitAcks(alice, "alice", perUser + dmsPerUser),
    awaitAcks(bob, "bob", perUser + dmsPerUser),
  ]);
  const all = [...a, ...b];
  const lobby = all.filter((m) => m.room === "lobby");
  const dm = all.filter((m) => m.to !== undefined);
  assert.equal(lobby.length, 2 * perUser);
  assert.equal(dm.length, 2 * dmsPerUser);
  return { lobby, dm };
}

/** Reads the lobby and the alice–bob DM after a restart and checks every ack is there. */
async function assertAllThere(origin: string, acks: Frame[]): Promise<void> {
  await using reader = (await open(origin, "alice"))[0];
  const lobby = await fullHistory(reader, { room: "lobby" });
  const dm = await fullHistory(reader, { with: "bob" });
  assertDurable("lobby", lobby, acks.filter((m) => m.room === "lobby"));
  assertDurable("dm", dm, acks.filter((m) => m.to !== undefined));
}

Deno.test("restart: every message acknowledged before a SIGKILL is stored once, in id order, after a restart on the same data and port", async () => {
  await withTempDir(async (dir) => {
    const data = join(dir, "chat.db");
    const acked = new Map<string, Frame>();
    let port: number;
    {
      await using srv = await spawnServer({ data });
      port = srv.port;
      await using alice = (await open(srv.origin, "alice"))[0];
      await using bob = (await open(srv.origin, "bob"))[0];
      const { lobby, dm } = await chatter(alice, bob, 100, 25);
      for (const m of [...lobby, ...dm]) acked.set(`${m.from}\n${m.cid}`, m);
      assert.deepEqual(
        lobby.map((m) => m.id).sort((x, y) => x - y),
        Array.from({ length: 200 }, (_, i) => i + 1),
      );
      assert.deepEqual(
        dm.map((m) => m.id).sort((x, y) => x - y),
        Array.from({ length: 50 }, (_, i) => i + 1),
      );

      // Messages still in flight when the process dies: those acknowledged must survive too.
      for (let i = 0; i < 100; i++) {
        alice.send({ type: "send", room: "lobby", text: `burst ${i}`, cid: `alice-b-${i}` });
        bob.send({ type: "send", to: "alice", text: `dm burst ${i}`, cid: `bob-b-${i}` });
      }
      const trigger = await alice.next((f) => f.cid === "alice-b-49");
      const status = await srv.kill("SIGKILL");
      assert.equal(status.signal, "SIGKILL");
      await Promise.all([alice.closed, bob.closed]);
      const late = new Map<string, Frame>([[`alice\n${trigger.cid}`, trigger]]);
      takeAcks(alice, "alice", late);
      takeAcks(bob, "bob", late);
      for (const [k, m] of late) acked.set(k, m);
      assert.ok(acked.size > 250 && acked.size <= 450, `${acked.size} acks`);
    }
    await using srv = await spawnServer({ data, port });
    assert.equal(srv.port, port);
    await assertAllThere(srv.origin, [...acked.values()]);
  });
});

Deno.test("restart: SIGTERM closes clients with 1001, exits 0 within 10 s, and keeps every acknowledged message", async () => {
  await withTempDir(async (dir) => {
    const data = join(dir, "chat.db");
    let port: number;
    let acks: Frame[];
    {
      await using srv = await spawnServer({ data });
      port = srv.port;
      await using alice = (await open(srv.origin, "alice"))[0];
      await using bob = (await open(srv.origin, "bob"))[0];
      await using legacy = await TestClient.connect(srv.origin, "carol", { protocol: null });
      const { lobby, dm } = await chatter(alice, bob, 60, 15);
      acks = [...lobby, ...dm];
      // carol (legacy) is connected: her frames are handled, so shutdown must close her too.
      await legacy.next((f) => f.msg === "alice lobby 59");

      const started = Date.now();
      const status = await srv.kill("SIGTERM");
      const elapsed = Date.now() - started;
      assert.equal(status.code, 0, srv.output());
      assert.equal(status.success, true);
      assert.ok(elapsed < 10_000, `took ${elapsed} ms to exit`);
      for (const client of [alice, bob, legacy]) {
        const closed = await client.closed;
        assert.equal(closed.code, 1001, `${closed.code} ${closed.reason}`);
        assert.match(closed.reason, /shutting down/);
      }
      assert.match(srv.output(), /SIGTERM: closing connections and finishing writes/);
    }
    await using srv = await spawnServer({ data, port });
    assert.equal(srv.port, port);
    await assertAllThere(srv.origin, acks);
  });
});

Deno.test("restart: a DM to an offline user survives a restart and shows unread in their welcome", async () => {
  await withTempDir(async (dir) => {
    const data = join(dir, "chat.db");
    let port: number;
    let ack: Frame;
    {
      await using srv = await spawnServer({ data });
      port = srv.port;
      {
        // bob has been here once, so he is a user DMs may go to.
        await using _bob = (await open(srv.origin, "bob"))[0];
      }
      await using alice = (await open(srv.origin, "alice"))[0];
      alice.send({ type: "send", to: "bob", text: "while you were out", cid: "o1" });
      ack = await alice.next((f) => f.cid === "o1");
      assert.equal(ack.type, "message");
      assert.equal(ack.id, 1);
      await srv.kill("SIGKILL");
    }
    await using srv = await spawnServer({ data, port });
    const [bob, welcome] = await open(srv.origin, "bob");
    await using _ = bob;
    assert.deepEqual(welcome.conversations, [
      { room: "lobby", last: 0, read: 0, unread: 0 },
      { with: "alice", last: 1, read: 0, unread: 1 },
    ]);
    bob.send({ type: "history", with: "alice" });
    const { type: _type, ...stored } = ack;
    assert.deepEqual(await bob.next(isType("history")), {
      type: "history",
      with: "alice",
      messages: [stored],
      more: false,
    });
    // bob is still known after the restart: a DM to him is accepted with the next id.
    await using alice = (await open(srv.origin, "alice"))[0];
    alice.send({ type: "send", to: "bob", text: "welcome back", cid: "o2" });
    const second = await alice.next((f) => f.cid === "o2" || f.ref === "o2");
    assert.equal(second.type, "message", JSON.stringify(second));
    assert.equal(second.id, 2);
    assert.deepEqual(await bob.next((f) => f.type === "message" && f.cid === "o2"), second);
  });
});

Deno.test("restart: SIGTERM in the middle of a burst acknowledges what it took, keeps it, and re-sends complete the rest once", async () => {
  await withTempDir(async (dir) => {
    const data = join(dir, "chat.db");
    const total = 2000;
    const acks = new Map<string, Frame>();
    let port: number;
    {
      await using srv = await spawnServer({ data });
      port = srv.port;
      await using alice = (await open(srv.origin, "alice"))[0];
      // The burst goes out in chunks, each once the one before is being acknowledged, so the
      // server is still taking frames when SIGTERM comes (sent all at once, every frame was
      // read before the signal and the stop came after the burst, not in it).
      const acked = (cid: string) =>
        alice.seen((f) => f.type === "message" && f.cid === cid).then(() => true, () => false);
      const sending = (async () => {
        for (let i = 0; i < total; i += 100) {
          for (let j = i; j < Math.min(i + 100, total); j++) {
            if (alice.socket.readyState !== WebSocket.OPEN) return;
            alice.send({ type: "send", room: "lobby", text: `burst ${j}`, cid: `burst-${j}` });
          }
          if (!(await acked(`burst-${i}`))) return;
        }
      })();
      await acked("burst-200");
      // Appends in flight when SIGTERM comes, for sure: another process holds SQLite's write
      // lock (as a slow disk would hold a commit), the frames sent so far are taken (the pong
      // answers after them), and the lock goes only once the server has begun to shut down.
      const lock = new DatabaseSync(data);
      lock.exec("PRAGMA busy_timeout = 5000");
      lock.exec("BEGIN IMMEDIATE");
      try {
        alice.send({ type: "ping" });
        await alice.next((f) => f.type === "pong");
        const stopping = srv.kill("SIGTERM");
        await srv.printed(/SIGTERM: closing connections/);
        lock.exec("ROLLBACK");
        const status = await stopping;
        assert.equal(status.code, 0, srv.output());
      } finally {
        lock.close();
      }
      assert.equal((await alice.closed).code, 1001);
      await sending;
      takeAcks(alice, "alice", acks);
      console.log(`SIGTERM after ${acks.size} of ${total} acknowledgements`);
      assert.ok(acks.size < total, "the server stopped after the burst, not in the middle of it");
    }
    await using srv = await spawnServer({ data, port });
    await assertAllThere(srv.origin, [...acks.values()]);
    {
      // The other half: everything stored was acknowledged before the 1001. Shutdown waits
      // for the appends it took; a message stored after its sender was closed would be
      // hidden by the client's re-send (same cid), but its ack was lost all the same.
      await using reader = (await open(srv.origin, "alice"))[0];
      const stored = await fullHistory(reader, { room: "lobby" });
      const unacked = stored.filter((m) => !acks.has(m.cid)).map((m) => m.cid);
      assert.deepEqual(
        unacked,
        [],
        `${unacked.length} of ${stored.length} stored messages had no ack before the 1001`,
      );
      assert.equal(stored.length, acks.size);
    }
    // The client re-sends everything it has no ack for, with the same cids: each is stored once.
    await using alice = (await open(srv.origin, "alice"))[0];
    for (let i = 0; i < total; i++) {
      if (!acks.has(`burst-${i}`)) {
        alice.send({ type: "send", room: "lobby", text: `burst ${i}`, cid: `burst-${i}` });
      }
    }
    await awaitAcks(alice, "alice", total - acks.size);
    const lobby = await fullHistory(alice, { room: "lobby" });
    assert.deepEqual(
      lobby.map((m) => m.cid).sort(),
      Array.from({ length: total }, (_, i) => `burst-${i}`).sort(),
    );
    assertDurable("lobby", lobby, [...acks.values()]);
  });
});
