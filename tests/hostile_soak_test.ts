/**
 * The soak: every class of attack at once, bounded in count and time (about
 * ten seconds of attack), against a real `main.ts` under `ulimit -n 1024`,
 * while alice and bob keep chatting. It prints the pair's p50/p99 latency
 * (for information: speed is the benchmark's business), the messages lost
 * (must be 0), and the server's RSS before, at peak and after.
 */

import assert from "node:assert/strict";
import { type Frame, TestClient } from "./_client.ts";
import { HANDSHAKE } from "./_raw.ts";
import { healthy, spawnLimited, within, writeFragment } from "./_hostile.ts";

const ATTACK_MS = 10_000;

function rssMiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? 0) / 1024;
}

/** Repeats an attack until the time is up; errors (refusals, resets) are the point. */
async function repeat(until: number, attack: () => Promise<void>): Promise<number> {
  let rounds = 0;
  while (Date.now() < until) {
    await attack().catch(() => {});
    rounds++;
  }
  return rounds;
}

async function connectRaw(port: number): Promise<Deno.TcpConn> {
  return await Deno.connect({ hostname: "127.0.0.1", port });
}

/** Upgrades by hand and sends an unfinished message of up to 8 MiB. */
async function unfinishedFragments(port: number): Promise<void> {
  const conn = await connectRaw(port);
  try {
    const head = Object.entries({ host: `127.0.0.1:${port}`, ...HANDSHAKE })
      .map(([k, v]) => `${k}: ${v}\r\n`).join("");
    await conn.write(new TextEncoder().encode(`GET /ws/frag${Date.now()} HTTP/1.1\r\n${head}\r\n`));
    const chunk = new Uint8Array(60 * 1024).fill(0x61);
    await writeFragment(conn, { fin: false, opcode: 1, payload: chunk });
    for (let sent = 0; sent < 8 * 1024 * 1024; sent += chunk.length) {
      await writeFragment(conn, { fin: false, opcode: 0, payload: chunk });
    }
  } finally {
    conn.close();
  }
}

/** A login body declared as 100 MB, streamed until the server answers. */
async function oversizedBody(port: number): Promise<void> {
  const conn = await connectRaw(port);
  try {
    await conn.write(new TextEncoder().encode(
      `POST /api/login HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 100000000\r\n\r\n`,
    ));
    const chunk = new Uint8Array(64 * 1024).fill(0x20);
    for (let sent = 0; sent < 4 * 1024 * 1024; sent += chunk.length) await conn.write(chunk);
  } finally {
    conn.close();
  }
}

/** Idle TCP connections past the descriptor budget, held a moment, then dropped. */
async function exhaustDescriptors(port: number): Promise<void> {
  const conns: Deno.TcpConn[] = [];
  try {
    for (let i = 0; i < 400; i++) conns.push(await connectRaw(port));
    await new Promise((r) => setTimeout(r, 1000));
  } finally {
    for (const c of conns) c.close();
  }
}

/** A WebSocket opened and closed at once. */
async function connectStorm(origin: string, i: number): Promise<void> {
  const c = await TestClient.connect(origin, `storm${i % 50}`, { token: null, protocol: null });
  await c.close();
}

/** Typing frames to the lobby as fast as they go, from one signed-in user. */
async function typingFlood(origin: string): Promise<void> {
  const [m] = await TestClient.join(origin, `flooder${Date.now() % 1000}`);
  try {
    for (let i = 0; i < 2000; i++) m.send({ type: "typing", room: "lobby" });
    m.send({ type: "ping" });
    await m.next((f) => f.type === "pong");
  } finally {
    await m.close();
  }
}

