/**
 * A WebSocket client for tests: frames are queued as they arrive and read
 * with {@linkcode TestClient.next}, which waits for a matching frame instead
 * of sleeping.
 *
 * @module
 */

import { canonicalName } from "../lib/identity.ts";

// deno-lint-ignore no-explicit-any
export type Frame = Record<string, any>;

/** Options of {@linkcode TestClient.connect}. */
export interface ClientOptions {
  /** `"chat.v1"` (the default) or `null` for the original page's protocol. */
  protocol?: string | null;
  /** How long {@linkcode TestClient.next} waits, in milliseconds. */
  timeoutMs?: number;
  /**
   * The token to present; by default the one this origin issued to this user
   * before (as the page keeps it), `null` for none.
   */
  token?: string | null;
  /** Path and query after `/ws/<user>`, e.g. `?resume`. */
  query?: string;
  /** Headers for the handshake (Deno's WebSocket extension), e.g. a foreign Origin. */
  headers?: Record<string, string>;
}

/** Tokens issued to test users, by origin and user: what the page keeps in localStorage. */
export const tokens: Map<string, string> = new Map();

/** Forgets the tokens of users of the servers at `origins` (their databases are gone). */
export function forgetTokens(origins: string[]): void {
  for (const key of tokens.keys()) {
    if (origins.some((origin) => key.startsWith(`${origin} `))) tokens.delete(key);
  }
}

/** A real WebSocket with a queue of parsed frames. */
export class TestClient implements AsyncDisposable {
  readonly socket: WebSocket;
  #closeEvent: Promise<CloseEvent>;
  #closedAs: CloseEvent | undefined;
  #frames: Frame[] = [];
  #waiters: Array<() => void> = [];
  #timeoutMs: number;
  #key = "";

