/**
 * The presence batcher on its own (lib/presence_fanout.ts), where its bound
 * is cheap to reach: a batch of more than `maxBatch` changes is split across
 * intervals, oldest first, never two frames within one interval. Through real
 * sockets the same batching is tested in presence_scale_test.ts.
 *
 * @module
 */

import assert from "node:assert/strict";
import { PresenceBatch, PresenceFanout } from "../lib/presence_fanout.ts";

/** Collects batches as they are flushed, with the time each came. */
function collector() {
  const batches: Array<{ at: number; batch: PresenceBatch }> = [];
  let wake: (() => void) | undefined;
  return {
    batches,
    deliver(batch: PresenceBatch) {
      // A reader who is not in the batch: it gets the shared frame, so the batch counts as sent.
      batch.for("reader");
      batches.push({ at: performance.now(), batch });
      wake?.();
    },
    /** Waits until `n` batches have come. */
    async until(n: number): Promise<void> {
      while (batches.length < n) await new Promise<void>((resolve) => wake = resolve);
    },
  };
}

Deno.test("more changes than a batch holds wait for the next interval, oldest first, an interval apart", async () => {
  const out = collector();
  using fanout = new PresenceFanout({ intervalMs: 100, maxBatch: 2, deliver: out.deliver });
  for (const user of ["a", "b", "c", "d", "e"]) fanout.push(user, true);
  fanout.push("b", false); // b's latest state, in b's place
  await out.until(2);
  assert.deepEqual(
    out.batches.map(({ batch }) => [batch.online, batch.offline]),
    [[["a", "c"], []], [["d", "e"], []]],
    "b came and went within its interval: not mentioned",
  );
  for (let i = 1; i < out.batches.length; i++) {
    assert.ok(out.batches[i].at - out.batches[i - 1].at >= 99, "frames an interval apart");
  }
  assert.equal(fanout.pending, 0);
});

Deno.test("a reader in the batch gets it without its own change, and nothing when only that is left", () => {
  const batch = new PresenceBatch(["a", "b"], ["c"]);
  const frame = (user: string) => {
    const out = batch.for(user);
    return out === undefined ? undefined : JSON.parse(out.v1);
  };
  assert.deepEqual(frame("x"), { type: "presence", online: ["a", "b"], offline: ["c"] });
  assert.equal(batch.for("x"), batch.for("y"), "one frame, encoded once, for every other reader");
  assert.deepEqual(frame("a"), { type: "presence", online: ["b"], offline: ["c"] });
  assert.deepEqual(frame("c"), { type: "presence", online: ["a", "b"], offline: [] });
  assert.equal(new PresenceBatch(["a"], []).for("a"), undefined);
});

Deno.test("a reader's copy without its own change is the very text of that frame encoded anew, whatever the names", () => {
  // Names that could fool a cut made in the encoded text: prefixes and suffixes of each other,
  // the frame's own keys, JSON's delimiters and escapes, characters beyond U+FFFF.
  const awkward = [
    "a",
    "ab",
    "ba",
    "online",
    "offline",
    "presence",
    "type",
    'quo"te',
    "back\\slash",
    "trail\\",
    "co,mma",
    "[br]",
    '","a',
    "tab\there",
    "中文",
    "😀",
    "\u2028",
  ];
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let round = 0; round < 200; round++) {
    const online: string[] = [], offline: string[] = [];
    for (const name of awkward) {
      const r = random();
      if (r < 0.4) online.push(name);
      else if (r < 0.8) offline.push(name);
    }
    const batch = new PresenceBatch(online, offline);
    for (const user of [...online, ...offline]) {
      const rest = {
        type: "presence",
        online: online.filter((u) => u !== user),
        offline: offline.filter((u) => u !== user),
      };
      const expected = rest.online.length + rest.offline.length === 0
        ? undefined
        : JSON.stringify(rest);
      assert.equal(batch.for(user)?.v1, expected, `${JSON.stringify(user)} in round ${round}`);
    }
  }
});
