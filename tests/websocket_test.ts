/**
 * The server's own WebSocket (lib/websocket.ts), which the guard speaks
 * instead of relaying to `Deno.upgradeWebSocket`: the framing a raw client
 * can send (fragments, control frames between them, 64-bit lengths, masks,
 * bad UTF-8, oversized messages), the closing handshake, and backpressure.
 * Against the chat server where a chat frame can show the result, and
 * against the guard with a bare handler where only the socket can.
 */

import assert from "node:assert/strict";
import { isPresence, TestClient } from "./_client.ts";
import { FrameReader, rawUpgrade, upgradeHead } from "./_raw.ts";
import { startServer } from "./_server.ts";
import { within } from "./_hostile.ts";
import { startGuard } from "../lib/guard.ts";
import { type GuardedWebSocket, upgradeHere } from "../lib/websocket.ts";

const text = (s: string) => new TextEncoder().encode(s);
const decode = (b: Uint8Array) => new TextDecoder().decode(b);

/**
 * One client frame, byte for byte: any FIN, opcode and reserved bits, masked
 * or not, and its length in the 64-bit form when `long` (or `announce`, a
 * length claimed in the header with only `payload` following it).
 */
function frame(opts: {
  fin?: boolean;
  opcode: number;
  payload?: Uint8Array;
  masked?: boolean;
  long?: boolean;
  announce?: number;
  rsv?: number;
}): Uint8Array {
  const payload = opts.payload ?? new Uint8Array(0);
  const length = opts.announce ?? payload.length;
  const masked = opts.masked ?? true;
  const head: number[] = [((opts.fin ?? true) ? 0x80 : 0) | (opts.rsv ?? 0) | opts.opcode];
  const m = masked ? 0x80 : 0;
  if (opts.long || length > 0xffff) {
    head.push(m | 127);
    const big = new Uint8Array(8);
    new DataView(big.buffer).setBigUint64(0, BigInt(length));
    head.push(...big);
  } else if (length >= 126) head.push(m | 126, length >> 8, length & 0xff);
  else head.push(m | length);
  const mask = masked ? crypto.getRandomValues(new Uint8Array(4)) : new Uint8Array(0);
  const out = new Uint8Array(head.length + mask.length + payload.length);
  out.set(head);
  out.set(mask, head.length);
  for (let i = 0; i < payload.length; i++) {
    out[head.length + mask.length + i] = masked ? payload[i] ^ mask[i & 3] : payload[i];
  }
  return out;
}

async function write(conn: Deno.Conn, ...frames: Uint8Array[]): Promise<void> {
  for (const f of frames) {
    for (let written = 0; written < f.length;) written += await conn.write(f.subarray(written));
  }
}

/** A close frame's code, or null for an empty one. */
const codeOf = (payload: Uint8Array) => payload.length >= 2 ? (payload[0] << 8) | payload[1] : null;

/** A raw chat.v1 client past its welcome, with a frame reader. */
async function rawChat(port: number, user: string) {
  const conn = await rawUpgrade(port, user);
  const frames = new FrameReader(conn);
  await frames.until((f) => f.opcode === 1 && JSON.parse(decode(f.payload)).type === "welcome");
  return { conn, frames, [Symbol.dispose]: () => conn.close() };
}

const isPong = (f: { opcode: number; payload: Uint8Array }) =>
  f.opcode === 1 && JSON.parse(decode(f.payload)).type === "pong";

Deno.test("a message in three fragments with a ping between them is reassembled, and the ping answered first", async () => {
  await using srv = await startServer();
  using c = await rawChat(srv.port, "fragments");
  const json = text(JSON.stringify({ type: "ping" }));
  await write(
    c.conn,
    frame({ fin: false, opcode: 1, payload: json.subarray(0, 3) }),
    frame({ opcode: 9, payload: text("between") }),
    frame({ fin: false, opcode: 0, payload: json.subarray(3, 7) }),
    frame({ opcode: 0, payload: json.subarray(7) }),
  );
  const pong = await c.frames.next();
  assert.equal(pong?.opcode, 10, "a pong control frame first");
  assert.equal(decode(pong!.payload), "between");
  assert.ok(isPong((await c.frames.next())!), "then the chat pong for the reassembled ping");
});

Deno.test("a frame whose length is written in the 64-bit form is read like any other", async () => {
  await using srv = await startServer();
  using c = await rawChat(srv.port, "longform");
  await write(c.conn, frame({ opcode: 1, payload: text('{"type":"ping"}'), long: true }));
  assert.ok(isPong(await c.frames.until((f) => f.opcode === 1)));
});

