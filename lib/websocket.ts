/**
 * The server side of RFC 6455 on a raw TCP connection, for the guard
 * (lib/guard.ts) to terminate WebSocket itself instead of relaying every byte
 * to `Deno.upgradeWebSocket`, which assembles a fragmented message with no
 * size limit (denoland/deno#15809) and lets `bufferedAmount` grow without
 * bound. Here:
 *
 * - a message, all its fragments together, is bounded by `maxMessageBytes`,
 *   checked on each frame's header before its payload is read (1009);
 * - text is validated as UTF-8 (1007), protocol errors close with 1002;
 * - control frames may come between fragments; a ping is answered with a pong;
 * - `close` runs the closing handshake and the `close` event fires exactly once;
 * - `bufferedAmount` is the bytes queued and not yet written to the socket;
 *   frames sent in one turn of the event loop go out in one write;
 * - per connection it keeps one small read buffer, grown only for a large frame.
 *
 * The surface is what lib/server.ts uses of a Deno `WebSocket`
 * ({@linkcode ServerSocket}), so the hub's `Peer` works unchanged.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { LogOnce } from "./log.ts";

const log = new LogOnce();
const encoder = new TextEncoder();
const utf8 = new TextDecoder("utf-8", { fatal: true });

/** The GUID of RFC 6455 §1.3, appended to the client's key. */
const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/**
 * `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
 * With `node:crypto`, synchronous: `crypto.subtle.digest` took 40 µs a call here against 4.6
 * (18% of a handshake's CPU in a profile).
 */
export function acceptKey(key: string): string {
  return createHash("sha1").update(key + GUID).digest("base64");
}

/** The events lib/server.ts listens to, with what it reads of them. */
export interface SocketEvents {
  open: Record<never, never>;
  message: { data: string | ArrayBuffer };
  close: { code: number; reason: string; wasClean: boolean };
  error: { message: string };
}

/**
 * What lib/server.ts uses of a WebSocket: a Deno `WebSocket` (cast) or a
 * {@linkcode GuardedWebSocket}.
 */
export interface ServerSocket {
  binaryType: string;
  onopen: ((event: SocketEvents["open"]) => void) | null;
  onmessage: ((event: SocketEvents["message"]) => void) | null;
  onclose: ((event: SocketEvents["close"]) => void) | null;
  onerror: ((event: SocketEvents["error"]) => void) | null;
  addEventListener(type: "close" | "error", listener: () => void): void;
  /** Bytes queued for sending and not yet written to the network. */
  readonly bufferedAmount: number;
  readonly protocol: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** Options of {@linkcode GuardedWebSocket}. */
export interface GuardedWebSocketOptions {
  /** Largest message from the client, all fragments together, in bytes. */
  maxMessageBytes: number;
  /**
   * Seconds of silence after which the client is pinged, and as many again
   * before it is dropped (1001), as `Deno.upgradeWebSocket`'s `idleTimeout`
   * does (half each); 0 for none.
   */
  idleTimeout: number;
  /** The subprotocol chosen, if any. */
  protocol?: string;
}

/** Close codes of RFC 6455 §7.4.1 used here. */
const Code = {
  Normal: 1000,
  GoingAway: 1001,
  ProtocolError: 1002,
  NoStatus: 1005,
  Abnormal: 1006,
  InvalidData: 1007,
  TooBig: 1009,
} as const;

/**
 * A connection's read buffer: this small while it is quiet (most are: one
 * pending read each), doubled up to `READ_MAX` while reads fill it, halved
 * again when they do not; a frame larger than it gets a buffer of its own size.
 */
const READ_MIN = 512;
const READ_MAX = 64 * 1024;
/** Frames from one read handled before the event loop gets a turn. */
const FRAMES_PER_TURN = 32;
/** How long a close frame sent waits for the client's before the connection is dropped. */
const CLOSE_WAIT_MS = 1000;
/** How long, and how much, a client told to go away is still read (and dropped) so it sees why. */
const LINGER_MS = 1000;
const LINGER_BYTES = 256 * 1024;

const CONNECTING = 0, OPEN = 1, CLOSING = 2, CLOSED = 3;

/** Whether a close code may be sent by a peer (RFC 6455 §7.4). */
function validCode(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) ||
    (code >= 3000 && code <= 4999);
}

