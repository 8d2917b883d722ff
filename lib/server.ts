/**
 * The Deno adapter: HTTP routes, the WebSocket upgrade, and the glue from a
 * Deno `WebSocket` to the hub's {@linkcode Peer}. Everything about chat lives
 * in the hub; this file only speaks HTTP.
 *
 * Routes: `GET /` (and `/app.js`, `/style.css`) the page; `GET /healthz`;
 * `GET /ws/:username` the WebSocket. Anything else is 404.
 *
 * @module
 */

import config from "../deno.json" with { type: "json" };
import { type Bus } from "./bus.ts";
import type { Accounts, Authenticated } from "./accounts.ts";
import { connectionsFitting, descriptorBudget, type Guard, startGuard } from "./guard.ts";
import { ChatHub, CloseCode, type Connection } from "./hub.ts";
import { MinuteCounter, OpenCounter } from "./limiter.ts";
import { BusyError } from "./semaphore.ts";
import { hostPolicy } from "./hosts.ts";
import { LogOnce } from "./log.ts";
import { parseName } from "./names.ts";
import { serveAsset } from "./page.ts";
import type { Presence } from "./presence.ts";
import { LocalUserLimits, type UserLimits } from "./user_limits.ts";
import { SUBPROTOCOL, toLegacyError } from "./protocol.ts";
import { type HandshakeRequest, type ServerSocket, upgradeHere } from "./websocket.ts";
import type { Settings } from "./settings.ts";
import type { ChatStore } from "./store.ts";

const log = new LogOnce();

/** The server's version, from `deno.json`. */
export const VERSION: string = config.version;

/** Options of {@linkcode startChatServer}. */
export interface ChatServerOptions {
  /** The settings (port, hostname, limits). */
  settings: Settings;
  /** The store; the server does not close it (its owner does, after shutdown). */
  store: ChatStore;
  /** The fan-out between instances; in-process when absent. */
  bus?: Bus;
  /** Who is online on any instance; this process's users when absent. */
  presence?: Presence;
  /** Per-user limits (sends, connections), shared by instances; in-process when absent. */
  userLimits?: UserLimits;
  /** Names, tokens and passwords. */
  accounts: Accounts;
  /** Called once listening, with the bound address. */
  onListen?: (addr: Deno.NetAddr) => void;
  /**
   * Whether clients connect through the TCP guard (lib/guard.ts), which bounds
   * connections, handshakes and fragmented messages; true unless the platform
   * owns the listener (Deno Deploy).
   */
  guard?: boolean;
}

/** A running server. */
export interface ChatServer extends AsyncDisposable {
  /** The address it listens on. */
  readonly addr: Deno.NetAddr;
  /** `http://host:port`, with 127.0.0.1 standing for a wildcard address. */
  readonly origin: string;
  /** The hub, for stats and tests. */
  readonly hub: ChatHub;
  /** Resolves when the server has stopped. */
  readonly finished: Promise<void>;
  /** Stops accepting, closes every socket with 1001, and waits for the server to stop. */
  shutdown(): Promise<void>;
}

function text(status: number, body: string): Response {
  return new Response(body + "\n", {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", "x-content-type-options": "nosniff" },
  });
}

/**
 * A request's body as text, read no further than `max` bytes: undefined when
 * its Content-Length or the bytes actually sent exceed that (the rest is never read).
 */
async function readCapped(req: Request, max: number): Promise<string | undefined> {
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (!(declared <= max)) return undefined;
  if (!req.body) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = req.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.length;
      if (size > max) return undefined;
      chunks.push(value);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return new TextDecoder().decode(all);
}

/** What a handshake offers in `Sec-WebSocket-Protocol`: the protocol, and a token if any. */
function offered(req: HandshakeRequest): { protocol: "v1" | "legacy" | undefined; token?: string } {
  const list = (req.headers.get("sec-websocket-protocol") ?? "")
    .split(",").map((p) => p.trim()).filter((p) => p !== "");
  // The token travels as a subprotocol, `token.<base64url>`: never in the URL, so never in logs.
  const token = list.find((p) => p.startsWith(TOKEN_PREFIX))?.slice(TOKEN_PREFIX.length);
  const rest = list.filter((p) => !p.startsWith(TOKEN_PREFIX));
  if (rest.length === 0) return { protocol: token === undefined ? "legacy" : undefined };
  return { protocol: rest.includes(SUBPROTOCOL) ? "v1" : undefined, token };
}

const TOKEN_PREFIX = "token.";

