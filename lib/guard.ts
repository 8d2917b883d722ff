/**
 * The TCP guard: the one place that sees every connection as bytes, before
 * Deno's HTTP code holds anything for it. `Deno.serve` accepts without limit
 * (when descriptors run out its listener dies with "Too many open files"),
 * never times out a connection that sends no request, and
 * `Deno.upgradeWebSocket` assembles fragmented messages with no size limit
 * (denoland/deno#15809). The guard accepts on the public address itself,
 * reads each connection's first request head, and then:
 *
 * - a WebSocket handshake to `/ws/…` is answered in this process by the
 *   server's own handler, and once upgraded the connection speaks
 *   lib/websocket.ts, which bounds each message (all its fragments together)
 *   by `maxMessageBytes` (1009) before buffering it. Nothing is relayed: the
 *   relay cost a second socket and a read and a write in JavaScript per chunk
 *   each way (README "Hostile clients" has the figures);
 * - anything else (the page, `/api/*`, `/healthz`) is relayed to `Deno.serve`
 *   on a private loopback port; should such a connection upgrade after all, the
 *   relay reads its frame headers and closes it with 1009 past the same bound.
 *
 * And for every connection it:
 *
 * - counts open connections and the descriptors they hold, and refuses past
 *   `maxConnections` or `maxDescriptors` with a 503 (the descriptor budget is
 *   checked at start: see {@linkcode descriptorBudget});
 * - closes a connection whose request head is not complete within
 *   `handshakeTimeout` (idle keep-alive and slowloris alike), and answers a
 *   head over `maxHeadBytes` with 431;
 * - survives `accept` failing (EMFILE): it waits and accepts again.
 *
 * @module
 */

import { LogOnce } from "./log.ts";
import { type GuardedWebSocket, type HandshakeRequest, offerUpgrade } from "./websocket.ts";

/** Options of {@linkcode startGuard}. */
export interface GuardOptions {
  /** Where clients connect. */
  listen: { hostname: string; port: number };
  /** The real server, on loopback. */
  upstream: { hostname: string; port: number };
  /** Most client connections open at once. */
  maxConnections: number;
  /**
   * Most descriptors the clients may hold at once: one per connection, and
   * {@linkcode DESCRIPTORS_PER_RELAY} more while one is relayed (a request
   * past it is answered 503); unbounded when absent.
   */
  maxDescriptors?: number;
  /** Milliseconds a request head may take, from accept or from the previous head. */
  handshakeTimeoutMs: number;
  /** Largest WebSocket message from a client, all fragments together, in bytes. */
  maxMessageBytes: number;
  /** Largest request head, in bytes. */
  maxHeadBytes?: number;
  /**
   * The server's request handler, for WebSocket handshakes to `/ws/…`: given,
   * such a connection is not relayed but answered here, and once upgraded it
   * speaks WebSocket with the guard's own implementation (lib/websocket.ts),
   * which bounds messages itself. Other requests are relayed.
   */
  handshake?: (
    req: HandshakeRequest,
    info: Deno.ServeHandlerInfo<Deno.NetAddr>,
  ) => Promise<Response>;
}

/** A running guard. */
export interface Guard {
  /** The public address. */
  readonly addr: Deno.NetAddr;
  /** Client connections open now. */
  readonly open: number;
  /** The client address behind an upstream connection, by the port it came from. */
  clientOf(upstreamPort: number): Deno.NetAddr | undefined;
  /** Relays new connections to another server address (a restarted one). */
  retarget(upstream: Deno.NetAddr): void;
  /** Stops accepting; open connections end with the server's. */
  close(): void;
  /** Resolves when the accept loop has stopped and every relayed connection has ended. */
  readonly finished: Promise<void>;
}

const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");
const log = new LogOnce();

/** The descriptors this process may open, and how many it has open now. */
export interface Descriptors {
  /** The soft limit (`ulimit -n`). */
  limit: number;
  /** Open now. */
  inUse: number;
  /** Whether the figures were probed (the limit then about right, give or take those in use). */
  probed?: boolean;
}