Deno.test("a 64-bit length of 1 TiB is closed with 1009 on its header, before any payload is sent", async () => {
  await using srv = await startServer();
  using c = await rawChat(srv.port, "terabyte");
  await write(c.conn, frame({ opcode: 2, announce: 2 ** 40 }));
  const close = await c.frames.until((f) => f.opcode === 8);
  assert.equal(codeOf(close.payload), 1009);
});

Deno.test("a message whose fragments together pass --max-frame-bytes is closed with 1009 on the header of the one that passes it", async () => {
  await using srv = await startServer({ settings: { maxFrameBytes: 4096 } });
  await using bob = await TestClient.connect(srv.origin, "bob");
  await bob.next((f) => f.type === "welcome");
  using c = await rawChat(srv.port, "fragmenter");
  // 4,000 bytes accepted, then a continuation that claims 200 more and sends none of them.
  await write(
    c.conn,
    frame({ fin: false, opcode: 1, payload: new Uint8Array(4000).fill(0x20) }),
    frame({ fin: true, opcode: 0, announce: 200 }),
  );
  const close = await c.frames.until((f) => f.opcode === 8);
  assert.equal(codeOf(close.payload), 1009);
  assert.match(decode(close.payload.subarray(2)), /4096 bytes/);
  // Nobody else noticed.
  bob.send({ type: "ping" });
  await bob.next((f) => f.type === "pong");
});

for (
  const [name, bytes, code] of [
    [
      "invalid UTF-8 in a text frame",
      frame({ opcode: 1, payload: new Uint8Array([0xc3, 0x28]) }),
      1007,
    ],
    [
      "invalid UTF-8 split across fragments",
      [
        frame({ fin: false, opcode: 1, payload: new Uint8Array([0x22, 0xe4, 0xbd]) }),
        frame({ opcode: 0, payload: new Uint8Array([0x22]) }),
      ],
      1007,
    ],
    ["an unmasked frame", frame({ opcode: 1, payload: text("{}"), masked: false }), 1002],
    ["a reserved bit set", frame({ opcode: 1, payload: text("{}"), rsv: 0x40 }), 1002],
    ["an unknown opcode", frame({ opcode: 3, payload: text("{}") }), 1002],
    ["a continuation with nothing to continue", frame({ opcode: 0, payload: text("{}") }), 1002],
    [
      "a new message inside a fragmented one",
      [
        frame({ fin: false, opcode: 1, payload: text("{") }),
        frame({ opcode: 1, payload: text("{}") }),
      ],
      1002,
    ],
    ["a fragmented ping", frame({ fin: false, opcode: 9, payload: text("x") }), 1002],
    ["a ping of 126 bytes", frame({ opcode: 9, payload: new Uint8Array(126) }), 1002],
    [
      "a close code that may not be sent (1005)",
      frame({ opcode: 8, payload: new Uint8Array([3, 237]) }),
      1002,
    ],
    ["a 64-bit length with its top bit set", frame({ opcode: 2, announce: 2 ** 63 }), 1002],
  ] as const
) {
  Deno.test(`${name} is closed with ${code}, and the server keeps serving`, async () => {
    await using srv = await startServer();
    using c = await rawChat(srv.port, "mallory");
    await write(c.conn, ...(Array.isArray(bytes) ? bytes : [bytes]));
    const close = await c.frames.until((f) => f.opcode === 8);
    assert.equal(codeOf(close.payload), code);
    // Then the server ends the connection.
    assert.equal(await c.frames.next(), null);
    await using alice = await TestClient.connect(srv.origin, "alice");
    await alice.next((f) => f.type === "welcome");
  });
}

Deno.test("a client's close is answered with its code, the connection ends, and the user goes offline", async () => {
  await using srv = await startServer();
  await using alice = await TestClient.connect(srv.origin, "alice");
  await alice.next((f) => f.type === "welcome");
  using c = await rawChat(srv.port, "leaver");
  await alice.next(isPresence("leaver", true));
  await write(c.conn, frame({ opcode: 8, payload: new Uint8Array([0x03, 0xe8, ...text("bye")]) }));
  const close = await c.frames.until((f) => f.opcode === 8);
  assert.equal(codeOf(close.payload), 1000);
  assert.equal(await c.frames.next(), null, "the server ends the TCP connection");
  await alice.next(isPresence("leaver", false));
});

/**
 * The guard with a handler that only upgrades, and hands each socket to
 * `onSocket`: for what only the socket itself shows (its events, its
 * buffered amount).
 */
