import assert from "node:assert/strict";
import { SharedRead } from "../lib/shared_read.ts";

/** A value that changes when told, and its reads, each answering only when told to. */
function source() {
  let value = 0;
  const reads: Array<{ answer(): void }> = [];
  let onRead = () => {};
  return {
    read: () =>
      new Promise<number>((resolve) => {
        const seen = value;
        reads.push({ answer: () => resolve(seen) });
        onRead();
      }),
    set: (v: number) => (value = v),
    count: () => reads.length,
    /** The `n`th read (from 1), once it has started. */
    async nth(n: number) {
      while (reads.length < n) await new Promise<void>((r) => (onRead = r));
      return reads[n - 1];
    },
  };
}

Deno.test("a shared read answers each asker with a value read after it asked, and a burst of askers costs two reads", async () => {
  const src = source();
  let idle = 0;
  const shared = new SharedRead(src.read, () => idle++);
  src.set(1);
  const first = shared.get();
  const sameTurn = shared.get();
  (await src.nth(1)).answer(); // it began after both asked
  assert.deepEqual(await Promise.all([first, sameTurn]), [1, 1]);

  src.set(2);
  const a = shared.get();
  const second = await src.nth(2);
  src.set(3); // changed while a's read runs: whoever asks now must see 3
  const later = [shared.get(), shared.get(), shared.get()];
  second.answer();
  assert.equal(await a, 2);
  (await src.nth(3)).answer();
  assert.deepEqual(await Promise.all(later), [3, 3, 3]);
  assert.equal(src.count(), 3, "the three later askers shared one read");
  assert.equal(shared.idle, true);
  assert.equal(idle, 2, "idle after the first read, and after the third (not the second)");
});

Deno.test("a shared read that fails fails its askers only, and the next askers read again", async () => {
  let fail = true;
  const shared = new SharedRead(() =>
    fail ? Promise.reject(new Error("down")) : Promise.resolve(7)
  );
  await assert.rejects(shared.get(), /down/);
  fail = false;
  assert.equal(await shared.get(), 7);
});