/**
 * Descriptors a probe opens at most (~100 ms): past it the limit is taken as
 * high enough to leave to EMFILE (which the accept loop survives). The
 * dangerous limits are the small ones, such as the common default of 1024.
 */
const PROBE_MAX = 4096;

/**
 * The descriptor limit and use of this process; undefined if it cannot tell.
 * They come from /proc/self/limits and /proc/self/fd, which Deno lets only
 * `--allow-all` read. With narrower permissions (`deno task start`, the
 * compiled binary) the limit is probed instead: the executable is opened
 * until the kernel says EMFILE (at most {@linkcode PROBE_MAX} times, ~25 µs
 * each), and everything it opened is closed again.
 */
export function descriptorBudget(): Descriptors | undefined {
  try {
    const limits = Deno.readTextFileSync("/proc/self/limits");
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(limits);
    if (!m) return undefined;
    let inUse = 0;
    for (const _ of Deno.readDirSync("/proc/self/fd")) inUse++;
    return { limit: m[1] === "unlimited" ? Infinity : Number(m[1]), inUse };
  } catch {
    return probeDescriptors();
  }
}

function probeDescriptors(): Descriptors | undefined {
  const files: Deno.FsFile[] = [];
  try {
    while (files.length < PROBE_MAX) files.push(Deno.openSync(Deno.execPath()));
    return undefined;
  } catch (error) {
    // Anything but running out (no read permission, say) says nothing of the limit.
    if (!/EMFILE|too many open files|os error 24/i.test(String(error))) return undefined;
    // The probe's descriptors were free, the rest in use: about 32 for the runtime and store.
    return { limit: files.length + 32, inUse: 32, probed: true };
  } finally {
    for (const file of files) file.close();
  }
}

/**
 * Descriptors one client costs: its own socket. A WebSocket is spoken here on
 * that socket; a relayed request (the page, `/api/*`, `/healthz`) costs
 * {@linkcode DESCRIPTORS_PER_RELAY} more while it is relayed.
 */
export const DESCRIPTORS_PER_CONNECTION = 1;
/** Descriptors a relay adds: its socket to the server and the server's end of it. */
export const DESCRIPTORS_PER_RELAY = 2;

/**
 * The descriptors clients may hold under a descriptor limit, given those open
 * at start (the store, the runtime), which is also the most connections (one
 * descriptor each): a quarter of the limit (64 at least) is kept aside
 * besides, for the store's files, the page, logs, and the server's ends of
 * closed relays that it has not yet noticed are gone.
 */
export function connectionsFitting(descriptors: number, inUse = 32): number {
  const spare = Math.max(64, Math.floor(descriptors / 4));
  return Math.max(1, Math.floor((descriptors - inUse - spare) / DESCRIPTORS_PER_CONNECTION));
}

function closeFrame(code: number, reason: string): Uint8Array {
  const r = encoder.encode(reason).subarray(0, 123);
  return new Uint8Array([0x88, 2 + r.length, code >> 8, code & 0xff, ...r]);
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let written = 0; written < data.length;) {
    written += await conn.write(data.subarray(written));
  }
}

function tryClose(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Closed already.
  }
}

const HEAD_END = [13, 10, 13, 10];
/** How long a refused client is read (and ignored) so that it sees the refusal. */
const LINGER_MS = 1000;
/** ... and at most this much of it, so a client that keeps sending is not served by it. */
const LINGER_BYTES = 256 * 1024;
const BUSY = "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n" +
  "content-type: text/plain\r\ncontent-length: 32\r\nretry-after: 5\r\n\r\n" +
  "too many connections; try again\n";
const TOO_LARGE_HEAD = "HTTP/1.1 431 Request Header Fields Too Large\r\n" +
  "connection: close\r\ncontent-length: 0\r\n\r\n";

/**
 * Reads WebSocket frame headers from a client's byte stream without copying
 * payloads, keeping the size of the message being assembled.
 */
class FrameMeter {
  /** Header bytes of a frame split across reads. */
  #head: number[] = [];
  /** Payload bytes of the current frame still to come. */
  #payloadLeft = 0;
  /** Whether the current frame ends its message. */
  #fin = true;
  /** Bytes of the message being assembled so far. */
  message = 0;

