/**
 * A lean WebSocket client over raw TCP for the load generator: frames are
 * encoded (and masked, with a zero key) once, ahead of time; everything sent
 * in one tick goes out in one write; received frames are handed over as byte
 * views, parsed only as far as the generator needs. The browser `WebSocket`
 * costs an event and a string per frame, which would make the generator,
 * not the server, the limit.
 *
 * @module
 */

const encoder = new TextEncoder();

/** Opcodes of RFC 6455. */
export const Op = { text: 1, binary: 2, close: 8, ping: 9, pong: 10 } as const;

/** A client frame (FIN, masked with a zero key, so the payload bytes stay as they are). */
export function clientFrame(payload: string | Uint8Array, opcode: number = Op.text): Uint8Array {
  const body = typeof payload === "string" ? encoder.encode(payload) : payload;
  const len = body.length;
  const head = len < 126 ? 2 : len < 65536 ? 4 : 10;
  const out = new Uint8Array(head + 4 + len);
  out[0] = 0x80 | opcode;
  if (len < 126) {
    out[1] = 0x80 | len;
  } else if (len < 65536) {
    out[1] = 0x80 | 126;
    out[2] = len >> 8;
    out[3] = len & 255;
  } else {
    out[1] = 0x80 | 127;
    new DataView(out.buffer).setBigUint64(2, BigInt(len));
  }
  out.set(body, head + 4);
  return out;
}

/** Width of the sequence number stamped into pre-encoded frames. */
export const SEQ_DIGITS = 8;
/** What precedes the sequence number in a message's text. */
export const SEQ_MARK = 0x23; // "#"
/**
 * What precedes a client id's digits in a template: the sequence number, in
 * order as the page's time-ordered UUIDv7s are, or reversed, which scatters
 * consecutive sends over the key space as random UUIDs are (see
 * {@linkcode Template}).
 */
export const CID_MARK = 0x40; // "@"

/**
 * The benchmark's kinds of client id (`--cids`), by the number a phase's
 * `params.cids` carries: none, in time order (the page's), or scattered.
 */
export const CidMode = { off: 0, ordered: 1, random: 2 } as const;

/**
 * A pre-encoded frame whose text carries `#` and {@linkcode SEQ_DIGITS}
 * digits: {@linkcode Template.stamp} copies it with a sequence number.
 */
export class Template {
  #bytes: Uint8Array;
  #at: number;
  #cidAt: number;
  #scatter: boolean;

  /**
   * `json` must contain `#` followed by SEQ_DIGITS zeros exactly once, and
   * may contain `@` followed by SEQ_DIGITS zeros once (a client id), stamped
   * with the sequence number reversed when `scatter` is set.
   */
  constructor(json: string, { scatter = false }: { scatter?: boolean } = {}) {
    this.#bytes = clientFrame(json);
    this.#at = this.#bytes.indexOf(SEQ_MARK) + 1;
    if (this.#at === 0) throw new Error(`no ${String.fromCharCode(SEQ_MARK)} in ${json}`);
    this.#cidAt = this.#bytes.indexOf(CID_MARK) + 1;
    this.#scatter = scatter;
  }

  /** A copy with `seq` in its digits (and in its client id's, reversed if scattered). */
  stamp(seq: number): Uint8Array {
    const out = this.#bytes.slice();
    Template.#digits(out, this.#at, seq, false);
    if (this.#cidAt > 0) Template.#digits(out, this.#cidAt, seq, this.#scatter);
    return out;
  }

  static #digits(out: Uint8Array, at: number, n: number, reversed: boolean): void {
    for (let i = 0; i < SEQ_DIGITS; i++) {
      out[reversed ? at + i : at + SEQ_DIGITS - 1 - i] = 48 + (n % 10);
      n = Math.floor(n / 10);
    }
  }
}

/** The sequence number after the first `#` of a payload, or -1. */
export function seqOf(payload: Uint8Array): number {
  const at = payload.indexOf(SEQ_MARK);
  if (at === -1 || at + SEQ_DIGITS >= payload.length) return -1;
  let n = 0;
  for (let i = at + 1; i <= at + SEQ_DIGITS; i++) n = n * 10 + payload[i] - 48;
  return n;
}

const TYPE_AT = '{"type":"'.length;

/** Whether a server frame's payload starts `{"type":"<type>"`. */
export function isType(payload: Uint8Array, type: Uint8Array): boolean {
  if (payload.length < TYPE_AT + type.length + 1) return false;
  for (let i = 0; i < type.length; i++) if (payload[TYPE_AT + i] !== type[i]) return false;
  return payload[TYPE_AT + type.length] === 0x22;
}

/** Bytes of a type name, for {@linkcode isType}. */
export const typeBytes = (type: string): Uint8Array => encoder.encode(type);

/** Options of {@linkcode RawSocket.connect}. */
export interface RawSocketOptions {
  port: number;
  /** Path and query, e.g. `/ws/alice`. */
  path: string;
  /** Subprotocols to offer. */
  protocols?: string[];
  /** Size of this socket's read buffer. */
  readBuffer?: number;
  /** Each data frame's payload: a view valid only during the call. */
  onFrame: (payload: Uint8Array) => void;
  /** When the connection ends: the close code (1006 for none). */
  onClose?: (code: number) => void;
}

const CLOSE_NORMAL = clientFrame(new Uint8Array([0x03, 0xe8]), Op.close);

/** A WebSocket over a raw TCP connection. */
export class RawSocket {
  #conn: Deno.TcpConn;
  #queue: Uint8Array[] = [];
  #flushing = false;
  #closing = false;
  #ended = Promise.withResolvers<number>();
  /** Resolves with the close code when the connection has ended. */
  readonly ended: Promise<number> = this.#ended.promise;