  private constructor(socket: WebSocket, timeoutMs: number) {
    this.socket = socket;
    this.#timeoutMs = timeoutMs;
    this.#closeEvent = new Promise((resolve) => {
      socket.addEventListener("close", (e) => {
        this.#closedAs = e;
        resolve(e);
        this.#wake();
      });
    });
    socket.addEventListener("message", (e) => {
      const frame = typeof e.data === "string" ? JSON.parse(e.data) : { binary: e.data };
      if (frame.type === "welcome" && typeof frame.token === "string") {
        tokens.set(this.#key, frame.token);
      }
      this.#frames.push(frame);
      this.#wake();
    });
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  /**
   * Resolves with the close event once the socket has closed; rejects, naming
   * the frames that did arrive, if it is still open after the client's timeout
   * (so a test that expects a refusal fails instead of waiting forever).
   */
  get closed(): Promise<CloseEvent> {
    return this.closedWithin(this.#timeoutMs);
  }

  /** {@linkcode TestClient.closed} with its own deadline, in milliseconds. */
  async closedWithin(ms: number): Promise<CloseEvent> {
    if (this.#closedAs) return this.#closedAs;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new Error(
              `expected the socket to close within ${ms} ms; it is still open (readyState ${this.socket.readyState}), queued: ${this.#summary()}`,
            ),
          ),
        ms,
      );
    });
    try {
      return await Promise.race([this.#closeEvent, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Opens a connection as `user` and waits until it is open. */
  static async connect(
    origin: string,
    user: string,
    options: ClientOptions = {},
  ): Promise<TestClient> {
    const url = `${origin.replace(/^http/, "ws")}/ws/${encodeURIComponent(user)}${
      options.query ?? ""
    }`;
    const protocol = options.protocol === undefined ? "chat.v1" : options.protocol;
    const key = `${origin} ${canonicalName(user)}`;
    const token = options.token === undefined ? tokens.get(key) : options.token;
    const protocols = protocol === null ? [] : token ? [protocol, `token.${token}`] : [protocol];
    // Deno's WebSocket takes handshake headers in an options object.
    const init = { protocols, headers: options.headers } as unknown as string[];
    const socket = options.headers ? new WebSocket(url, init) : new WebSocket(url, protocols);
    const timeoutMs = options.timeoutMs ?? 5000;
    const client = new TestClient(socket, timeoutMs);
    client.#key = key;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        socket.addEventListener("open", () => resolve(), { once: true });
        socket.addEventListener("error", () => reject(new Error(`could not connect as ${user}`)), {
          once: true,
        });
        timer = setTimeout(
          () => reject(new Error(`expected ${url} to open within ${timeoutMs} ms; it did not`)),
          timeoutMs,
        );
      });
    } catch (error) {
      // A failed or late handshake must not leave its socket behind for the sanitizer.
      if (socket.readyState !== WebSocket.CLOSED) socket.close();
      await client.closed.catch(() => {});
      throw error;
    } finally {
      clearTimeout(timer);
    }
    return client;
  }

  /** Opens a chat.v1 connection and waits for its welcome (closing it if none comes). */
  static async join(
    origin: string,
    user: string,
    options: ClientOptions = {},
  ): Promise<[TestClient, Frame]> {
    const client = await TestClient.connect(origin, user, options);
    try {
      return [client, await client.next((f) => f.type === "welcome")];
    } catch (error) {
      await client.close();
      throw error;
    }
  }

  /** Sends a frame (objects as JSON, strings and bytes as they are). */
  send(frame: Frame | string | Uint8Array<ArrayBuffer>): void {
    this.socket.send(
      typeof frame === "string" || frame instanceof Uint8Array ? frame : JSON.stringify(frame),
    );
  }

  /**
   * Takes the first queued frame that matches (waiting for one to arrive),
   * leaving the others queued. Rejects when the socket closes or time runs out.
   */
  async next(match: (frame: Frame) => boolean = () => true): Promise<Frame> {
    return await this.#find(match, true);
  }

  /** Waits until a matching frame has arrived, leaving it queued for a later `next`. */
  async seen(match: (frame: Frame) => boolean): Promise<Frame> {
    return await this.#find(match, false);
  }

  async #find(match: (frame: Frame) => boolean, take: boolean): Promise<Frame> {
    const deadline = Date.now() + this.#timeoutMs;
    for (;;) {
      const i = this.#frames.findIndex(match);
      if (i !== -1) return take ? this.#frames.splice(i, 1)[0] : this.#frames[i];
      if (this.socket.readyState === WebSocket.CLOSED) {
        throw new Error(
          `expected a frame matching ${match}; the socket closed (${this.#closedAs?.code} ${this.#closedAs?.reason}) first, queued: ${this.#summary()}`,
        );
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `expected a frame matching ${match} within ${this.#timeoutMs} ms; queued: ${this.#summary()}`,
        );
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.#waiters.push(resolve);
        timer = setTimeout(resolve, left);
      });
      clearTimeout(timer);
    }
  }

  /** The queued frames for an error message, long texts cut short. */
  #summary(): string {
    const text = JSON.stringify(
      this.#frames,
      (key, value) =>
        key === "text" && typeof value === "string" && value.length > 40
          ? `${value.slice(0, 40)}…`
          : value,
    );
    return text.length > 2000 ? `${text.slice(0, 2000)}… (${this.#frames.length} frames)` : text;
  }

  /** The frames received and not yet taken. */
  get queued(): readonly Frame[] {
    return this.#frames;
  }

  /** Closes the socket and waits (with the client's deadline) until it is closed. */
  async close(): Promise<CloseEvent> {
    if (this.socket.readyState !== WebSocket.CLOSED) this.socket.close();
    return await this.closed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * Matches a batched `presence` frame that says `user` came online (`online`
 * true) or went offline: `{"type":"presence","online":[…],"offline":[…]}`.
 */
export function isPresence(user: string, online: boolean): (frame: Frame) => boolean {
  return (f) =>
    f.type === "presence" && Array.isArray(online ? f.online : f.offline) &&
    (online ? f.online : f.offline).includes(user);
}