function bareGuard(onSocket: (socket: GuardedWebSocket) => void) {
  const guard = startGuard({
    listen: { hostname: "127.0.0.1", port: 0 },
    // Nothing here is relayed: every request in these tests is a handshake to /ws/.
    upstream: { hostname: "127.0.0.1", port: 9 },
    maxConnections: 16,
    handshakeTimeoutMs: 5000,
    maxMessageBytes: 64 * 1024,
    handshake: (req) => {
      const upgraded = upgradeHere(req, { idleTimeout: 0 })!;
      onSocket(upgraded.socket);
      return Promise.resolve(upgraded.response);
    },
  });
  return {
    port: guard.addr.port,
    [Symbol.asyncDispose]: async () => {
      guard.close();
      await guard.finished;
    },
  };
}

Deno.test("the close event fires once when the server's close, the client's close and the end of the stream race", async () => {
  const closes: number[] = [];
  const opened = Promise.withResolvers<GuardedWebSocket>();
  const guard = bareGuard((socket) => {
    socket.onopen = () => opened.resolve(socket);
    socket.onclose = (e) => closes.push(e.code);
  });
  try {
    const conn = await rawUpgrade(guard.port, "racer");
    const socket = await opened.promise;
    // The client closes and hangs up at the moment the server closes.
    socket.close(4001, "server side");
    await write(conn, frame({ opcode: 8, payload: new Uint8Array([0x03, 0xe8]) }));
    conn.close();
    await socket.ended;
  } finally {
    await guard[Symbol.asyncDispose]();
  }
  assert.equal(closes.length, 1, `close fired ${closes.length} times: ${closes}`);
});

Deno.test("text the server sends arrives whole in each length form, in ASCII, Chinese and emoji", async () => {
  const opened = Promise.withResolvers<GuardedWebSocket>();
  await using guard = bareGuard((socket) => socket.onopen = () => opened.resolve(socket));
  const conn = await rawUpgrade(guard.port, "texts");
  try {
    const socket = await opened.promise;
    // Either side of each header form's bounds (125/126 bytes, 65535/65536), counted in
    // UTF-16 units for the ASCII ones and in bytes for the others.
    const texts = [
      "",
      "x".repeat(125),
      "x".repeat(126),
      "x".repeat(65535),
      "x".repeat(65536),
      "x".repeat(70_000),
      "你".repeat(42),
      "a" + "好".repeat(41),
      "好".repeat(21_845) + "a",
      "x".repeat(100) + "😀",
      "😀".repeat(16_384),
      // Frames sent in one turn share an array: three fill all of one but 116 bytes, and the
      // next (300 bytes in 100 UTF-16 units) does not fit in them.
      "x".repeat(600),
      "y".repeat(600),
      "z".repeat(720),
      "好".repeat(100),
    ];
    for (const t of texts) socket.send(t);
    const frames = new FrameReader(conn);
    for (const t of texts) {
      const f = await frames.next();
      assert.equal(f?.opcode, 1);
      assert.equal(f?.fin, true);
      assert.equal(decode(f!.payload), t, `a text of ${t.length} UTF-16 units`);
    }
    socket.close(1000);
  } finally {
    conn.close();
  }
});

