/** KvStore on real Deno KV: group commit within KV's limits, ids, idempotency, read state. */

import assert from "node:assert/strict";
import { KvStore } from "../lib/kv_store.ts";
import { dmKey, roomKey } from "../lib/store.ts";

Deno.test("KvStore commits thousands of concurrent appends across hundreds of conversations within KV's atomic limits", async () => {
  await using dir = await tempDir();
  const store = await KvStore.open(`${dir.path}/a.kv`);
  try {
    const appends = Array.from(
      { length: 3000 },
      (_, i) =>
        store.append({
          from: `s${i % 200}`,
          to: `r${i % 200}`,
          text: "x".repeat(i % 7 === 0 ? 3000 : 10),
          cid: `c${i}`,
        }),
    );
    const results = await Promise.all(appends);
    for (let pair = 0; pair < 200; pair++) {
      const ids = results.filter((_, i) => i % 200 === pair).map((r) => r.message.id);
      assert.deepEqual(ids, Array.from({ length: 15 }, (_, i) => i + 1), `pair ${pair}`);
    }
  } finally {
    await store.close();
  }
});

Deno.test("KvStore gives one conversation consecutive ids even when two processes share the database", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/shared.kv`;
  const a = await KvStore.open(path);
  const b = await KvStore.open(path);
  try {
    const all = await Promise.all(
      Array.from(
        { length: 400 },
        (_, i) => (i % 2 ? a : b).append({ room: "lobby", from: `u${i % 2}`, text: `m${i}` }),
      ),
    );
    const ids = all.map((r) => r.message.id).sort((x, y) => x - y);
    assert.deepEqual(ids, Array.from({ length: 400 }, (_, i) => i + 1));
    const page = await a.history(roomKey("lobby"), { limit: 200 });
    assert.deepEqual(
      page.messages.map((m) => m.id),
      Array.from({ length: 200 }, (_, i) => i + 201),
    );
    assert.equal(page.more, true);
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("KvStore returns the first copy for a repeated (from, cid), across a reopen", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/cid.kv`;
  const first = await KvStore.open(path);
  const original = await first.append({ from: "alice", to: "bob", text: "hi", cid: "k" });
  const twin = await first.append({ from: "alice", to: "bob", text: "hi", cid: "k" });
  await first.close();
  assert.equal(original.duplicate, false);
  assert.deepEqual(twin, { message: original.message, duplicate: true });
  const again = await KvStore.open(path);
  try {
    assert.deepEqual(await again.append({ from: "alice", to: "bob", text: "hi", cid: "k" }), twin);
    // The same cid from another sender is another message.
    const other = await again.append({ from: "bob", to: "alice", text: "hi", cid: "k" });
    assert.deepEqual([other.duplicate, other.message.id], [false, 2]);
  } finally {
    await again.close();
  }
});

Deno.test("KvStore pages history between after and before, newest page first", async () => {
  const store = await KvStore.open(":memory:");
  try {
    for (let i = 1; i <= 10; i++) await store.append({ from: "a", to: "b", text: `t${i}` });
    const key = dmKey("b", "a");
    const ids = async (o: { after?: number; before?: number; limit: number }) => {
      const page = await store.history(key, o);
      return [page.messages.map((m) => m.id), page.more];
    };
    assert.deepEqual(await ids({ limit: 3 }), [[8, 9, 10], true]);
    assert.deepEqual(await ids({ before: 3, limit: 5 }), [[1, 2], false]);
    assert.deepEqual(await ids({ after: 7, limit: 5 }), [[8, 9, 10], false]);
    assert.deepEqual(await ids({ after: 2, before: 9, limit: 3 }), [[6, 7, 8], true]);
  } finally {
    await store.close();
  }
});

Deno.test("KvStore keeps read state monotonic and bounded by the newest id", async () => {
  const store = await KvStore.open(":memory:");
  try {
    for (let i = 0; i < 5; i++) await store.append({ room: "lobby", from: "a", text: "x" });
    const key = roomKey("lobby");
    assert.equal(await store.markRead("b", key, 3), 3);
    assert.equal(await store.markRead("b", key, 2), 3, "never backwards");
    assert.equal(await store.markRead("b", key, 99), 5, "never past the newest");
    assert.deepEqual(await store.conversations("b", ["lobby"]), [{
      room: "lobby",
      last: 5,
      read: 5,
      unread: 0,
    }]);
  } finally {
    await store.close();
  }
});

/** A temporary folder removed when disposed. */
async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "chat-kv-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

Deno.test("KvStore stores a cid appended twice in one batch once, and answers the second with the first", async () => {
  const store = await KvStore.open(":memory:");
  try {
    // Not awaited one by one: all wait for the first commit together and share the next batch.
    const [, first, second] = await Promise.all([
      store.append({ room: "lobby", from: "alice", text: "lead" }),
      store.append({ room: "lobby", from: "alice", text: "once", cid: "c1" }),
      store.append({ room: "lobby", from: "alice", text: "once", cid: "c1" }),
    ]);
    assert.equal(first.duplicate, false);
    assert.deepEqual(second, { message: first.message, duplicate: true });
    const page = await store.history(roomKey("lobby"), { limit: 10 });
    assert.deepEqual(page.messages.map((m) => m.text), ["lead", "once"]);
  } finally {
    await store.close();
  }
});