/** A frame header's size for a payload of `length` bytes (servers never mask). */
function headSize(length: number): number {
  return length < 126 ? 2 : length < 65536 ? 4 : 10;
}

/** Writes a final frame's header for a payload of `length` bytes at `at` in `out`. */
function writeHead(out: Uint8Array, opcode: number, length: number, at = 0): void {
  out[at] = 0x80 | opcode;
  if (length < 126) out[at + 1] = length;
  else if (length < 65536) {
    out[at + 1] = 126;
    out[at + 2] = length >> 8;
    out[at + 3] = length & 0xff;
  } else {
    out[at + 1] = 127;
    new DataView(out.buffer, out.byteOffset + at).setBigUint64(2, BigInt(length));
  }
}

/** A whole frame: its header, then `payload`. */
function encodeFrame(opcode: number, payload: Uint8Array): Uint8Array {
  const head = headSize(payload.length);
  const out = new Uint8Array(head + payload.length);
  writeHead(out, opcode, payload.length);
  out.set(payload, head);
  return out;
}

/**
 * The last text frame encoded, by its string: the hub sends one string to
 * every recipient of a message (a room, a presence change), so it is encoded
 * once for all of them. Queued frames are never written to, so they can be
 * shared, and so can the part of a connection's chunk that holds one.
 */
let lastText: string | undefined;
let lastFrame: Uint8Array = new Uint8Array(0);

/**
 * Bytes of a connection's chunk: the text frames it is sent in one turn of
 * the event loop are encoded into one array, written as it is. A frame of its
 * own was an allocation of ~0.3 µs (an `ArrayBuffer` outside V8's heap, and
 * its sweeping later), two of them per DM (the acknowledgement and the
 * delivery), and the write's concatenation of them a third.
 */
const CHUNK_BYTES = 2048;

/**
 * Encodes `text` as a text frame at `at` in `out` if it fits: the frame's end,
 * or -1. Encoded in place as if it were ASCII (as most JSON frames are); a
 * longer encoding moves the payload if its header turns out longer.
 */
function encodeTextInto(text: string, out: Uint8Array, at: number): number {
  const length = text.length;
  const head = headSize(length);
  if (out.length - at < head + length) return -1;
  const { read, written } = encoder.encodeInto(text, out.subarray(at + head));
  if (read !== length) return -1;
  const size = headSize(written);
  if (size !== head) {
    if (out.length - at < size + written) return -1;
    out.copyWithin(at + size, at + head, at + head + written);
  }
  writeHead(out, 1, written, at);
  return at + size + written;
}

/** A text frame in an array of its own. */
function encodeText(text: string): Uint8Array {
  const payload = encoder.encode(text);
  const head = headSize(payload.length);
  const out = new Uint8Array(head + payload.length);
  writeHead(out, 1, payload.length);
  out.set(payload, head);
  return out;
}

/** A close frame's payload: the code, then the reason cut to fit 125 bytes on a character boundary. */
function closePayload(code: number, reason: string): Uint8Array {
  let r = encoder.encode(reason);
  if (r.length > 123) {
    let end = 123;
    while (end > 0 && (r[end] & 0xc0) === 0x80) end--;
    r = r.subarray(0, end);
  }
  const p = new Uint8Array(2 + r.length);
  p[0] = code >> 8;
  p[1] = code & 0xff;
  p.set(r, 2);
  return p;
}