Deno.test("bufferedAmount counts what a reader that stopped has not taken, and falls to 0 once it reads", async () => {
  const opened = Promise.withResolvers<GuardedWebSocket>();
  await using guard = bareGuard((socket) => socket.onopen = () => opened.resolve(socket));
  const conn = await rawUpgrade(guard.port, "stalled");
  try {
    const socket = await opened.promise;
    const message = "x".repeat(64 * 1024);
    const count = 512; // 32 MiB: far more than loopback's socket buffers hold
    for (let i = 0; i < count; i++) socket.send(message);
    const frameBytes = message.length + 10; // a 64-bit length: a 10-byte header
    assert.equal(socket.bufferedAmount, count * frameBytes, "all of it, before any write");
    // Once the writes stall, what the kernel took is gone from the count and the rest is not.
    let last = -1;
    while (socket.bufferedAmount !== last) {
      last = socket.bufferedAmount;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(last > count * frameBytes / 2, `${last} bytes still queued`);
    // The reader takes it all: the count drains to nothing.
    const frames = new FrameReader(conn);
    for (let i = 0; i < count; i++) {
      assert.equal((await frames.next())?.payload.length, message.length);
    }
    await within(
      5000,
      "the buffered amount to drain",
      (async () => {
        while (socket.bufferedAmount > 0) await new Promise((r) => setTimeout(r, 10));
      })(),
    );
    socket.close(1000);
    await write(conn, frame({ opcode: 8, payload: new Uint8Array([0x03, 0xe8]) }));
    await socket.ended;
  } finally {
    conn.close();
  }
});

Deno.test("a socket closed by its handler before it opens never opens, and its close fires once", async () => {
  const events: string[] = [];
  const closed = Promise.withResolvers<GuardedWebSocket>();
  const guard = bareGuard((socket) => {
    socket.onopen = () => events.push("open");
    socket.onclose = () => events.push("close");
    socket.close(4003, "refused before it opened");
    closed.resolve(socket);
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: guard.port });
  try {
    await write(conn, text(upgradeHead(guard.port, "early")));
    const socket = await closed.promise;
    await socket.ended;
    // No 101: the connection just ends.
    assert.equal(await new FrameReader(conn).next(), null);
  } finally {
    conn.close();
    await guard[Symbol.asyncDispose]();
  }
  assert.deepEqual(events, ["close"]);
});

Deno.test("a close listener that throws does not keep the others (which give back places) from running", async () => {
  const released: string[] = [];
  const opened = Promise.withResolvers<GuardedWebSocket>();
  const guard = bareGuard((socket) => {
    socket.onopen = () => opened.resolve(socket);
    socket.onclose = () => {
      throw new Error("a listener's bug");
    };
    socket.addEventListener("close", () => released.push("released"));
  });
  const logged: string[] = [];
  const error = console.error;
  console.error = (...args: unknown[]) => logged.push(args.map(String).join(" "));
  try {
    const conn = await rawUpgrade(guard.port, "thrower");
    const socket = await opened.promise;
    await write(conn, frame({ opcode: 8, payload: new Uint8Array([0x03, 0xe8]) }));
    await socket.ended;
    conn.close();
  } finally {
    console.error = error;
    await guard[Symbol.asyncDispose]();
  }
  assert.deepEqual(released, ["released"]);
  assert.match(logged.join("\n"), /a close listener threw/);
});

/** The status line's code of the answer to a request head written by hand. */
async function statusOf(port: number, head: string): Promise<number> {
  using conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await write(conn, text(head));
  let got = "";
  const chunk = new Uint8Array(4096);
  while (!got.includes("\r\n")) {
    const n = await within(
      5000,
      `an answer to ${JSON.stringify(head.split("\r\n")[0])}`,
      conn.read(chunk),
    );
    if (n === null) break;
    got += decode(chunk.subarray(0, n));
  }
  return Number(got.split(" ")[1]);
}

Deno.test("a handshake with two Hosts, a body, or a malformed header is refused with 400, and the next one is upgraded", async () => {
  await using server = await startServer();
  const port = Number(new URL(server.origin).port);
  const valid = upgradeHead(port, "ann");
  const broken = {
    "two Host headers": valid.replace("\r\n\r\n", `\r\nHost: 127.0.0.1:${port}\r\n\r\n`),
    "a Host naming two": valid.replace(/Host: [^\r]*/, "Host: a.example, b.example"),
    "no Host": valid.replace(/Host: [^\r]*\r\n/, ""),
    "a Content-Length": valid.replace("\r\n\r\n", "\r\nContent-Length: 5\r\n\r\n"),
    "a Transfer-Encoding": valid.replace("\r\n\r\n", "\r\nTransfer-Encoding: chunked\r\n\r\n"),
    "a space in a header's name": valid.replace("\r\n\r\n", "\r\nX Bad: 1\r\n\r\n"),
    "a NUL in a value": valid.replace("\r\n\r\n", "\r\nX-Bad: a\u0000b\r\n\r\n"),
  };
  for (const [what, head] of Object.entries(broken)) {
    assert.equal(await statusOf(port, head), 400, what);
  }
  assert.equal(await statusOf(port, valid), 101);
});

Deno.test("the tests' frame reader waits for a header that comes in pieces, whatever its length's size", async () => {
  // The reader's connection hands out what was "sent" piece by piece, one piece a read: the
  // parsing is what is tested here, so no socket decides where the pieces end.
  const pieces: Uint8Array[] = [];
  const conn = {
    read(buffer: Uint8Array): Promise<number | null> {
      const piece = pieces.shift();
      if (!piece) return Promise.resolve(null);
      buffer.set(piece);
      return Promise.resolve(piece.length);
    },
  } as unknown as Deno.TcpConn;
  const frames = new FrameReader(conn);
  // Unmasked text frames with a 7-bit, a 16-bit and a 64-bit length, each split inside its header
  // (the 64-bit form for a short payload, so that it fits one read of the reader's).
  const heads: Array<[number, number[]]> = [
    [5, [0x81, 5]],
    [300, [0x81, 126, 300 >> 8, 300 & 0xff]],
    [10_000, [0x81, 127, 0, 0, 0, 0, 0, 0, 10_000 >> 8, 10_000 & 0xff]],
  ];
  for (const [size, head] of heads) {
    const bytes = new Uint8Array([...head, ...new Uint8Array(size).fill(0x61)]);
    pieces.push(bytes.subarray(0, 3), bytes.subarray(3));
    const frame = await frames.next();
    assert.equal(frame?.opcode, 1);
    assert.equal(frame?.payload.length, size, `a frame of ${size} bytes`);
  }
});