  private constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
  }

  /** Connects and completes the handshake; throws on anything but 101. */
  static async connect(options: RawSocketOptions): Promise<RawSocket> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: options.port });
    conn.setNoDelay(true);
    const protocols = options.protocols?.length
      ? `Sec-WebSocket-Protocol: ${options.protocols.join(", ")}\r\n`
      : "";
    const request = `GET ${options.path} HTTP/1.1\r\nHost: 127.0.0.1:${options.port}\r\n` +
      "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
      `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${protocols}\r\n`;
    const socket = new RawSocket(conn);
    try {
      await socket.#writeAll(encoder.encode(request));
      const buffer = new Uint8Array(options.readBuffer ?? 16384);
      let have = 0;
      let end = -1;
      while (end === -1) {
        if (have === buffer.length) throw new Error("handshake answer too long");
        const n = await conn.read(buffer.subarray(have));
        if (n === null) throw new Error("closed during the handshake");
        const from = Math.max(0, have - 3);
        have += n;
        for (let i = from; i + 3 < have; i++) {
          if (buffer[i] === 13 && buffer[i + 1] === 10 && buffer[i + 2] === 13) {
            if (buffer[i + 3] === 10) {
              end = i + 4;
              break;
            }
          }
        }
      }
      const status = new TextDecoder().decode(buffer.subarray(0, 12));
      if (status !== "HTTP/1.1 101") {
        const head = new TextDecoder().decode(buffer.subarray(0, end)).split("\r\n")[0];
        throw new Error(`handshake refused: ${head}`);
      }
      void socket.#read(buffer, buffer.slice(end, have), options);
    } catch (error) {
      conn.close();
      throw error;
    }
    return socket;
  }

  /** Queues a pre-encoded frame; frames queued in one tick go out in one write. */
  send(frame: Uint8Array): void {
    if (this.#closing) return;
    this.#queue.push(frame);
    if (!this.#flushing) {
      this.#flushing = true;
      queueMicrotask(() => void this.#flush());
    }
  }

  /** Sends a close frame; the connection ends when the server answers (or in 2 s). */
  close(): Promise<number> {
    if (!this.#closing) {
      this.send(CLOSE_NORMAL);
      this.#closing = true;
      const timer = setTimeout(() => this.#end(1006), 2000);
      this.ended.finally(() => clearTimeout(timer));
    }
    return this.ended;
  }

  /** Whether it is closing or closed. */
  get closing(): boolean {
    return this.#closing;
  }

  #end(code: number): void {
    try {
      this.#conn.close();
    } catch {
      // Closed already.
    }
    this.#ended.resolve(code);
  }

  async #writeAll(bytes: Uint8Array): Promise<void> {
    for (let written = 0; written < bytes.length;) {
      written += await this.#conn.write(bytes.subarray(written));
    }
  }

  async #flush(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const queue = this.#queue;
        this.#queue = [];
        let bytes = queue[0];
        if (queue.length > 1) {
          let size = 0;
          for (const frame of queue) size += frame.length;
          bytes = new Uint8Array(size);
          let at = 0;
          for (const frame of queue) {
            bytes.set(frame, at);
            at += frame.length;
          }
        }
        await this.#writeAll(bytes);
      }
    } catch {
      this.#end(1006);
    } finally {
      this.#flushing = false;
    }
  }

  async #read(buffer: Uint8Array, initial: Uint8Array, options: RawSocketOptions): Promise<void> {
    let pending: Uint8Array | undefined;
    let code = 1006;
    /** Parses what arrived; false once a close frame came. */
    const take = (data: Uint8Array): boolean => {
      const used = this.#parse(data, options);
      if (used < 0) {
        code = -used;
        return false;
      }
      // Keep the unparsed tail, copied: the buffer is read into again.
      pending = used < data.length ? data.slice(used) : undefined;
      return true;
    };
    try {
      if (initial.length === 0 || take(initial)) {
        for (;;) {
          const n = await this.#conn.read(buffer);
          if (n === null) break;
          let data = buffer.subarray(0, n);
          if (pending) {
            const joined = new Uint8Array(pending.length + n);
            joined.set(pending);
            joined.set(data, pending.length);
            data = joined;
          }
          if (!take(data)) break;
        }
      }
    } catch {
      // Reset by the peer: 1006.
    }
    this.#end(code);
    options.onClose?.(code);
  }

  /** Handles the whole frames in `data`; returns the bytes used, or -code on a close frame. */
  #parse(data: Uint8Array, options: RawSocketOptions): number {
    let at = 0;
    while (data.length - at >= 2) {
      const short = data[at + 1] & 127;
      let head = 2;
      let len = short;
      if (short === 126) {
        if (data.length - at < 4) break;
        len = (data[at + 2] << 8) | data[at + 3];
        head = 4;
      } else if (short === 127) {
        if (data.length - at < 10) break;
        len = data[at + 6] * 2 ** 24 + ((data[at + 7] << 16) | (data[at + 8] << 8) | data[at + 9]);
        head = 10;
      }
      if (data.length - at < head + len) break;
      const op = data[at] & 15;
      const payload = data.subarray(at + head, at + head + len);
      at += head + len;
      if (op === Op.text || op === Op.binary) options.onFrame(payload);
      else if (op === Op.ping) this.send(clientFrame(payload.slice(), Op.pong));
      else if (op === Op.close) {
        if (!this.#closing) this.send(CLOSE_NORMAL);
        this.#closing = true;
        return -(len >= 2 ? (payload[0] << 8) | payload[1] : 1005);
      }
    }
    return at;
  }
}
