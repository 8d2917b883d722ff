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
import { ChatHub } from "./hub.ts";
import { parseName } from "./names.ts";
import { serveAsset } from "./page.ts";
import { SUBPROTOCOL } from "./protocol.ts";
import type { Settings } from "./settings.ts";
import type { ChatStore } from "./store.ts";

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
  /** Called once listening, with the bound address. */
  onListen?: (addr: Deno.NetAddr) => void;
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

/** Which protocol a handshake asks for: `chat.v1`, legacy (none), or one we do not speak. */
function chooseProtocol(req: Request): "v1" | "legacy" | undefined {
  const offered = (req.headers.get("sec-websocket-protocol") ?? "")
    .split(",").map((p) => p.trim()).filter((p) => p !== "");
  if (offered.length === 0) return "legacy";
  return offered.includes(SUBPROTOCOL) ? "v1" : undefined;
}

/** Makes the request handler over a hub. */
export function createHandler(
  hub: ChatHub,
  options: { settings: Settings; store: ChatStore; isClosing: () => boolean },
): (req: Request) => Promise<Response> | Response {
  return async (req) => {
    const url = new URL(req.url);
    const path = url.pathname;
    if (path.startsWith("/ws/")) return upgrade(req, path.slice(4), url.searchParams.has("resume"));
    // URL parsing folds `/ws/..` into `/`: a handshake anywhere else is a bad name, not a page.
    if (req.headers.get("upgrade")?.toLowerCase() === "websocket") {
      return text(400, "connect the WebSocket to /ws/<username>");
    }
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
  };

  function upgrade(req: Request, segment: string, resume: boolean): Response {
    let raw: string;
    try {
      raw = decodeURIComponent(segment);
    } catch {
      return text(400, "the username is not valid percent-encoding");
    }
    const name = parseName(raw);
    if (!name.ok) return text(400, `bad username: ${name.reason}`);
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return text(426, "this address takes a WebSocket: connect with new WebSocket(url)");
    }
    if (options.isClosing()) return text(503, "the server is shutting down; try again");
    const protocol = chooseProtocol(req);
    if (!protocol) return text(400, `unsupported subprotocol; offer ${SUBPROTOCOL} or none`);
    const { socket, response } = Deno.upgradeWebSocket(req, {
      protocol: protocol === "v1" ? SUBPROTOCOL : undefined,
      idleTimeout: options.settings.idleTimeout,
    });
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      const conn = hub.connect(socket, { user: name.name, legacy: protocol === "legacy", resume });
      socket.onmessage = (e) => conn.receive(e.data);
      // `close` can fire twice, and `error` precedes it: leaving is idempotent.
      socket.onclose = () => conn.close();
      socket.onerror = () => conn.close();
    };
    return response;
  }
}

/** Starts serving: the page, `/healthz` and the WebSocket endpoint. */
export async function startChatServer(options: ChatServerOptions): Promise<ChatServer> {
  const { settings, store } = options;
  const hub = new ChatHub({
    store,
    bus: options.bus,
    limits: {
      maxFrameBytes: settings.maxFrameBytes,
      maxTextLength: settings.maxTextLength,
      maxBufferedBytes: settings.maxBufferedBytes,
      replayLimit: settings.replayLimit,
    },
  });
  let closing = false;
  const handler = createHandler(hub, { settings, store, isClosing: () => closing });
  const listening = Promise.withResolvers<Deno.NetAddr>();
  const server = Deno.serve({
    port: settings.port,
    hostname: settings.hostname,
    onListen: (addr) => {
      options.onListen?.(addr);
      listening.resolve(addr);
    },
  }, handler);
  const shutdown = async () => {
    if (!closing) {
      closing = true;
      hub.shutdown();
    }
    await server.shutdown();
  };
  const addr = await listening.promise;
  const host = addr.hostname === "0.0.0.0" || addr.hostname === "::" ? "127.0.0.1" : addr.hostname;
  return {
    addr,
    origin: `http://${host.includes(":") ? `[${host}]` : host}:${addr.port}`,
    hub,
    finished: server.finished,
    shutdown,
    [Symbol.asyncDispose]: shutdown,
  };
}