/** Options of {@linkcode createHandler}. */
export interface HandlerOptions {
  /** Limits and origins. */
  settings: Settings;
  /** For `/healthz`. */
  store: ChatStore;
  /** Names, tokens, passwords. */
  accounts: Accounts;
  /** Connections per user (and send budgets, which the hub takes). */
  userLimits: UserLimits;
  /** Whether the server is shutting down (no new sockets). */
  isClosing: () => boolean;
  /** The client's address behind a relayed connection (the guard's); the peer's own when absent. */
  clientIp?: (info: Deno.ServeHandlerInfo<Deno.NetAddr>) => string | undefined;
}

/**
 * The request handler (for `Deno.serve`), with `handshake` for the
 * WebSocket handshakes the guard read itself, which are not `Request`s.
 */
export interface Handler {
  (req: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>): Promise<Response>;
  /** A `GET` with `Upgrade: websocket`, to a path under `/ws/` before URL normalisation. */
  handshake(req: HandshakeRequest, info: Deno.ServeHandlerInfo<Deno.NetAddr>): Promise<Response>;
}

/** Makes the request handler over a hub. */
export function createHandler(hub: ChatHub, options: HandlerOptions): Handler {
  const { settings, accounts } = options;
  const allowed = new Set(settings.allowOrigin.split(",").map((o) => o.trim()).filter(Boolean));
  const perIp = new OpenCounter();
  const connects = new MinuteCounter(settings.connectsPerMinute);
  const logins = new MinuteCounter(settings.loginsPerMinute);
  // DNS rebinding: sockets and logins only under a host name that is the server's own.
  const ownHost = hostPolicy(settings.publicHost, settings.allowOrigin);
  const misdirected = (req: HandshakeRequest, url: URL) =>
    settings.publicHost !== "*" && !ownHost(req.headers.get("host") ?? url.host);

  const ipOf = (info: Deno.ServeHandlerInfo<Deno.NetAddr>) =>
    options.clientIp?.(info) ?? info.remoteAddr.hostname;
  /** A handshake to a path under `/ws/`, from `Deno.serve` or the guard. */
  const toSocket = async (
    req: HandshakeRequest,
    url: URL,
    info: Deno.ServeHandlerInfo<Deno.NetAddr>,
  ) => {
    if (misdirected(req, url)) return text(421, "unknown host name; see --public-host");
    return await upgrade(req, { segment: url.pathname.slice(4), url, ip: ipOf(info) });
  };

  const handshake = async (req: HandshakeRequest, info: Deno.ServeHandlerInfo<Deno.NetAddr>) => {
    const url = new URL(req.url);
    // URL parsing folds `/ws/..` into `/`: a handshake anywhere else is a bad name.
    if (!url.pathname.startsWith("/ws/")) {
      return text(400, "connect the WebSocket to /ws/<username>");
    }
    return await toSocket(req, url, info);
  };

  return Object.assign(async (req: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>) => {
    const url = new URL(req.url);
    const path = url.pathname;
    if (path.startsWith("/ws/")) return await toSocket(req, url, info);
    const ip = ipOf(info);
    if (path === "/api/login" && misdirected(req, url)) {
      return text(421, "unknown host name; see --public-host");
    }
    // URL parsing folds `/ws/..` into `/`: a handshake anywhere else is a bad name, not a page.
    if (req.headers.get("upgrade")?.toLowerCase() === "websocket") {
      return text(400, "connect the WebSocket to /ws/<username>");
    }
    if (path === "/api/login") return await login(req, ip);
    if (req.method !== "GET" && req.method !== "HEAD") return text(405, "method not allowed");
    if (path === "/healthz") {
      const store = await options.store.healthy();
      return Response.json({
        ok: store && !options.isClosing(),
        version: VERSION,
        ...hub.stats,
        store: store ? "ok" : "failing",
      }, { status: store ? 200 : 503, headers: { "cache-control": "no-store" } });
    }
    return serveAsset(req, path) ?? text(404, "not found");
  }, { handshake });

  /**
   * Browsers send `Origin` with every handshake and let any page open a
   * socket to any server. What a foreign page could borrow is what the
   * browser keeps for our origin; we keep nothing ambient (no cookies), so the
   * check guards what a page of ours does: `chat.v1` connections (claiming a
   * name, presenting a token) and password logins come only from our own page
   * and the allowlist. Legacy connections (the original page, opened from a
   * file or any static server) carry no credential and may come from any
   * origin, `null` included. Clients without `Origin` are not browsers.
   */
  function originAllowed(req: HandshakeRequest, url: URL): boolean {
    const origin = req.headers.get("origin");
    if (origin === null) return true;
    if (allowed.has(origin)) return true;
    try {
      const o = new URL(origin);
      return o.host === (req.headers.get("host") ?? url.host) &&
        (o.protocol === "http:" || o.protocol === "https:");
    } catch {
      return false;
    }
  }

  async function login(req: Request, ip: string): Promise<Response> {
    if (req.method !== "POST") return text(405, 'POST {"user","password"} as JSON');
    if (!originAllowed(req, new URL(req.url))) {
      return text(403, "this origin may not log in; see --allow-origin");
    }
    if (!logins.take(ip)) {
      return Response.json({ error: "too many logins; wait a minute" }, { status: 429 });
    }
    const raw = await readCapped(req, settings.maxLoginBytes);
    if (raw === undefined) {
      return Response.json(
        { error: `the body is limited to ${settings.maxLoginBytes} bytes` },
        { status: 413, headers: { connection: "close" } },
      );
    }
    let body: unknown;
    try {
      body = JSON.parse(raw);
    } catch {
      body = undefined;
    }
    const b = body as { user?: unknown; password?: unknown } | undefined;
    const name = parseName(b?.user);
    if (!name.ok || typeof b?.password !== "string" || b.password.length > 200) {
      return Response.json({ error: 'send JSON {"user","password"}' }, { status: 400 });
    }
    let result;
    try {
      result = await accounts.login(name.name, b.password);
    } catch (error) {
      if (!(error instanceof BusyError)) throw error;
      return Response.json({ error: "busy; try again in a moment" }, {
        status: 503,
        headers: { "retry-after": "1" },
      });
    }
    if (!result) return Response.json({ error: "wrong name or password" }, { status: 401 });
    return Response.json(result, { headers: { "cache-control": "no-store" } });
  }

  async function upgrade(
    req: HandshakeRequest,
    at: { segment: string; url: URL; ip: string },
  ): Promise<Response> {
    let raw: string;
    try {
      raw = decodeURIComponent(at.segment);
    } catch {
      return text(400, "the username is not valid percent-encoding");
    }
    const name = parseName(raw);
    if (!name.ok) return text(400, `bad username: ${name.reason}`);
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return text(426, "this address takes a WebSocket: connect with new WebSocket(url)");
    }
    const { protocol, token } = offered(req);
    if (!protocol) return text(400, `unsupported subprotocol; offer ${SUBPROTOCOL} or none`);
    const legacy = protocol === "legacy";
    if (!legacy && !originAllowed(req, at.url)) {
      return text(
        403,
        `this origin may not open ${SUBPROTOCOL} connections; see --allow-origin ` +
          "(the original page's protocol, with no subprotocol, may connect from anywhere)",
      );
    }
    if (options.isClosing()) return text(503, "the server is shutting down; try again");
    if (perIp.count(at.ip) >= settings.maxConnectionsPerIp) {
      return text(429, `at most ${settings.maxConnectionsPerIp} connections per address`);
    }
    if (!connects.take(at.ip)) {
      return text(
        429,
        `at most ${settings.connectsPerMinute} new connections a minute per address`,
      );
    }
    // Who is this? Decided before the socket exists; a refusal still upgrades, so that a
    // browser can read the reason in the close event (it cannot read an HTTP status).
    const resolved = await accounts.resolve(name.name);
    const user = resolved.ok ? resolved.user : name.name;
    // A slot of the user's connections, counted across instances on a shared backend.
    let closeUser = () => {};
    if (resolved.ok) {
      const opened = await options.userLimits.openConnection(user).catch((error) => {
        console.error("user limits: could not count a connection", error);
        return null;
      });
      if (opened === null) return text(503, "the store did not answer; try again");
      if (opened === undefined) {
        return text(429, `at most ${settings.maxConnectionsPerUser} connections per user`);
      }
      closeUser = opened;
    }
    // The upgrade first: a handshake it cannot accept claims nothing.
    const upgraded = upgradeSocket(req, {
      protocol: legacy ? undefined : SUBPROTOCOL,
      idleTimeout: settings.idleTimeout,
    });
    if (!upgraded.ok) {
      closeUser();
      return upgraded.response;
    }
    const { socket, response } = upgraded;
    socket.binaryType = "arraybuffer";
    let auth: Authenticated;
    try {
      auth = resolved.ok
        ? await accounts.authenticate(resolved.user, { token, legacy })
        : { ok: false, reason: resolved.reason, code: resolved.code };
      // Registered before the socket opens: to a legacy client an open socket means
      // "reachable", so a DM sent to it the moment it opens must find the name.
      if (auth.ok) {
        const registered = await accounts.register(user);
        if (!registered.ok) auth = { ok: false, reason: registered.reason, code: registered.code };
      }
    } catch (error) {
      console.error(`handshake of ${user}: the accounts store failed`, error);
      closeUser();
      socket.onopen = () => socket.close(CloseCode.InternalError, "the store did not answer");
      return response;
    }
    if (!auth.ok) {
      // A refused socket holds no place among the name's connections.
      closeUser();
      const refusal = auth;
      socket.onopen = () => {
        if (legacy) {
          socket.send(
            toLegacyError({ type: "error", code: "forbidden", message: refusal.reason }),
          );
        }
        socket.close(CloseCode.Forbidden, refusalReason(refusal));
      };
      return response;
    }
    const closeIp = perIp.open(at.ip);
    const session = auth.session, issued = auth.token;
    let conn: Connection | undefined;
    socket.onopen = () => {
      const opened = conn = hub.connect(socket, {
        user,
        legacy,
        resume: at.url.searchParams.has("resume"),
        session,
        token: issued,
      });
      socket.onmessage = (e) => {
        if (opened.closed) socket.onmessage = null;
        else opened.receive(e.data);
      };
      // `close` can fire twice, and `error` precedes it: leaving is idempotent.
      socket.onclose = () => opened.close();
      socket.onerror = () => opened.close();
    };
    // Also for a socket that never opened: it must not hold its places.
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      closeIp();
      closeUser();
      // A name claimed by a connection that closed before its welcome (which carries the
      // token) is claimed by nobody who can prove it: give it back.
      if (issued !== undefined && session !== undefined && !(conn?.welcomed ?? false)) {
        accounts.unclaim(user, session).catch((error) =>
          log.error("could not undo the claim of a connection closed before its welcome", error)
        );
      }
    };
    socket.addEventListener("close", release);
    socket.addEventListener("error", release);
    return response;
  }
}