/**
 * One server WebSocket on a TCP connection whose handshake the guard has read.
 * Created CONNECTING; {@linkcode GuardedWebSocket.start} writes the 101 head
 * and opens it.
 */
export class GuardedWebSocket implements ServerSocket {
  binaryType = "arraybuffer";
  onopen: ServerSocket["onopen"] = null;
  onmessage: ServerSocket["onmessage"] = null;
  onclose: ServerSocket["onclose"] = null;
  onerror: ServerSocket["onerror"] = null;
  readonly protocol: string;
  #conn: Deno.Conn | undefined;
  #options: GuardedWebSocketOptions;
  #state = CONNECTING;
  #listeners: { close: (() => void)[]; error: (() => void)[] } = { close: [], error: [] };
  /** Encoded frames waiting for the writer, and their size. */
  #queue: Uint8Array[] = [];
  #buffered = 0;
  /**
   * The chunk this turn's text frames are encoded into (see `CHUNK_BYTES`),
   * its frames from `#chunkStart` to `#chunkEnd` not yet in the queue;
   * dropped when the writer takes the queue.
   */
  #chunk: Uint8Array | undefined;
  #chunkStart = 0;
  #chunkEnd = 0;
  /** Bytes at the front of the queue that are not counted in `bufferedAmount` (the 101 head). */
  #uncounted = 0;
  #writing = false;
  /** Ends the connection once the queue is written (after the closing handshake). */
  #endAfterWrite = false;
  /** Whether a close frame went out (or is queued). */
  #closeSent = false;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  #idleTimer: ReturnType<typeof setTimeout> | undefined;
  #heard = false;
  #ended = Promise.withResolvers<void>();
  #tcpClosed = false;
  /** Fragments of the message being assembled: its opcode (1 text, 2 binary), parts, bytes. */
  #fragOpcode = 0;
  #fragments: Uint8Array[] = [];
  #fragBytes = 0;

  constructor(options: GuardedWebSocketOptions) {
    this.#options = options;
    this.protocol = options.protocol ?? "";
  }

  /** Resolves when the TCP connection has been closed. */
  get ended(): Promise<void> {
    return this.#ended.promise;
  }

  get readyState(): number {
    return this.#state;
  }

  get bufferedAmount(): number {
    return this.#buffered;
  }

  addEventListener(type: "close" | "error", listener: () => void): void {
    this.#listeners[type].push(listener);
  }