  /** Feeds bytes; returns false once a message exceeds `max`. */
  feed(bytes: Uint8Array, max: number): boolean {
    let i = 0;
    while (i < bytes.length) {
      if (this.#payloadLeft > 0) {
        const n = Math.min(this.#payloadLeft, bytes.length - i);
        this.#payloadLeft -= n;
        i += n;
        if (this.#payloadLeft === 0 && this.#fin) this.message = 0;
        continue;
      }
      this.#head.push(bytes[i++]);
      const h = this.#head;
      if (h.length < 2) continue;
      const short = h[1] & 0x7f;
      const extra = short === 126 ? 2 : short === 127 ? 8 : 0;
      const masked = (h[1] & 0x80) !== 0;
      const need = 2 + extra + (masked ? 4 : 0);
      if (h.length < need) continue;
      let length = short;
      if (short === 126) length = (h[2] << 8) | h[3];
      if (short === 127) {
        length = 0;
        for (let k = 2; k < 10; k++) length = length * 256 + h[k];
      }
      const fin = (h[0] & 0x80) !== 0;
      const opcode = h[0] & 0x0f;
      this.#head = [];
      // Data frames (0 continuation, 1 text, 2 binary) add to the message; control
      // frames (8 and up) may come between its fragments and leave it as it is.
      if (opcode < 8) {
        if (opcode !== 0) this.message = 0;
        this.message += length;
        if (this.message > max) return false;
        this.#fin = fin;
        if (length === 0 && fin) this.message = 0;
      }
      this.#payloadLeft = length;
    }
    return true;
  }
}

/** Reason phrases of the statuses a handshake may be answered with. */
const STATUS_TEXT: Record<number, string> = {
  400: "Bad Request",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  421: "Misdirected Request",
  426: "Upgrade Required",
  429: "Too Many Requests",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

/** A header field name (RFC 9110 token). */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** A header field value: no NUL, CR or LF (what `Headers` refuses too). */
const FIELD_VALUE = /^[^\0\r\n]*$/;

/** A handshake's header fields by lower-case name, as `Headers.get` answers for them. */
class HandshakeHeaders {
  readonly #fields = new Map<string, string>();

  add(name: string, value: string): void {
    const had = this.#fields.get(name);
    this.#fields.set(name, had === undefined ? value : `${had}, ${value}`);
  }

  get(name: string): string | null {
    return this.#fields.get(name.toLowerCase()) ?? null;
  }
}

/**
 * A WebSocket handshake's head as what the upgrade reads of a request (its
 * URL and header fields); undefined if it is not well formed HTTP/1.1. Not a
 * `Request`: building one (its headers validated and copied, its URL parsed
 * again) and the `Response` of Deno's kind cost ~40 µs a handshake against
 * ~8 for this (measured, Deno 2.9), a tenth of a returning user's arrival.
 */
function handshakeRequest(head: string): HandshakeRequest | undefined {
  const lines = head.split("\r\n");
  const m = /^GET (\/\S*) HTTP\/1\.1$/.exec(lines[0]);
  if (!m) return undefined;
  const headers = new HandshakeHeaders();
  let host: string | undefined;
  let hosts = 0;
  try {
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i];
      if (line === "") continue;
      const colon = line.indexOf(":");
      const name = line.slice(0, colon);
      // No obsolete line folding, no space before the colon (RFC 9112 §5).
      if (colon < 1 || !TOKEN.test(name)) return undefined;
      const value = line.slice(colon + 1).trim();
      if (!FIELD_VALUE.test(value)) return undefined;
      const lower = name.toLowerCase();
      // No body on a handshake.
      if (lower === "content-length" || lower === "transfer-encoding") return undefined;
      if (lower === "host") {
        hosts++;
        host = value;
      }
      headers.add(lower, value);
    }
    // One Host.
    if (hosts !== 1 || host === undefined || host.includes(",")) return undefined;
    return { url: new URL(m[1], `http://${host}`).href, headers };
  } catch {
    return undefined;
  }
}

/** Writes `last`, ends the sending side, and reads (dropping) for a moment so the client sees it. */
async function lingerClose(conn: Deno.Conn, last: Uint8Array): Promise<void> {
  await writeAll(conn, last).catch(() => {});
  await conn.closeWrite().catch(() => {});
  const timer = setTimeout(() => tryClose(conn), LINGER_MS);
  const sink = new Uint8Array(4096);
  for (let drained = 0; drained < LINGER_BYTES;) {
    const n = await conn.read(sink).catch(() => null);
    if (n === null) break;
    drained += n;
  }
  clearTimeout(timer);
  tryClose(conn);
}

/** A response written by hand, on a connection that ends after it. */
async function answer(conn: Deno.Conn, response: Response): Promise<void> {
  const body = new Uint8Array(await response.arrayBuffer());
  let head = `HTTP/1.1 ${response.status} ${STATUS_TEXT[response.status] ?? "Error"}\r\n`;
  for (const [name, value] of response.headers) {
    if (name !== "content-length" && name !== "connection") head += `${name}: ${value}\r\n`;
  }
  head += `content-length: ${body.length}\r\nconnection: close\r\n\r\n`;
  const bytes = encoder.encode(head);
  const all = new Uint8Array(bytes.length + body.length);
  all.set(bytes);
  all.set(body, bytes.length);
  await lingerClose(conn, all);
}

/** Starts the guard; resolves once it listens. */
export function startGuard(options: GuardOptions): Guard {
  const listener = Deno.listen({ ...options.listen, transport: "tcp" });
  const clients = new Map<number, Deno.NetAddr>();
  const maxHead = options.maxHeadBytes ?? 16 * 1024;
  let open = 0;
  /** Descriptors the clients hold: theirs, and their relays'. */
  let held = 0;
  const maxDescriptors = options.maxDescriptors ?? Infinity;
  let closing = false;
  const relays = new Set<Promise<void>>();
  let target = { hostname: options.upstream.hostname, port: options.upstream.port };

  /**
   * A new connection: its first request head is read here. A WebSocket
   * handshake to `/ws/` is answered by the server's handler in this process
   * and, once upgraded, spoken by lib/websocket.ts; anything else is relayed.
   */
  async function serve(client: Deno.TcpConn): Promise<void> {
    let buf = new Uint8Array(2048);
    let end = 0;
    let at = -1;
    const timer = setTimeout(() => tryClose(client), options.handshakeTimeoutMs);
    try {
      while (at === -1) {
        if (end === buf.length) {
          const grown = new Uint8Array(buf.length * 2);
          grown.set(buf);
          buf = grown;
        }
        const n = await client.read(buf.subarray(end)).catch(() => null);
        if (n === null) return tryClose(client);
        for (let i = Math.max(0, end - 3); i + 3 < end + n; i++) {
          if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) {
            at = i + 4;
            break;
          }
        }
        end += n;
        if (at === -1 && end > maxHead) {
          clearTimeout(timer);
          return await lingerClose(client, encoder.encode(TOO_LARGE_HEAD));
        }
      }
    } finally {
      clearTimeout(timer);
    }
    const head = latin1.decode(buf.subarray(0, at));
    if (
      options.handshake && head.startsWith("GET /ws/") &&
      /\r\nupgrade:[^\r\n]*websocket/i.test(head)
    ) {
      const completed = Promise.withResolvers<void>();
      try {
        // Only the socket lives on: the head, the request and the response are let go.
        const socket = await terminate(client, head, buf.slice(at, end), completed.promise);
        if (socket) await socket.ended;
      } finally {
        completed.resolve();
      }
      return;
    }
    await relay(client, buf.subarray(0, end));
  }