/**
 * The upgrade: behind the guard, its own WebSocket (lib/websocket.ts, which
 * bounds fragmented messages; see README "Hostile clients"); otherwise
 * (Deno Deploy) `Deno.upgradeWebSocket`, with the subprotocol answered here: Deno looks for
 * it in the request's list split on `", "` exactly, while RFC 9110 lists
 * allow any whitespace around the commas (Node's `ws` sends `a,b`). The list
 * was parsed by {@linkcode offered}; the chosen name goes on the response.
 * A handshake Deno refuses is logged with why, and answered 400.
 */
function upgradeSocket(
  req: HandshakeRequest,
  options: { protocol?: string; idleTimeout: number },
): { ok: true; socket: ServerSocket; response: Response } | { ok: false; response: Response } {
  try {
    const here = upgradeHere(req, options);
    if (here) return { ok: true, ...here };
    // Not the guard's: then `Deno.serve`'s own.
    if (!(req instanceof Request)) throw new TypeError("not a request Deno.serve took");
    const { socket, response } = Deno.upgradeWebSocket(req, { idleTimeout: options.idleTimeout });
    if (options.protocol !== undefined) {
      response.headers.set("sec-websocket-protocol", options.protocol);
    }
    // The same events and members; Deno's are full DOM events.
    return { ok: true, socket: socket as unknown as ServerSocket, response };
  } catch (error) {
    const why = error instanceof Error ? error.message : String(error);
    console.error(`WebSocket handshake refused (${new URL(req.url).pathname}): ${why}`);
    return { ok: false, response: text(400, `not a valid WebSocket handshake: ${why}`) };
  }
}