  /**
   * Writes `head` (the 101 response), opens the socket and reads frames from
   * `conn`, `pending` (bytes the client sent after its handshake) first.
   */
  start(conn: Deno.Conn, head: Uint8Array, pending: Uint8Array): void {
    this.#conn = conn;
    if (this.#state !== CONNECTING) {
      // Closed before it opened (its close event has fired): it never opens.
      this.#closeTcp();
      return;
    }
    // The 101 head goes out with the first frames, but is not a frame: not in bufferedAmount.
    this.#enqueue(head);
    this.#buffered -= head.length;
    this.#uncounted = head.length;
    this.#state = OPEN;
    this.#call("open", this.onopen, {});
    this.#resetIdle();
    this.#read(pending).catch((error) => {
      log.error("websocket: read loop failed", error);
      this.#drop(Code.Abnormal, "");
    });
  }

  /** A socket that never opens (the handshake was answered otherwise): its close still fires. */
  abort(): void {
    if (this.#state !== CONNECTING) return;
    this.#finish(Code.Abnormal, "", false);
  }

  send(data: string | ArrayBuffer | Uint8Array): void {
    if (this.#state === CONNECTING) throw new DOMException("not open yet", "InvalidStateError");
    if (this.#state !== OPEN || this.#closeSent) return;
    if (typeof data === "string") this.#sendText(data);
    else this.#frame(2, data instanceof Uint8Array ? data : new Uint8Array(data));
  }

  close(code: number = Code.Normal, reason = ""): void {
    if (!validCode(code)) {
      throw new DOMException(`close code ${code} is not allowed`, "InvalidAccessError");
    }
    if (this.#state === CONNECTING) {
      // As a browser's socket: closed before it opened, it never opens.
      this.#finish(Code.Abnormal, reason, false);
      return;
    }
    if (this.#state !== OPEN) return;
    this.#state = CLOSING;
    this.#sendClose(code, reason);
    // The client answers with its own close frame (then the connection ends), or is dropped.
    this.#closeTimer = setTimeout(() => this.#drop(code, reason), CLOSE_WAIT_MS);
  }

  #call<K extends keyof SocketEvents>(
    type: K,
    handler: ((event: SocketEvents[K]) => void) | null,
    event: SocketEvents[K],
  ): void {
    // A listener that throws must not end the read loop or the process, nor keep the others
    // (which give back the connection's places) from running.
    try {
      handler?.call(this, event);
    } catch (error) {
      log.error(`websocket: a ${type} listener threw`, error);
    }
    if (type !== "close" && type !== "error") return;
    for (const listener of this.#listeners[type as "close" | "error"]) {
      try {
        listener();
      } catch (error) {
        log.error(`websocket: a ${type} listener threw`, error);
      }
    }
  }

  #frame(opcode: number, payload: Uint8Array): void {
    this.#enqueue(encodeFrame(opcode, payload));
  }

  #sendClose(code: number, reason: string): void {
    if (this.#closeSent) return;
    this.#closeSent = true;
    this.#frame(8, code === Code.NoStatus ? new Uint8Array(0) : closePayload(code, reason));
  }

  /** A text frame, encoded into this turn's chunk (or shared, if it was just encoded). */
  #sendText(text: string): void {
    if (text === lastText) return this.#enqueue(lastFrame);
    let chunk = this.#chunk;
    let start = this.#chunkEnd;
    let end = chunk === undefined ? -1 : encodeTextInto(text, chunk, start);
    if (end === -1) {
      // A new chunk, unless the frame could not fill one: then an array of its own.
      this.#seal();
      if (text.length * 3 + 4 <= CHUNK_BYTES) {
        this.#chunk = chunk = new Uint8Array(CHUNK_BYTES);
        this.#chunkStart = start = 0;
        end = encodeTextInto(text, chunk, 0);
      }
    }
    lastText = text;
    if (end === -1) {
      this.#chunk = undefined;
      return this.#enqueue(lastFrame = encodeText(text));
    }
    this.#chunkEnd = end;
    lastFrame = chunk!.subarray(start, end);
    this.#queued(end - start);
  }

  /** Puts the chunk's frames not yet queued in the queue (before anything queued after them). */
  #seal(): void {
    if (this.#chunk === undefined || this.#chunkEnd === this.#chunkStart) return;
    this.#queue.push(this.#chunk.subarray(this.#chunkStart, this.#chunkEnd));
    this.#chunkStart = this.#chunkEnd;
  }

  #enqueue(bytes: Uint8Array): void {
    this.#seal();
    this.#queue.push(bytes);
    this.#queued(bytes.length);
  }

  /** Counts `bytes` more queued, and wakes the writer. */
  #queued(bytes: number): void {
    this.#buffered += bytes;
    if (!this.#writing) {
      this.#writing = true;
      // Everything sent in this turn of the loop goes out in one write.
      queueMicrotask(() => this.#write());
    }
  }

  async #write(): Promise<void> {
    const conn = this.#conn;
    try {
      for (;;) {
        this.#seal();
        // What comes next goes into a new chunk: this one is written as it is, and a quiet
        // connection holds none.
        this.#chunk = undefined;
        if (this.#queue.length === 0 || !conn || this.#tcpClosed) break;
        const parts = this.#queue;
        this.#queue = [];
        let data: Uint8Array;
        if (parts.length === 1) data = parts[0];
        else {
          let size = 0;
          for (const p of parts) size += p.length;
          data = new Uint8Array(size);
          let at = 0;
          for (const p of parts) {
            data.set(p, at);
            at += p.length;
          }
        }
        for (let written = 0; written < data.length;) {
          const n = await conn.write(data.subarray(written));
          written += n;
          const uncounted = Math.min(n, this.#uncounted);
          this.#uncounted -= uncounted;
          this.#buffered -= n - uncounted;
        }
      }
    } catch {
      // The client went away; the read side reports it.
      this.#queue = [];
      this.#chunk = undefined;
      this.#buffered = 0;
      this.#writing = false;
      this.#drop(Code.Abnormal, "");
      return;
    }
    this.#writing = false;
    if (this.#endAfterWrite) this.#closeTcp();
  }

  /** Reads and handles frames until the connection ends. */
  async #read(pending: Uint8Array): Promise<void> {
    const conn = this.#conn!;
    let size = READ_MIN;
    let buf = new Uint8Array(Math.max(size, pending.length));
    buf.set(pending);
    let start = 0, end = pending.length;
    for (;;) {
      // Every whole frame in the buffer; a turn of the event loop between each
      // FRAMES_PER_TURN, so that one read of many frames does not run ahead of
      // the work they start (and of everyone else's) the way no single frame can.
      for (let handled = 0;;) {
        const step = this.#parse(buf, start, end);
        if (step === -1) return; // the connection is closing: stop reading frames
        if (step === 0) break;
        start += step;
        if (this.#state === CLOSED) return;
        if (++handled % FRAMES_PER_TURN === 0) {
          await new Promise((r) => setTimeout(r, 0));
          if (this.#state === CLOSED) return;
        }
      }
      if (start === end) {
        start = end = 0;
        // A large frame's buffer is given back once it is handled.
        if (buf.length !== size) buf = new Uint8Array(size);
      }
      // Room for the rest of the frame begun at `start`: moved to the front, grown if it must be.
      const need = this.#needed(buf, start, end);
      if (start > 0 && (buf.length - start < need || end === buf.length)) {
        buf.copyWithin(0, start, end);
        end -= start;
        start = 0;
      }
      if (need > buf.length) {
        const grown = new Uint8Array(need);
        grown.set(buf.subarray(0, end));
        buf = grown;
      }
      let n: number | null;
      try {
        n = await conn.read(buf.subarray(end));
      } catch {
        n = null;
      }
      if (n === null) {
        // The end of the stream: clean after a closing handshake, abnormal otherwise.
        this.#drop(Code.Abnormal, "");
        return;
      }
      // Grown while reads fill it; shrunk by a read into an empty buffer that used little of it
      // (not by one that only finished a frame).
      if (end + n === buf.length) size = Math.min(READ_MAX, size * 2);
      else if (end === 0 && n < size / 4) size = Math.max(READ_MIN, size / 2);
      end += n;
      this.#heard = true;
    }
  }

  /** Bytes the frame starting at `start` needs in all (header and payload), as far as known. */
  #needed(buf: Uint8Array, start: number, end: number): number {
    const have = end - start;
    if (have < 2) return 14;
    const short = buf[start + 1] & 0x7f;
    const extra = short === 126 ? 2 : short === 127 ? 8 : 0;
    const head = 2 + extra + 4;
    if (have < 2 + extra) return head;
    const length = short < 126 ? short : this.#length(buf, start, short);
    // A length beyond the limit never gets here: #parse closed with 1009 on the header.
    return head + length;
  }

  #length(buf: Uint8Array, start: number, short: number): number {
    if (short === 126) return (buf[start + 2] << 8) | buf[start + 3];
    // 64-bit: above 2^53 it is over any limit anyway (and the top bit is a protocol error).
    let length = 0;
    for (let k = 2; k < 10; k++) length = length * 256 + buf[start + k];
    return length;
  }

  /**
   * Handles the frame at `start` if it is whole: the bytes it took; 0 if more
   * must be read; -1 once the connection is being ended.
   */
  #parse(buf: Uint8Array, start: number, end: number): number {
    const have = end - start;
    if (have < 2) return 0;
    const b0 = buf[start], b1 = buf[start + 1];
    const fin = (b0 & 0x80) !== 0;
    const opcode = b0 & 0x0f;
    const short = b1 & 0x7f;
    const extra = short === 126 ? 2 : short === 127 ? 8 : 0;
    if (have < 2 + extra) return 0;
    // Checked as soon as the header says it, before any payload is read or held.
    if ((b0 & 0x70) !== 0) return this.#fail(Code.ProtocolError, "reserved bits set");
    if ((b1 & 0x80) === 0) return this.#fail(Code.ProtocolError, "client frames must be masked");
    if (short === 127 && (buf[start + 2] & 0x80) !== 0) {
      return this.#fail(Code.ProtocolError, "a 64-bit length with its top bit set");
    }
    const length = short < 126 ? short : this.#length(buf, start, short);
    const control = opcode >= 8;
    if (control) {
      if (opcode > 10) return this.#fail(Code.ProtocolError, `unknown opcode ${opcode}`);
      if (!fin || length > 125) {
        return this.#fail(Code.ProtocolError, "control frames are short and unfragmented");
      }
    } else {
      if (opcode > 2) return this.#fail(Code.ProtocolError, `unknown opcode ${opcode}`);
      if (opcode === 0 && this.#fragOpcode === 0) {
        return this.#fail(Code.ProtocolError, "a continuation with no message to continue");
      }
      if (opcode !== 0 && this.#fragOpcode !== 0) {
        return this.#fail(Code.ProtocolError, "a new message inside a fragmented one");
      }
      if (this.#fragBytes + length > this.#options.maxMessageBytes) {
        return this.#fail(
          Code.TooBig,
          `messages are limited to ${this.#options.maxMessageBytes} bytes`,
        );
      }
    }
    const offset = 2 + extra + 4;
    if (have < offset + length) return 0;
    // Unmasked in place.
    const m = start + 2 + extra;
    const p = start + offset;
    const m0 = buf[m], m1 = buf[m + 1], m2 = buf[m + 2], m3 = buf[m + 3];
    for (let i = 0; i < length; i++) {
      const k = i & 3;
      buf[p + i] ^= k === 0 ? m0 : k === 1 ? m1 : k === 2 ? m2 : m3;
    }
    const payload = buf.subarray(p, p + length);
    this.#heard = true;
    if (control) return this.#control(opcode, payload) ? offset + length : -1;
    if (opcode !== 0) this.#fragOpcode = opcode;
    if (!fin) {
      // Copied out: the read buffer is reused.
      this.#fragments.push(payload.slice());
      this.#fragBytes += length;
      return offset + length;
    }
    let whole = payload;
    if (this.#fragments.length > 0) {
      whole = new Uint8Array(this.#fragBytes + length);
      let at = 0;
      for (const f of this.#fragments) {
        whole.set(f, at);
        at += f.length;
      }
      whole.set(payload, at);
    }
    const type = this.#fragOpcode;
    this.#fragOpcode = 0;
    this.#fragments = [];
    this.#fragBytes = 0;
    if (this.#state !== OPEN) return offset + length; // closing: data is dropped
    let data: string | ArrayBuffer;
    if (type === 1) {
      try {
        data = utf8.decode(whole);
      } catch {
        return this.#fail(Code.InvalidData, "text must be UTF-8");
      }
    } else {
      data = whole.slice().buffer;
    }
    this.#call("message", this.onmessage, { data });
    return offset + length;
  }

  /** A control frame; false once the connection is ending. */
  #control(opcode: number, payload: Uint8Array): boolean {
    if (opcode === 9) {
      if (this.#state === OPEN && !this.#closeSent) this.#frame(10, payload.slice());
      return true;
    }
    if (opcode === 10) return true;
    // Close: a code (two bytes) and a UTF-8 reason, or nothing.
    let code: number = Code.NoStatus;
    let reason = "";
    if (payload.length === 1) {
      this.#fail(Code.ProtocolError, "a close frame of one byte");
      return false;
    }
    if (payload.length >= 2) {
      code = (payload[0] << 8) | payload[1];
      if (!validCode(code)) {
        this.#fail(Code.ProtocolError, `close code ${code} is not allowed`);
        return false;
      }
      try {
        reason = utf8.decode(payload.subarray(2));
      } catch {
        this.#fail(Code.InvalidData, "a close reason must be UTF-8");
        return false;
      }
    }
    // Answered with the same code (none if none), then the server ends the TCP connection.
    this.#sendClose(code, "");
    this.#closeSoon();
    this.#finish(code, reason, true);
    return false;
  }

  /**
   * Closes with `code` after a client's error: the close frame goes out, and
   * the client is read for a moment longer (and ignored) so that the close
   * reaches it rather than a reset for the bytes it is still sending.
   */
  #fail(code: number, reason: string): -1 {
    this.#sendClose(code, reason);
    this.#finish(code, reason, false);
    const conn = this.#conn!;
    const timer = setTimeout(() => this.#closeTcp(), LINGER_MS);
    (async () => {
      const sink = new Uint8Array(4096);
      for (let drained = 0; !this.#tcpClosed && drained < LINGER_BYTES;) {
        const n = await conn.read(sink).catch(() => null);
        if (n === null) break;
        drained += n;
      }
      clearTimeout(timer);
      this.#closeSoon();
    })();
    return -1;
  }

  /**
   * Ends the connection once what is queued is written (the close frame last),
   * and in any case within `CLOSE_WAIT_MS`: a client that reads nothing holds nothing.
   */
  #closeSoon(): void {
    if (this.#tcpClosed) return;
    if (!this.#writing) return this.#closeTcp();
    this.#endAfterWrite = true;
    clearTimeout(this.#closeTimer);
    this.#closeTimer = setTimeout(() => this.#closeTcp(), CLOSE_WAIT_MS);
  }

  /** Ends the connection now (the client is gone, or did not answer a close). */
  #drop(code: number, reason: string): void {
    this.#closeTcp();
    this.#finish(code, reason, false);
  }

  #closeTcp(): void {
    if (this.#tcpClosed) return;
    this.#tcpClosed = true;
    clearTimeout(this.#closeTimer);
    clearTimeout(this.#idleTimer);
    try {
      this.#conn?.close();
    } catch {
      // Closed already.
    }
    this.#queue = [];
    this.#chunk = undefined;
    this.#buffered = 0;
    this.#ended.resolve();
  }

  /** The socket is closed for its user: the `close` event, exactly once. */
  #finish(code: number, reason: string, wasClean: boolean): void {
    if (this.#state === CLOSED) return;
    const opened = this.#state !== CONNECTING;
    this.#state = CLOSED;
    clearTimeout(this.#idleTimer);
    if (!opened) this.#ended.resolve();
    if (!wasClean) this.#call("error", this.onerror, { message: reason || `closed (${code})` });
    this.#call("close", this.onclose, { code, reason, wasClean });
  }

  /** Pings after half of `idleTimeout` of silence; drops the client after the other half. */
  #resetIdle(): void {
    const seconds = this.#options.idleTimeout;
    if (!(seconds > 0)) return;
    const half = seconds * 500;
    this.#heard = false;
    const check = (pinged: boolean) => {
      if (this.#state !== OPEN) return;
      if (this.#heard) {
        this.#heard = false;
        this.#idleTimer = setTimeout(() => check(false), half);
      } else if (!pinged) {
        this.#frame(9, new Uint8Array(0));
        this.#idleTimer = setTimeout(() => check(true), half);
      } else {
        const reason = "No response from ping frame.";
        this.#sendClose(Code.GoingAway, reason);
        this.#closeSoon();
        this.#finish(Code.GoingAway, reason, false);
      }
    };
    this.#idleTimer = setTimeout(() => check(false), half);
  }
}

/**
 * What an upgrade reads of its request: a `Request` has it, and so does the
 * guard's parsed handshake, which is not one (see `lib/guard.ts`).
 */
export interface HandshakeRequest {
  /** The absolute URL. */
  readonly url: string;
  /** The header fields, by case-insensitive name; repeated fields joined with ", ". */
  readonly headers: { get(name: string): string | null };
}

/** A handshake the guard read, which the handler may accept with {@linkcode upgradeHere}. */
export interface OfferedUpgrade {
  /** The socket, once the handler accepted. */
  socket?: GuardedWebSocket;
  /** The response that says so: the guard answers it with a 101. */
  response?: Response;
  /** The 101's head, without its final empty line, once the handler accepted. */
  head?: string;
}

const offers = new WeakMap<HandshakeRequest, OfferedUpgrade & OfferOptions>();

/** Options of {@linkcode offerUpgrade}. */
export interface OfferOptions {
  /** Largest message from the client, all fragments together, in bytes. */
  maxMessageBytes: number;
}

/** Marks `req` (built by the guard from a handshake head) as one this process can upgrade. */
export function offerUpgrade(req: HandshakeRequest, options: OfferOptions): OfferedUpgrade {
  const offer: OfferedUpgrade & OfferOptions = { ...options };
  offers.set(req, offer);
  return offer;
}

/**
 * `Deno.upgradeWebSocket` for a request the guard offered: a
 * {@linkcode GuardedWebSocket} and the response to return; undefined for any
 * other request (`Deno.serve`'s own, upgraded by Deno). Throws, as Deno does,
 * for a handshake that is not valid (RFC 6455 §4.2.1).
 */
export function upgradeHere(
  req: HandshakeRequest,
  options: { protocol?: string; idleTimeout: number },
): { socket: GuardedWebSocket; response: Response } | undefined {
  const offer = offers.get(req);
  if (!offer) return undefined;
  if (offer.socket) throw new TypeError("this request was upgraded already");
  const tokens = (name: string) =>
    (req.headers.get(name) ?? "").toLowerCase().split(",").map((t) => t.trim());
  if (!tokens("upgrade").includes("websocket")) {
    throw new TypeError("Invalid Header: 'upgrade' header must contain 'websocket'");
  }
  if (!tokens("connection").includes("upgrade")) {
    throw new TypeError("Invalid Header: 'connection' header must contain 'Upgrade'");
  }
  if (req.headers.get("sec-websocket-version") !== "13") {
    throw new TypeError("Invalid Header: 'sec-websocket-version' header must be '13'");
  }
  const key = req.headers.get("sec-websocket-key") ?? "";
  if (!/^[A-Za-z0-9+/]{22}==$/.test(key)) {
    throw new TypeError("Invalid Header: 'sec-websocket-key' header must be 16 bytes in base64");
  }
  // Written as text: a `Headers` and a `Response` holding them, iterated by the guard, cost
  // ~11 µs a handshake (measured, Deno 2.9).
  offer.head = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n" +
    `sec-websocket-accept: ${acceptKey(key)}\r\n` +
    (options.protocol === undefined ? "" : `sec-websocket-protocol: ${options.protocol}\r\n`);
  offer.socket = new GuardedWebSocket({
    maxMessageBytes: offer.maxMessageBytes,
    idleTimeout: options.idleTimeout,
    protocol: options.protocol,
  });
  // Status 101 cannot be constructed; the guard knows this response by identity, and answers
  // it with `head`.
  offer.response = new Response(null);
  return { socket: offer.socket, response: offer.response };
}
