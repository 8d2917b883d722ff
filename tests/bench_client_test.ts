/**
 * The benchmark's raw WebSocket client (bench/ws.ts) against a real
 * `Deno.upgradeWebSocket` server: if it misread a frame, the benchmark would
 * count losses that never happened, or miss ones that did.
 */

import assert from "node:assert/strict";
import { clientFrame, isType, RawSocket, seqOf, Template, typeBytes } from "../bench/ws.ts";

/** An echo server on a free loopback port that also answers "big" and "ping-me" specially. */
function echoServer() {
  const received: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const { socket, response } = Deno.upgradeWebSocket(req, { protocol: "chat.v1" });
    socket.onmessage = (e) => {
      received.push(e.data);
      if (e.data === "big") {
        socket.send(`{"type":"message","text":"#00000007${"x".repeat(70_000)}"}`);
      } else if (e.data === "bye") socket.close(4000, "asked to");
      else socket.send(e.data);
    };
    return response;
  });
  return { server, port: server.addr.port, received };
}

Deno.test("bench client: frames of every length class arrive whole, in order, however TCP splits them", async () => {
  const { server, port, received } = echoServer();
  await using _ = server;
  const got: string[] = [];
  const want = 2 + 100 + 1;
  const all = Promise.withResolvers<void>();
  const socket = await RawSocket.connect({
    port,
    path: "/ws/x",
    protocols: ["chat.v1"],
    // A small read buffer makes the 70 KB frame and the batches span many reads.
    readBuffer: 1024,
    onFrame: (payload) => {
      got.push(new TextDecoder().decode(payload));
      if (got.length === want) all.resolve();
    },
  });
  const template = new Template(JSON.stringify({ type: "message", text: "#00000000 hi" }));
  socket.send(clientFrame("small"));
  socket.send(clientFrame("m".repeat(300))); // a 16-bit length
  for (let i = 0; i < 100; i++) socket.send(template.stamp(i)); // one write for all of them
  socket.send(clientFrame("big")); // answered with a 64-bit length
  // Bounded, so a misread length fails the test instead of hanging it.
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    all.promise,
    new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`only ${got.length} of ${want} frames in 10 s`)),
        10_000,
      );
    }),
  ]).finally(() => clearTimeout(timer));
  assert.deepEqual(received.slice(0, 2), ["small", "m".repeat(300)]);
  assert.equal(got[0], "small");
  assert.equal(got[1], "m".repeat(300));
  const message = typeBytes("message");
  for (let i = 0; i < 100; i++) {
    const bytes = new TextEncoder().encode(got[2 + i]);
    assert.ok(isType(bytes, message));
    assert.equal(seqOf(bytes), i);
  }
  assert.equal(got[102].length, 70_000 + '{"type":"message","text":"#00000007"}'.length);
  assert.equal(seqOf(new TextEncoder().encode(got[102])), 7);
  await socket.close();
});

Deno.test("bench client: a close from the server ends the socket with the server's code", async () => {
  const { server, port } = echoServer();
  await using _ = server;
  const closed = Promise.withResolvers<number>();
  const socket = await RawSocket.connect({
    port,
    path: "/ws/x",
    protocols: ["chat.v1"],
    onFrame: () => {},
    onClose: (code) => closed.resolve(code),
  });
  socket.send(clientFrame("bye"));
  assert.equal(await closed.promise, 4000);
  assert.equal(await socket.ended, 4000);
});

Deno.test("bench client: a refused handshake is an error naming the status", async () => {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () => new Response("no", { status: 429 }),
  );
  await using _ = server;
  await assert.rejects(
    RawSocket.connect({ port: server.addr.port, path: "/ws/x", onFrame: () => {} }),
    /handshake refused: HTTP\/1.1 429/,
  );
});
