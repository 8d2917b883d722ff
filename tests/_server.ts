/**
 * Test servers: one in this process on a free loopback port, or the real
 * `main.ts` in a child process (for kills and restarts).
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { Accounts } from "../lib/accounts.ts";
import type { Bus } from "../lib/bus.ts";
import { type ChatServer, startChatServer } from "../lib/server.ts";
import { DEFAULT_SETTINGS, type Settings } from "../lib/settings.ts";
import type { SqlDatabase } from "../lib/sql/dialect.ts";
import { openStore } from "../lib/sql/open.ts";
import type { ChatStore } from "../lib/store.ts";

/** How long a server may take to listen, or to stop when asked, before the test fails. */
export const SERVER_DEADLINE_MS = 20_000;

/**
 * Resolves with what `promise` gives, or rejects once `ms` pass: a bound on an
 * event that a broken server never produces (so the test fails, not hangs), not a
 * sleep. `what` names the event; a function is asked only when time runs out.
 */
export async function within<T>(
  ms: number,
  what: string | (() => string),
  promise: Promise<T>,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new Error(`${typeof what === "string" ? what : what()}: nothing within ${ms} ms`));
    }, ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** A server under test. */
export interface TestServer extends AsyncDisposable {
  /** `http://127.0.0.1:PORT` */
  origin: string;
  /** The port it listens on. */
  port: number;
  /** Stops it and closes its store. */
  close(): Promise<void>;
}

/** An in-process server with its hub, for tests that look inside. */
export interface InProcessServer extends TestServer {
  /** The running server. */
  server: ChatServer;
}

/** Options of {@linkcode startServer}. */
export interface StartOptions {
  /** A SQLite file or a `postgres://` URL; `:memory:` when absent. */
  data?: string;
  /** Settings to change from the defaults. */
  settings?: Partial<Settings>;
  /** A store to use instead of opening one (the server does not own it); its accounts live in `db`. */
  store?: ChatStore & { db: SqlDatabase };
  /** The fan-out between servers on one store; in-process when absent. */
  bus?: Bus;
  /**
   * The TCP guard and the server's own WebSocket in front (default); `false`
   * serves as on Deno Deploy: `Deno.serve` and `Deno.upgradeWebSocket`.
   */
  guard?: boolean;
}

/**
 * Limits for tests that push volume through one user or one address (all
 * tests come from 127.0.0.1); tests of the limits themselves set their own.
 */
export const RELAXED: Partial<Settings> = {
  sendRate: 100_000,
  sendBurst: 100_000,
  connectsPerMinute: 100_000,
  maxConnectionsPerIp: 10_000,
  loginsPerMinute: 1000,
};

/** Starts a server in this process on 127.0.0.1 and a free port. */
export async function startServer(options: StartOptions = {}): Promise<InProcessServer> {
  const store = options.store ?? await openStore(options.data ?? ":memory:");
  const settings: Settings = {
    ...DEFAULT_SETTINGS,
    ...RELAXED,
    data: options.data ?? ":memory:",
    ...options.settings,
    hostname: "127.0.0.1",
    port: 0,
  };
  // A lighter password hash keeps tests quick; the algorithm and code path are the real ones.
  const accounts = new Accounts(store.db, { iterations: 1000 });
  const server = await startChatServer({
    settings,
    store,
    accounts,
    bus: options.bus,
    guard: options.guard,
  });
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    try {
      await within(SERVER_DEADLINE_MS, "the server shutting down", server.shutdown());
    } finally {
      if (!options.store) await store.close();
    }
  };
  return {
    origin: server.origin,
    port: server.addr.port,
    server,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** A server running `main.ts` in a child process. */
export interface SpawnedServer extends TestServer {
  /** The child's process id. */
  pid: number;
  /** Sends a signal (SIGKILL by default) and waits for the process to end. */
  kill(signal?: Deno.Signal): Promise<Deno.CommandStatus>;
  /** Everything the process printed so far. */
  output(): string;
  /** Resolves once the process has printed a match of `pattern` (now or later); fails after `ms`. */
  printed(pattern: RegExp, ms?: number): Promise<void>;
  /** Whether the process has exited. */
  exited(): boolean;
}

/** Options of {@linkcode spawnServer}. */
export interface SpawnOptions {
  /** The SQLite file or `postgres://` URL. */
  data: string;
  /** The port; a free one when absent (keep it to restart on the same address). */
  port?: number;
  /** More flags for main.ts. */
  args?: string[];
  /** The limits of {@linkcode RELAXED} (true when absent); false keeps main.ts's defaults. */
  relaxed?: boolean;
  /** A descriptor limit (`ulimit -n`) to run it under. */
  nofile?: number;
}

const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));

