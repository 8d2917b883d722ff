/**
 * Queues without bounds: whatever a client can make the server hold or
 * compute is refused at a named limit before it is spent: frames waiting
 * behind slow ones, login bodies, password hashing, invitations, listings.
 */

import assert from "node:assert/strict";
import { type Frame, TestClient } from "./_client.ts";
import { startServer } from "./_server.ts";
import { within } from "./_hostile.ts";
import { Accounts } from "../lib/accounts.ts";
import { openStore } from "../lib/sql/open.ts";
import { startChatServer } from "../lib/server.ts";
import { DEFAULT_SETTINGS } from "../lib/settings.ts";

const isType = (type: string) => (f: Frame) => f.type === type;

Deno.test("2,000 set_password frames at once close the connection with 1008 at --max-queued-bytes; others are served", async () => {
  await using srv = await startServer({ settings: { maxQueuedBytes: 16 * 1024 } });
  const [alice] = await TestClient.join(srv.origin, "alice");
  const [mallory] = await TestClient.join(srv.origin, "mallory");
  try {
    for (let i = 0; i < 2000; i++) mallory.send({ type: "set_password", password: `password${i}` });
    await within(10_000, "mallory's close", mallory.closed);
    // Closed with 1008; the client may see only the end of the stream (its own frames were
    // still arriving when the close went out), so the count says it: most were never handled.
    const handled = mallory.queued.filter((f) => f.type === "password_set").length;
    assert.ok(handled < 100, `${handled} of 2,000 handled`);
    alice.send({ type: "ping" });
    await alice.next(isType("pong"));
  } finally {
    await Promise.all([alice.close(), mallory.close()]);
  }
});

/** Sends a login request head over raw TCP, then body bytes until the server answers. */
async function postUntilAnswered(
  port: number,
  head: string,
  chunk: (i: number) => Uint8Array,
): Promise<{ status: number; sent: number }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new TextEncoder().encode(head));
    let answer = "";
    const reading = (async () => {
      const buf = new Uint8Array(4096);
      const n = await conn.read(buf);
      answer = new TextDecoder().decode(buf.subarray(0, n ?? 0));
    })();
    let sent = 0;
    let answered = false;
    reading.then(() => answered = true, () => answered = true);
    for (let i = 0; !answered && sent < 64 * 1024 * 1024; i++) {
      try {
        const c = chunk(i);
        for (let w = 0; w < c.length;) w += await conn.write(c.subarray(w));
        sent += c.length;
      } catch {
        break; // the server closed the connection
      }
    }
    await within(5000, "an answer", reading);
    return { status: Number(answer.split(" ")[1]), sent };
  } finally {
    conn.close();
  }
}

Deno.test("a login body declared as 100 MB gets 413 before it is sent", async () => {
  await using srv = await startServer();
  const { status, sent } = await postUntilAnswered(
    srv.port,
    `POST /api/login HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n` +
      `content-length: 100000000\r\n\r\n`,
    () => new Uint8Array(64 * 1024).fill(0x20),
  );
  assert.equal(status, 413);
  assert.ok(sent < 16 * 1024 * 1024, `${sent} bytes taken`);
});

Deno.test("a chunked login body without a length gets 413 at --max-login-bytes", async () => {
  await using srv = await startServer();
  const piece = "x".repeat(60 * 1024);
  const { status, sent } = await postUntilAnswered(
    srv.port,
    `POST /api/login HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n` +
      `transfer-encoding: chunked\r\n\r\n`,
    () => new TextEncoder().encode(`${piece.length.toString(16)}\r\n${piece}\r\n`),
  );
  assert.equal(status, 413);
  assert.ok(sent < 16 * 1024 * 1024, `${sent} bytes taken`);
});

Deno.test("password hashing is bounded globally: six at once with one slot and one waiting, four are told to retry", async () => {
  const store = await openStore(":memory:");
  const accounts = new Accounts(store.db, {
    iterations: 100_000,
    maxConcurrentHashes: 1,
    maxQueuedHashes: 1,
  });
  const server = await startChatServer({
    settings: { ...DEFAULT_SETTINGS, hostname: "127.0.0.1", port: 0, data: ":memory:" },
    store,
    accounts,
  });
  const clients: TestClient[] = [];
  try {
    for (let i = 0; i < 6; i++) {
      clients.push((await TestClient.join(server.origin, `hasher${i}`))[0]);
    }
    for (const c of clients) c.send({ type: "set_password", password: "correct horse" });
    const answers = await Promise.all(
      clients.map((c) => c.next((f) => f.type === "password_set" || f.type === "error")),
    );
    const refused = answers.filter((f) => f.code === "rate_limited");
    assert.equal(refused.length, 4);
    assert.ok(refused.every((f) => f.retry_after > 0));
    assert.equal(answers.filter((f) => f.type === "password_set").length, 2);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await server.shutdown();
    await store.close();
  }
});

Deno.test("invitations to one user stop at --max-invites-per-user; the welcome stays small", async () => {
  await using srv = await startServer({ settings: { maxInvitesPerUser: 3 } });
  const [bob] = await TestClient.join(srv.origin, "bob");
  const [mallory] = await TestClient.join(srv.origin, "mallory");
  try {
    const codes: string[] = [];
    for (let i = 0; i < 5; i++) {
      mallory.send({ type: "create", room: `spam${i}`, private: true });
      await mallory.next((f) => f.type === "joined" && f.room === `spam${i}`);
      mallory.send({ type: "invite", room: `spam${i}`, user: "bob" });
      mallory.send({ type: "ping" });
      // The pong comes after the invite's answer, if it has one.
      await mallory.next(isType("pong"));
      const refused = mallory.queued.find((f) =>
        f.type === "error" && f.request?.room === `spam${i}`
      );
      codes.push(refused?.code ?? "ok");
    }
    assert.deepEqual(codes, ["ok", "ok", "ok", "forbidden", "forbidden"]);
    await bob.close();
    const [again, welcome] = await TestClient.join(srv.origin, "bob");
    assert.equal(welcome.invites.length, 3);
    await again.close();
  } finally {
    await Promise.all([bob.close(), mallory.close()]);
  }
});

Deno.test("rooms one user brings into being stop at --max-rooms-created-per-user, even after leaving them", async () => {
  await using srv = await startServer({ settings: { maxRoomsCreatedPerUser: 3 } });
  const [mallory] = await TestClient.join(srv.origin, "mallory");
  try {
    const answers: string[] = [];
    for (let i = 0; i < 5; i++) {
      mallory.send(
        i % 2 === 0 ? { type: "create", room: `heap${i}` } : { type: "join", room: `heap${i}` },
      );
      const f = await mallory.next((f) => f.type === "joined" || f.type === "error");
      answers.push(f.type === "joined" ? "joined" : f.code);
      if (f.type === "joined") mallory.send({ type: "leave", room: `heap${i}` });
    }
    assert.deepEqual(answers, ["joined", "joined", "joined", "bad_name", "bad_name"]);
    // Rooms that exist are still open to join.
    mallory.send({ type: "join", room: "heap0" });
    await mallory.next((f) => f.type === "joined" && f.room === "heap0");
  } finally {
    await mallory.close();
  }
});
