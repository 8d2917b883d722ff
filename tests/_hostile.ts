/**
 * Helpers of the hostile suites (tests/hostile_*_test.ts): a bound on what
 * an attack should make happen, and frames a WebSocket client would never send.
 *
 * @module
 */

import assert from "node:assert/strict";

/**
 * Resolves with what `promise` gives, or rejects once `ms` pass: a bound on an
 * event that a broken server never produces (so the test fails, not hangs), not a sleep.
 */
export async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Writes one masked client frame with any FIN bit and opcode (0 continuation, 1 text, 2 binary). */
export async function writeFragment(
  conn: Deno.Conn,
  opts: { fin: boolean; opcode: number; payload: Uint8Array },
): Promise<void> {
  const { payload } = opts;
  const length = payload.length;
  assert.ok(length <= 0xffff, "writeFragment: payloads up to 64 KiB");
  const b0 = (opts.fin ? 0x80 : 0) | opts.opcode;
  const head = length < 126 ? [b0, 0x80 | length] : [b0, 0x80 | 126, length >> 8, length & 0xff];
  const frame = new Uint8Array(head.length + 4 + length);
  frame.set(head);
  // A zero mask: the payload goes as it is (the server unmasks all the same).
  frame.set(payload, head.length + 4);
  for (let written = 0; written < frame.length;) {
    written += await conn.write(frame.subarray(written));
  }
}