/** Runs `main.ts` in a child process and waits until it listens. */
export async function spawnServer(options: SpawnOptions): Promise<SpawnedServer> {
  const deno = [
    Deno.execPath(),
    "run",
    "--allow-net",
    "--allow-env",
    "--allow-read",
    "--allow-write",
    MAIN,
    "--hostname",
    "127.0.0.1",
    "--port",
    String(options.port ?? 0),
    "--data",
    options.data,
    ...Object.entries(options.relaxed === false ? {} : RELAXED).flatMap(([key, value]) => [
      `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`,
      String(value),
    ]),
    // Later flags win: a test's own limits override the relaxed ones.
    ...(options.args ?? []),
  ];
  const [program, ...args] = options.nofile === undefined
    ? deno
    : ["bash", "-c", `ulimit -n ${options.nofile}; exec "$0" "$@"`, ...deno];
  const child = new Deno.Command(program, {
    args,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  let log = "";
  const decoder = new TextDecoder();
  let onLine: ((line: string) => void) | undefined;
  /** Who waits for something to be printed. */
  const watchers = new Set<() => void>();
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) {
      const text = decoder.decode(chunk, { stream: true });
      log += text;
      onLine?.(log);
      for (const watch of watchers) watch();
    }
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
  let exited = false;
  child.status.then(() => exited = true);
  let port: number;
  try {
    port = await within(
      SERVER_DEADLINE_MS,
      () => `main.ts printing "listening on"; it printed:\n${log}`,
      new Promise<number>((resolve, reject) => {
        onLine = (all) => {
          const m = all.match(/listening on http:\/\/[^:]+:(\d+)\//);
          if (m) resolve(Number(m[1]));
        };
        child.status.then((s) =>
          reject(new Error(`server exited (${s.code}) before listening:\n${log}`))
        );
      }),
    );
  } catch (error) {
    // A server that never listened is not handed out: stop it here, or it outlives the test.
    try {
      child.kill("SIGKILL");
    } catch {
      // Already exited.
    }
    await child.status;
    await pumps;
    throw error;
  } finally {
    onLine = undefined;
  }
  let status: Promise<Deno.CommandStatus> | undefined;
  const kill = async (signal: Deno.Signal = "SIGKILL") => {
    if (!status) {
      try {
        child.kill(signal);
      } catch {
        // Already exited.
      }
      const exited = child.status.then(async (s) => {
        await pumps;
        return s;
      });
      // A server that ignores SIGTERM fails the test (and is then killed), rather than hanging it.
      status = within(SERVER_DEADLINE_MS, `the server exiting on ${signal}`, exited).catch(
        async (error) => {
          child.kill("SIGKILL");
          await exited;
          throw new Error(`${error.message}; it printed:\n${log}`);
        },
      );
    }
    return await status;
  };
  const close = async () => void await kill("SIGKILL");
  return {
    origin: `http://127.0.0.1:${port}`,
    port,
    pid: child.pid,
    kill,
    close,
    output: () => log,
    printed: (pattern, ms = SERVER_DEADLINE_MS) => {
      let watch = () => {};
      const seen = new Promise<void>((resolve) => {
        watch = () => pattern.test(log) && resolve();
        watchers.add(watch);
        watch();
      });
      return within(ms, () => `the server printing ${pattern}; it printed:\n${log}`, seen)
        .finally(() => watchers.delete(watch));
    },
    exited: () => exited,
    [Symbol.asyncDispose]: close,
  };
}