  /**
   * A WebSocket handshake answered here (`pending`: bytes the client sent
   * after its head): the open socket, or undefined if it was refused.
   */
  async function terminate(
    client: Deno.TcpConn,
    head: string,
    pending: Uint8Array,
    completed: Promise<void>,
  ): Promise<GuardedWebSocket | undefined> {
    const req = handshakeRequest(head);
    if (!req) {
      await answer(client, new Response("not a valid WebSocket handshake\n", { status: 400 }));
      return undefined;
    }
    const upgrade = offerUpgrade(req, { maxMessageBytes: options.maxMessageBytes });
    let response: Response;
    try {
      response = await options.handshake!(req, {
        remoteAddr: client.remoteAddr as Deno.NetAddr,
        completed,
      });
    } catch (error) {
      log.error("guard: the handshake handler failed", error);
      response = new Response("internal error\n", { status: 500 });
    }
    const socket = upgrade.socket;
    if (socket && response === upgrade.response && upgrade.head !== undefined) {
      socket.start(client, encoder.encode(upgrade.head + "\r\n"), pending);
      return socket;
    }
    socket?.abort();
    await answer(client, response);
    return undefined;
  }

  async function relay(client: Deno.TcpConn, initial: Uint8Array): Promise<void> {
    if (held + DESCRIPTORS_PER_RELAY > maxDescriptors) {
      log.warn(`guard: ${maxDescriptors} descriptors in use; refusing a request`);
      return await lingerClose(client, encoder.encode(BUSY));
    }
    held += DESCRIPTORS_PER_RELAY;
    try {
      await relayed(client, initial);
    } finally {
      held -= DESCRIPTORS_PER_RELAY;
    }
  }

