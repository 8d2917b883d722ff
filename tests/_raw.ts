/**
 * Raw HTTP and WebSocket over TCP, for what `fetch` and `WebSocket` will not
 * send: request targets byte for byte, peers that never read or never pong,
 * frames with invalid UTF-8.
 *
 * @module
 */

import assert from "node:assert/strict";

/** How long a raw read waits for the server by default, in milliseconds. */
export const RAW_TIMEOUT_MS = 5000;

/**
 * One read that fails, saying what was expected and what arrived, if nothing
 * comes by `deadline`. The read left pending ends when the caller closes the
 * connection (as every caller does in `finally`).
 */
async function readBy(
  conn: Deno.TcpConn,
  buf: Uint8Array,
  deadline: number,
  expected: () => string,
): Promise<number | null> {
  const read = conn.read(buf);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`expected ${expected()} in time; it did not come`)),
      Math.max(0, deadline - Date.now()),
    );
  });
  try {
    return await Promise.race([read, late]);
  } finally {
    clearTimeout(timer);
    read.catch(() => {});
  }
}

/** Bytes as text for an error message, cut short. */
function shown(data: Uint8Array): string {
  const text = JSON.stringify(new TextDecoder().decode(data.subarray(0, 500)));
  return data.length > 500 ? `${text}… (${data.length} bytes)` : text;
}

/** A raw HTTP response. */
export interface RawResponse {
  status: number;
  headers: Headers;
  body: string;
}

/** The headers of a WebSocket handshake. */
export const HANDSHAKE = {
  "upgrade": "websocket",
  "connection": "Upgrade",
  "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
  "sec-websocket-version": "13",
};

/**
 * One HTTP/1.1 GET over a raw TCP connection, with the request target sent
 * byte for byte (`fetch` and `WebSocket` would normalise `..` and friends).
 * A 101 is read up to its head, and the connection then closed (the server
 * sees its socket close at once).
 */
export async function rawGet(
  port: number,
  target: string,
  /** The fields: by name (`host` replaces the default), or as lines after `host`, in order. */
  headers: Record<string, string> | [string, string][] = {},
  timeoutMs: number = RAW_TIMEOUT_MS,
): Promise<RawResponse> {
  const deadline = Date.now() + timeoutMs;
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const host = `127.0.0.1:${port}`;
    const fields = Array.isArray(headers)
      ? [["host", host], ...headers]
      : Object.entries({ host, ...headers });
    const lines = fields.map(([k, v]) => `${k}: ${v}\r\n`).join("");
    const request = new TextEncoder().encode(`GET ${target} HTTP/1.1\r\n${lines}\r\n`);
    for (let written = 0; written < request.length;) {
      written += await conn.write(request.subarray(written));
    }
    let data = new Uint8Array(0);
    const chunk = new Uint8Array(16 * 1024);
    const headEnd = () => {
      for (let i = 0; i + 3 < data.length; i++) {
        if (data[i] === 13 && data[i + 1] === 10 && data[i + 2] === 13 && data[i + 3] === 10) {
          return i;
        }
      }
      return -1;
    };
    for (;;) {
      const end = headEnd();
      if (end !== -1) {
        const head = new TextDecoder().decode(data.subarray(0, end));
        const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? "0");
        if (data.length >= end + 4 + length) {
          const [statusLine, ...fields] = head.split("\r\n");
          const status = Number(statusLine.split(" ")[1]);
          const h = new Headers();
          for (const field of fields) {
            const colon = field.indexOf(":");
            h.append(field.slice(0, colon).trim(), field.slice(colon + 1).trim());
          }
          const body = new TextDecoder().decode(data.subarray(end + 4, end + 4 + length));
          return { status, headers: h, body };
        }
      }
      const n = await readBy(
        conn,
        chunk,
        deadline,
        () => `a whole response to GET ${target} within ${timeoutMs} ms; got ${shown(data)}`,
      );
      if (n === null) throw new Error(`connection closed mid-response: ${shown(data)}`);
      const grown = new Uint8Array(data.length + n);
      grown.set(data);
      grown.set(chunk.subarray(0, n), data.length);
      data = grown;
    }
  } finally {
    conn.close();
  }
}

/** Opens a WebSocket by hand and returns the TCP connection once upgraded; it then never reads. */
export async function rawUpgrade(
  port: number,
  user: string,
  timeoutMs: number = RAW_TIMEOUT_MS,
): Promise<Deno.TcpConn> {
  const deadline = Date.now() + timeoutMs;
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await handshake(conn, port, user, deadline, timeoutMs);
  } catch (error) {
    // The caller never gets the connection: close it here, or it outlives the test.
    conn.close();
    throw error;
  }
  return conn;
}

/** The request head of a `chat.v1` WebSocket handshake for `user` on a loopback port. */
export function upgradeHead(port: number, user: string): string {
  return [
    `GET /ws/${user} HTTP/1.1`,
    `Host: 127.0.0.1:${port}`,
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Protocol: chat.v1",
    "",
    "",
  ].join("\r\n");
}

