/**
 * Helpers of the hostile suites (tests/hostile_*_test.ts): a bound on what
 * an attack should make happen, and frames a WebSocket client would never send.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type SpawnedServer, spawnServer, within } from "./_server.ts";

export { within };

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

/** `main.ts` in a child under a low descriptor limit (`ulimit -n`), with its own limits. */
export function spawnLimited(nofile: number, args: string[] = []): Promise<SpawnedServer> {
  return spawnServer({
    data: ":memory:",
    nofile,
    relaxed: false,
    args: ["--max-connections-per-ip", "100000", "--connects-per-minute", "100000", ...args],
  });
}

/** GET /healthz, retried while the server refuses with 503 (its connections still closing). */
export async function healthy(port: number): Promise<number> {
  for (let i = 0;; i++) {
    const res = await fetch(`http://127.0.0.1:${port}/healthz`);
    await res.body?.cancel();
    if (res.status !== 503 || i === 100) return res.status;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The classes of attack the hostile suite covers, each in its own file. */
export const HOSTILE_CLASSES: ReadonlyArray<{ name: string; file: string }> = [
  { name: "hostile inputs (frames, names, tokens, floods)", file: "hostile_test.ts" },
  { name: "descriptors, handshakes and fragments (raw TCP)", file: "hostile_transport_test.ts" },
  { name: "fan-out floods and names changing hands", file: "hostile_fanout_test.ts" },
  { name: "checks racing writes", file: "hostile_race_test.ts" },
  { name: "queues without bounds", file: "hostile_queues_test.ts" },
  { name: "resume that defeats itself", file: "hostile_replay_test.ts" },
  { name: "names and origins", file: "hostile_names_test.ts" },
  { name: "everything at once (soak)", file: "hostile_soak_test.ts" },
];

/** How many `Deno.test` cases a hostile file declares (read from its source). */
export function casesIn(file: string): number {
  const source = Deno.readTextFileSync(new URL(file, import.meta.url));
  return source.match(/^Deno\.test\(/gm)?.length ?? 0;
}