  async function relayed(client: Deno.TcpConn, initial: Uint8Array): Promise<void> {
    let upstream: Deno.TcpConn;
    try {
      upstream = await Deno.connect({ ...target, transport: "tcp" });
    } catch (error) {
      log.error("guard: cannot reach the server", error);
      tryClose(client);
      return;
    }
    const port = (upstream.localAddr as Deno.NetAddr).port;
    clients.set(port, client.remoteAddr as Deno.NetAddr);
    let done = false;
    const end = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      tryClose(client);
      tryClose(upstream);
    };
    // HTTP until a 101 comes back; then WebSocket frames.
    let mode: "http" | "upgrading" | "ws" = "http";
    let headBytes = 0;
    let matched = 0;
    let timer = setTimeout(end, options.handshakeTimeoutMs);
    let meter = new FrameMeter();
    /** Where the request head ends in `bytes` (the index after it), or -1. */
    const headEnd = (bytes: Uint8Array): number => {
      for (let i = 0; i < bytes.length; i++) {
        const b = bytes[i];
        headBytes++;
        matched = b === HEAD_END[matched] ? matched + 1 : b === 13 ? 1 : 0;
        if (matched === 4) {
          matched = 0;
          headBytes = 0;
          return i + 1;
        }
      }
      return -1;
    };
    /**
     * Ends a connection with a last word: the server's side goes at once (it
     * holds nothing more), the client's is read and discarded for a moment, so
     * that the close reaches it instead of a reset for the bytes it still sends.
     */
    let refusing = false;
    let serverDone = false;
    let lingered = 0;
    const refuse = async (last: Uint8Array) => {
      refusing = true;
      tryClose(upstream);
      clearTimeout(timer);
      timer = setTimeout(end, LINGER_MS);
      await writeAll(client, last).catch(() => {});
      const sink = new Uint8Array(64 * 1024);
      for (let drained = 0; !done && drained < LINGER_BYTES;) {
        const n = await client.read(sink).catch(() => null);
        if (n === null) break;
        drained += n;
      }
    };
    let upgradeAsked = false;
    /** Whether the client's bytes are a request head being read (not a body). */
    let scanning = true;
    let head = "";
    const toServer = async () => {
      const buf = new Uint8Array(32 * 1024);
      for (let first = true;; first = false) {
        // The bytes read before the relay began (the first head, at least) come first.
        const n = first ? initial.length : await client.read(buf);
        if (n === null) return;
        if (serverDone) {
          // Lingering after the server's end: read and dropped, a bounded amount.
          lingered += n;
          if (lingered > LINGER_BYTES) return;
          continue;
        }
        const chunk = first ? initial : buf.subarray(0, n);
        let frames: Uint8Array | undefined;
        if (mode === "http") {
          // After a head, its body (if any) passes unscanned until the answer starts; the
          // clock runs on until then, so a request, body included, has handshakeTimeout.
          const at = scanning ? headEnd(chunk) : -1;
          // The head's text, however it was split into reads (at most maxHead bytes).
          if (scanning) head += latin1.decode(at === -1 ? chunk : chunk.subarray(0, at));
          if (at !== -1) {
            scanning = false;
            upgradeAsked = /\r\nupgrade:[^\r\n]*websocket/i.test(head);
            head = "";
            if (upgradeAsked) {
              // Frames may follow the head at once, before the 101: they are metered too.
              mode = "upgrading";
              frames = chunk.subarray(at);
            }
          } else if (scanning && headBytes > maxHead) {
            await refuse(encoder.encode(TOO_LARGE_HEAD));
            return;
          }
        } else frames = chunk;
        if (frames && !meter.feed(frames, options.maxMessageBytes)) {
          await refuse(
            closeFrame(1009, `messages are limited to ${options.maxMessageBytes} bytes`),
          );
          return;
        }
        await writeAll(upstream, chunk);
      }
    };
    const toClient = async () => {
      const buf = new Uint8Array(32 * 1024);
      for (;;) {
        const n = await upstream.read(buf);
        if (n === null) return;
        const chunk = buf.subarray(0, n);
        if (mode === "upgrading") {
          // Accepted, it is frames from here on (the meter keeps what it has read of them);
          // refused, the connection is HTTP again.
          const accepted = latin1.decode(chunk.subarray(0, 12)) === "HTTP/1.1 101";
          mode = accepted ? "ws" : "http";
          upgradeAsked = false;
          if (!accepted) meter = new FrameMeter();
          clearTimeout(timer);
        }
        if (mode === "http" && !scanning) {
          // An answer: the connection is idle until the next head, which has its own deadline.
          scanning = true;
          headBytes = 0;
          matched = 0;
          head = "";
          clearTimeout(timer);
          timer = setTimeout(end, options.handshakeTimeoutMs);
        }
        await writeAll(client, chunk);
      }
    };
    const pumps = [toServer(), toClient().finally(() => serverDone = true)];
    await Promise.race(pumps).catch(() => {});
    if (serverDone && !done && !refusing) {
      // The server ended the connection (after its close frame, say): the client gets the
      // end of the stream, and a moment to stop sending, so it reads all of it, not a reset.
      refusing = true;
      clearTimeout(timer);
      timer = setTimeout(end, LINGER_MS);
      await client.closeWrite().catch(() => {});
    }
    // A refusal ends the server's side first and lingers on the client's.
    if (refusing) await pumps[0].catch(() => {});
    end();
    await Promise.allSettled(pumps);
    clients.delete(port);
  }

  const accepting = (async () => {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch (error) {
        if (closing) return;
        // EMFILE and friends: the listener is still good once descriptors free up.
        log.error("guard: accept failed; retrying", error);
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      if (open >= options.maxConnections || held + DESCRIPTORS_PER_CONNECTION > maxDescriptors) {
        log.warn(`guard: ${options.maxConnections} connections open; refusing more`);
        // Awaited, so refusals hold one descriptor at a time: a fresh socket's
        // send buffer is empty, so this write does not wait for the client.
        await writeAll(conn, encoder.encode(BUSY)).catch(() => {});
        tryClose(conn);
        continue;
      }
      open++;
      held += DESCRIPTORS_PER_CONNECTION;
      const served: Promise<void> = serve(conn)
        .catch((error) => log.error("guard: relay failed", error))
        .finally(() => {
          open--;
          held -= DESCRIPTORS_PER_CONNECTION;
          relays.delete(served);
        });
      relays.add(served);
    }
  })();

  return {
    addr: listener.addr as Deno.NetAddr,
    get open() {
      return open;
    },
    clientOf: (port) => clients.get(port),
    retarget: (upstream) => target = { hostname: upstream.hostname, port: upstream.port },
    get finished() {
      return accepting.then(async () => {
        while (relays.size > 0) await Promise.allSettled([...relays]);
      });
    },
    close: () => {
      if (closing) return;
      closing = true;
      try {
        listener.close();
      } catch {
        // Closed already.
      }
    },
  };
}
