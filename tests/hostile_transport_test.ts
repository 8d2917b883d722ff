/**
 * Hostile transport: what an attacker does with raw TCP below the chat
 * protocol. Descriptor exhaustion, requests that never finish, and
 * WebSocket messages whose fragments never end, each against a server that
 * must refuse what it cannot take and keep serving everyone else.
 */

import assert from "node:assert/strict";
import { TestClient } from "./_client.ts";
import { rawUpgrade, readCloseCode, upgradeHead } from "./_raw.ts";
import { startServer } from "./_server.ts";
import { healthy, spawnLimited, within, writeFragment } from "./_hostile.ts";

Deno.test("descriptor exhaustion: 400 idle connections against ulimit -n 256 are refused beyond the limit, and the server keeps serving", async () => {
  await using srv = await spawnLimited(256);
  const conns: Deno.TcpConn[] = [];
  try {
    for (let i = 0; i < 400; i++) {
      conns.push(await Deno.connect({ hostname: "127.0.0.1", port: srv.port }));
    }
    // Beyond the limit a client is told so, not left hanging or reset.
    const last = conns.at(-1)!;
    const buf = new Uint8Array(512);
    const n = await within(5000, "a refusal", last.read(buf));
    assert.match(new TextDecoder().decode(buf.subarray(0, n ?? 0)), /^HTTP\/1\.1 503/);
  } finally {
    for (const c of conns) c.close();
  }
  assert.equal(await healthy(srv.port), 200);
  // The one a browser makes after: a chat still works.
  await using alice = await TestClient.connect(`http://127.0.0.1:${srv.port}`, "alice");
  await alice.next((f) => f.type === "welcome");
  assert.equal(srv.exited(), false);
  assert.doesNotMatch(srv.output(), /Uncaught/);
  assert.match(srv.output(), /connections open; refusing more/);
});

Deno.test("a connection that never sends a request is closed after --handshake-timeout", async () => {
  await using srv = await startServer({ settings: { handshakeTimeout: 1 } });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: srv.port });
  try {
    // A slowloris: half a request head, then silence.
    await conn.write(new TextEncoder().encode("GET /healthz HTTP/1.1\r\nhost: x\r\n"));
    const n = await within(
      5000,
      "the server closing the connection",
      conn.read(new Uint8Array(64)),
    );
    assert.equal(n, null);
  } finally {
    conn.close();
  }
  assert.equal(await healthy(srv.port), 200);
});

Deno.test("an unfinished fragmented message is closed with 1009 at --max-frame-bytes, not buffered: 64 MiB of continuations", async () => {
  await using srv = await startServer();
  await using bob = await TestClient.connect(srv.origin, "bob");
  await bob.next((f) => f.type === "welcome");
  const conn = await rawUpgrade(srv.port, "fragmenter");
  const rssBefore = Deno.memoryUsage().rss;
  let sent = 0;
  let peak = rssBefore;
  const chunk = new Uint8Array(60 * 1024).fill(0x61);
  const closed = readCloseCode(conn).catch(() => null);
  try {
    await writeFragment(conn, { fin: false, opcode: 1, payload: chunk });
    sent += chunk.length;
    while (sent < 64 * 1024 * 1024) {
      await writeFragment(conn, { fin: false, opcode: 0, payload: chunk });
      sent += chunk.length;
      if (sent % (4 * 1024 * 1024) < chunk.length) {
        peak = Math.max(peak, Deno.memoryUsage().rss);
      }
    }
  } catch {
    // The server closed the connection: what it should do.
  }
  const code = await within(5000, "a close frame", closed);
  conn.close();
  peak = Math.max(peak, Deno.memoryUsage().rss);
  console.log(
    `sent ${(sent / 1048576).toFixed(1)} MiB before the close (${code}); RSS ${
      (rssBefore / 1048576).toFixed(0)
    } → peak ${(peak / 1048576).toFixed(0)} MiB`,
  );
  assert.equal(code, 1009);
  assert.ok(sent < 16 * 1024 * 1024, `${sent} bytes were taken before the close`);
  assert.ok(peak - rssBefore < 48 * 1024 * 1024, `RSS grew by ${peak - rssBefore}`);
  // Nobody else noticed.
  bob.send({ type: "ping" });
  await bob.next((f) => f.type === "pong");
});

Deno.test("a handshake split across many small writes is still recognised, and its fragments bounded (1009)", async () => {
  await using srv = await startServer();
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: srv.port });
  try {
    const head = upgradeHead(srv.port, "splitter");
    // Seven bytes a write, so "Upgrade: websocket" never arrives in one piece.
    const bytes = new TextEncoder().encode(head);
    for (let i = 0; i < bytes.length; i += 7) {
      await conn.write(bytes.subarray(i, i + 7));
      // Each piece its own segment: wait until the previous one is surely read.
      await new Promise((r) => setTimeout(r, 1));
    }
    // The 101 head first, byte by byte, so what follows is frames.
    let answer = "";
    const one = new Uint8Array(1);
    while (!answer.endsWith("\r\n\r\n") && await conn.read(one) !== null) {
      answer += String.fromCharCode(one[0]);
    }
    assert.match(answer, /^HTTP\/1\.1 101/);
    const closed = readCloseCode(conn).catch(() => null);
    const chunk = new Uint8Array(60 * 1024).fill(0x62);
    let sent = 0;
    try {
      await writeFragment(conn, { fin: false, opcode: 1, payload: chunk });
      for (; sent < 32 * 1024 * 1024; sent += chunk.length) {
        await writeFragment(conn, { fin: false, opcode: 0, payload: chunk });
      }
    } catch {
      // Closed by the server, as it should.
    }
    assert.equal(await within(5000, "a close frame", closed), 1009);
    assert.ok(sent < 16 * 1024 * 1024, `${sent} bytes taken`);
  } finally {
    conn.close();
  }
});

Deno.test("keep-alive HTTP connections past the descriptor budget are answered 503, not left to exhaust the server", async () => {
  await using srv = await spawnLimited(256);
  // Each relayed request holds three descriptors (the client's, the relay's and the server's
  // end) until its connection's next head is due: 200 of them would need 600.
  const conns: Deno.TcpConn[] = [];
  const statuses: number[] = [];
  try {
    for (let i = 0; i < 200; i++) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: srv.port });
      conns.push(conn);
      await conn.write(
        new TextEncoder().encode(`GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n`),
      );
      const buf = new Uint8Array(1024);
      const n = await within(5000, "an answer", conn.read(buf));
      statuses.push(Number(new TextDecoder().decode(buf.subarray(0, n ?? 0)).split(" ")[1]));
    }
  } finally {
    for (const c of conns) c.close();
  }
  assert.ok(statuses.includes(200), "the first are served");
  assert.deepEqual(statuses.filter((s) => s !== 200 && s !== 503), [], "200 or 503, nothing else");
  assert.equal(statuses.at(-1), 503, "the last are refused");
  assert.equal(await healthy(srv.port), 200);
  await using alice = await TestClient.connect(`http://127.0.0.1:${srv.port}`, "alice");
  await alice.next((f) => f.type === "welcome");
  assert.equal(srv.exited(), false);
  assert.doesNotMatch(srv.output(), /Uncaught|Too many open files/);
});