Deno.test("soak: every attack at once for 10 s while a pair keeps chatting: nothing lost, memory bounded, still serving", async () => {
  await using srv = await spawnLimited(1024, [
    "--max-buffered-bytes",
    "262144",
    // The pair chats at 50 messages a second: above the default per-user rate.
    "--send-rate",
    "1000",
    "--send-burst",
    "1000",
  ]);
  const origin = `http://127.0.0.1:${srv.port}`;
  const [alice] = await TestClient.join(origin, "alice");
  const bob = await TestClient.connect(origin, "bob", { timeoutMs: 20_000 });
  await bob.next((f) => f.type === "welcome");
  const rss = { before: rssMiB(srv.pid), peak: 0, after: 0 };
  rss.peak = rss.before;
  const until = Date.now() + ATTACK_MS;
  const sampler = setInterval(() => rss.peak = Math.max(rss.peak, rssMiB(srv.pid)), 100);

  // The pair: alice sends bob a DM every 20 ms; bob's receipt time gives each one's latency.
  const sentAt = new Map<string, number>();
  const latencies: number[] = [];
  bob.socket.addEventListener("message", (e) => {
    const f = JSON.parse(e.data as string) as Frame;
    const at = f.cid === undefined ? undefined : sentAt.get(f.cid);
    if (f.type === "message" && at !== undefined) latencies.push(performance.now() - at);
  });
  const chatting = (async () => {
    let n = 0;
    while (Date.now() < until) {
      const cid = `p${n++}`;
      sentAt.set(cid, performance.now());
      alice.send({ type: "send", to: "bob", text: `pair ${cid}`, cid });
      await new Promise((r) => setTimeout(r, 20));
    }
    return n;
  })();
  let storm = 0;
  const attacks = await Promise.all([
    repeat(until, () => exhaustDescriptors(srv.port)),
    repeat(until, () => unfinishedFragments(srv.port)),
    repeat(until, () => unfinishedFragments(srv.port)),
    repeat(until, () => oversizedBody(srv.port)),
    repeat(until, () => typingFlood(origin)),
    repeat(until, () => connectStorm(origin, storm++)),
  ]);
  const sent = await chatting;
  if (alice.socket.readyState === WebSocket.CLOSED || bob.socket.readyState === WebSocket.CLOSED) {
    const [a, b] = await Promise.all(
      [alice, bob].map(async (c) =>
        c.socket.readyState === WebSocket.CLOSED ? (await c.closed).code : "open"
      ),
    );
    throw new Error(`the pair was cut off (${a}/${b}):\n${srv.output().slice(-2000)}`);
  }
  // Every DM is acknowledged to alice and delivered to bob, in order.
  await alice.seen((f) => f.cid === `p${sent - 1}`);
  await within(20_000, "bob's last message", bob.seen((f) => f.cid === `p${sent - 1}`));
  clearInterval(sampler);
  const got = bob.queued.filter((f) => f.type === "message" && f.from === "alice");
  const lost = sent - got.length;
  assert.equal(await healthy(srv.port), 200);
  rss.after = rssMiB(srv.pid);
  latencies.sort((a, b) => a - b);
  const pct = (p: number) =>
    latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
  console.log(
    `soak: ${sent} messages, ${lost} lost; p50 ${pct(0.5).toFixed(1)} ms, p99 ${
      pct(0.99).toFixed(1)
    } ms; attack rounds ${attacks.join("/")} ` +
      `(descriptors/fragments/fragments/bodies/typing/connects); ` +
      `server RSS ${rss.before.toFixed(0)} → peak ${rss.peak.toFixed(0)} → after ${
        rss.after.toFixed(0)
      } MiB`,
  );
  await Promise.all([alice.close(), bob.close()]);
  assert.equal(lost, 0);
  assert.deepEqual(got.map((f) => f.cid), Array.from({ length: sent }, (_, i) => `p${i}`));
  assert.equal(srv.exited(), false);
  assert.doesNotMatch(srv.output(), /Uncaught/);
  assert.ok(rss.peak - rss.before < 256, `RSS grew by ${rss.peak - rss.before} MiB`);
});