/** A refusal's close reason: `<code>: <words>`, within the 123 bytes a close frame allows. */
function refusalReason(refusal: { reason: string; code?: string }): string {
  const full = refusal.code === undefined ? refusal.reason : `${refusal.code}: ${refusal.reason}`;
  const bytes = new TextEncoder();
  let out = full;
  while (bytes.encode(out).length > 123) out = out.slice(0, -1);
  return out;
}

/** Starts serving: the page, `/healthz` and the WebSocket endpoint. */
export async function startChatServer(options: ChatServerOptions): Promise<ChatServer> {
  const { settings, store } = options;
  const userLimits = options.userLimits ?? new LocalUserLimits(settings);
  const hub = new ChatHub({
    store,
    accounts: options.accounts,
    bus: options.bus,
    presence: options.presence,
    userLimits,
    limits: {
      maxFrameBytes: settings.maxFrameBytes,
      maxTextLength: settings.maxTextLength,
      maxBufferedBytes: settings.maxBufferedBytes,
      replayLimit: settings.replayLimit,
      maxRoomsPerUser: settings.maxRoomsPerUser,
      sendRate: settings.sendRate,
      sendBurst: settings.sendBurst,
      fanoutIntervalMs: settings.fanoutInterval * 1000,
      welcomeOnline: settings.welcomeOnline,
      welcomeDms: settings.welcomeDms,
      maxQueuedBytes: settings.maxQueuedBytes,
      maxInvitesPerUser: settings.maxInvitesPerUser,
      maxRoomsCreatedPerUser: settings.maxRoomsCreatedPerUser,
    },
  });
  let closing = false;
  let guard: Guard | undefined;
  const direct = new WeakSet<Deno.ServeHandlerInfo<Deno.NetAddr>>();
  const handler = createHandler(hub, {
    settings,
    store,
    accounts: options.accounts,
    userLimits,
    isClosing: () => closing,
    // A relayed connection's client, by the relay's port; one answered by the guard is its own.
    clientIp: (info) =>
      direct.has(info) ? undefined : guard?.clientOf(info.remoteAddr.port)?.hostname,
  });
  const guarded = options.guard ?? true;
  const stopped = Promise.withResolvers<void>();
  let server!: Deno.HttpServer<Deno.NetAddr>;
  /** Starts `Deno.serve` (behind the guard, on a private loopback port); resolves with its address. */
  const serve = async (): Promise<Deno.NetAddr> => {
    const listening = Promise.withResolvers<Deno.NetAddr>();
    const current = server = Deno.serve({
      port: guarded ? 0 : settings.port,
      hostname: guarded ? "127.0.0.1" : settings.hostname,
      onListen: (addr) => listening.resolve(addr),
    }, handler);
    // Never an unhandled rejection. If the listener dies anyway (descriptors ran out under
    // it), a new one takes over behind the guard, so the process keeps serving.
    current.finished.then(() => {
      if (current === server) stopped.resolve();
    }, async (error) => {
      log.error("the HTTP server stopped", error);
      if (current !== server) return;
      if (!guarded || closing) return stopped.resolve();
      try {
        guard?.retarget(await serve());
        console.error("the HTTP server was restarted");
      } catch (again) {
        log.error("the HTTP server could not restart", again);
        stopped.resolve();
      }
    });
    return await listening.promise;
  };
  let addr = await serve();
  if (guarded) {
    const budget = descriptorBudget();
    const descriptors = budget?.limit;
    const about = budget?.probed ? "about " : "";
    const fit = budget === undefined ? Infinity : connectionsFitting(budget.limit, budget.inUse);
    const wanted = settings.maxConnections === 0 ? fit : settings.maxConnections;
    if (wanted > fit) {
      console.warn(
        `warning: --max-connections ${wanted} needs about ${wanted} descriptors, more than ` +
          `the ${about}${descriptors} this process may open (ulimit -n); serving at most ${fit}`,
      );
    } else if (fit < 1000 && settings.maxConnections === 0) {
      console.warn(
        `warning: ulimit -n is ${about}${descriptors}: at most ${fit} connections; raise it for more`,
      );
    }
    try {
      guard = startGuard({
        listen: { hostname: settings.hostname, port: settings.port },
        upstream: { hostname: addr.hostname, port: addr.port },
        maxConnections: Math.min(wanted, fit, 1_000_000),
        maxDescriptors: fit,
        handshakeTimeoutMs: settings.handshakeTimeout * 1000,
        maxMessageBytes: settings.maxFrameBytes,
        handshake: (req, info) => {
          direct.add(info);
          return handler.handshake(req, info);
        },
      });
    } catch (error) {
      await server.shutdown();
      throw error;
    }
    addr = guard.addr;
  }
  options.onListen?.(addr);
  const shutdown = async () => {
    guard?.close();
    if (!closing) {
      closing = true;
      await hub.shutdown();
    }
    await server.shutdown();
    await guard?.finished;
    stopped.resolve();
  };
  const host = addr.hostname === "0.0.0.0" || addr.hostname === "::" ? "127.0.0.1" : addr.hostname;
  return {
    addr,
    origin: `http://${host.includes(":") ? `[${host}]` : host}:${addr.port}`,
    hub,
    finished: stopped.promise,
    shutdown,
    [Symbol.asyncDispose]: shutdown,
  };
}