async function handshake(
  conn: Deno.TcpConn,
  port: number,
  user: string,
  deadline: number,
  timeoutMs: number,
): Promise<void> {
  await conn.write(new TextEncoder().encode(upgradeHead(port, user)));
  // Read only the response head; what follows stays unread in the socket.
  const buf = new Uint8Array(1);
  let head = "";
  while (!head.endsWith("\r\n\r\n")) {
    const n = await readBy(
      conn,
      buf,
      deadline,
      () =>
        `the response head of a handshake as ${user} within ${timeoutMs} ms; got ${
          JSON.stringify(head)
        }`,
    );
    if (n === null) throw new Error(`closed during the handshake: ${head}`);
    head += String.fromCharCode(buf[0]);
  }
  assert.match(head, /^HTTP\/1\.1 101/);
}

/** Writes one masked client frame (opcode 1 text, 2 binary, 8 close) with any payload bytes. */
export async function writeFrame(
  conn: Deno.TcpConn,
  opcode: number,
  payload: Uint8Array,
): Promise<void> {
  const length = payload.length;
  const head = length < 126
    ? [0x80 | opcode, 0x80 | length]
    : [0x80 | opcode, 0x80 | 126, length >> 8, length & 0xff];
  if (length > 0xffff) throw new Error("writeFrame: payloads up to 64 KiB");
  const mask = crypto.getRandomValues(new Uint8Array(4));
  const frame = new Uint8Array(head.length + 4 + length);
  frame.set(head);
  frame.set(mask, head.length);
  for (let i = 0; i < length; i++) frame[head.length + 4 + i] = payload[i] ^ mask[i % 4];
  for (let written = 0; written < frame.length;) {
    written += await conn.write(frame.subarray(written));
  }
}

/** Reads frames until a close frame arrives; resolves with its code (or null if the TCP connection just ends). */
export async function readCloseCode(
  conn: Deno.TcpConn,
  timeoutMs: number = RAW_TIMEOUT_MS,
): Promise<number | null> {
  const deadline = Date.now() + timeoutMs;
  let data = new Uint8Array(0);
  const chunk = new Uint8Array(4096);
  for (;;) {
    // Parse whole frames from the front of `data`.
    while (data.length >= 2) {
      let length = data[1] & 0x7f, offset = 2;
      if (length === 126) [length, offset] = [(data[2] << 8) | data[3], 4];
      else if (length === 127) throw new Error("readCloseCode: frame too large for a test");
      if (data.length < offset + length) break;
      if ((data[0] & 0x0f) === 8) {
        return length >= 2 ? (data[offset] << 8) | data[offset + 1] : null;
      }
      data = data.subarray(offset + length);
    }
    const n = await readBy(
      conn,
      chunk,
      deadline,
      () => `a close frame within ${timeoutMs} ms; got ${data.length} bytes of other frames`,
    );
    if (n === null) return null;
    const grown = new Uint8Array(data.length + n);
    grown.set(data);
    grown.set(chunk.subarray(0, n), data.length);
    data = grown;
  }
}

/** A frame from the server: FIN, opcode (1 text, 2 binary, 8 close, 9 ping, 10 pong) and payload. */
export interface RawFrame {
  fin: boolean;
  opcode: number;
  payload: Uint8Array;
}

/** Reads the server's frames from a raw connection one at a time, keeping what it read past each. */
export class FrameReader {
  #data = new Uint8Array(0);
  #chunk = new Uint8Array(16 * 1024);
  constructor(readonly conn: Deno.TcpConn, readonly timeoutMs: number = RAW_TIMEOUT_MS) {}

  /** The next frame, or null if the connection ends first. */
  async next(): Promise<RawFrame | null> {
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      const d = this.#data;
      // A header cut short by a read (2 bytes, 4 with a 16-bit length, 10 with a 64-bit one)
      // waits for the rest, as a payload does.
      const short = d.length >= 2 ? d[1] & 0x7f : 0;
      const headSize = short === 126 ? 4 : short === 127 ? 10 : 2;
      if (d.length >= headSize) {
        let length = short, offset = 2;
        if (length === 126) [length, offset] = [(d[2] << 8) | d[3], 4];
        else if (length === 127) {
          length = Number(new DataView(d.buffer, d.byteOffset).getBigUint64(2));
          offset = 10;
        }
        if (d.length >= offset + length) {
          this.#data = d.subarray(offset + length);
          return {
            fin: (d[0] & 0x80) !== 0,
            opcode: d[0] & 0x0f,
            payload: d.slice(offset, offset + length),
          };
        }
      }
      const n = await readBy(
        this.conn,
        this.#chunk,
        deadline,
        () => `a frame within ${this.timeoutMs} ms; got ${shown(this.#data)}`,
      );
      if (n === null) return null;
      const grown = new Uint8Array(d.length + n);
      grown.set(d);
      grown.set(this.#chunk.subarray(0, n), d.length);
      this.#data = grown;
    }
  }

  /** Frames until one matches; throws if the connection ends first. */
  async until(match: (frame: RawFrame) => boolean): Promise<RawFrame> {
    for (;;) {
      const frame = await this.next();
      if (frame === null) throw new Error("the connection ended before the frame expected");
      if (match(frame)) return frame;
    }
  }
}
