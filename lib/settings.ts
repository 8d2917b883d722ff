/**
 * Settings from command-line flags and environment variables, flags first.
 * Every limit the server enforces is one of these, with its default here and
 * its description in `--help` and the README.
 *
 * @module
 */

import { WAL_RESTART_PAGES } from "./sql/sqlite.ts";
import { DMS_PAGE_DEFAULT, DMS_PAGE_MAX } from "./protocol.ts";

/** Everything the server can be told. */
export interface Settings {
  /** TCP port to listen on (`--port`, `PORT`). */
  port: number;
  /** Address to listen on (`--hostname`, `HOST`); `0.0.0.0` lets the local network join. */
  hostname: string;
  /**
   * Where the data lives (`--data`, `CHAT_DATA`): a SQLite file, `:memory:`
   * for a throwaway server, or a `postgres://` URL for several instances.
   */
  data: string;
  /** SQLite's `synchronous` level, `full` or `normal` (`--sqlite-synchronous`). */
  sqliteSynchronous: string;
  /** SQLite log pages (4 KiB) past which the log starts over (`--sqlite-wal-pages`). */
  sqliteWalPages: number;
  /** Whether SQLite keeps its search index, `on` or `off` (`--search-index`). */
  searchIndex: string;
  /** Largest frame a client may send, in bytes (`--max-frame-bytes`, `CHAT_MAX_FRAME_BYTES`). */
  maxFrameBytes: number;
  /** Longest message, in characters (`--max-text-length`, `CHAT_MAX_TEXT_LENGTH`). */
  maxTextLength: number;
  /** Bytes queued for a client that stopped reading before it is dropped (`--max-buffered-bytes`). */
  maxBufferedBytes: number;
  /** Most messages replayed per conversation on resume (`--replay-limit`, `CHAT_REPLAY_LIMIT`). */
  replayLimit: number;
  /** Origins besides the server's own allowed to open sockets, comma-separated, exact (`--allow-origin`). */
  allowOrigin: string;
  /** Rooms one user may be in (`--max-rooms-per-user`). */
  maxRoomsPerUser: number;
  /** Open connections per user (`--max-connections-per-user`). */
  maxConnectionsPerUser: number;
  /** Open connections per client IP address (`--max-connections-per-ip`). */
  maxConnectionsPerIp: number;
  /** New connections per client IP address per minute (`--connects-per-minute`). */
  connectsPerMinute: number;
  /** Messages per second per user, on average (`--send-rate`). */
  sendRate: number;
  /** Messages per user at once after a quiet spell (`--send-burst`). */
  sendBurst: number;
  /** Password logins per client IP address per minute (`--logins-per-minute`). */
  loginsPerMinute: number;
  /** Seconds without a pong before a silent client is dropped (`--idle-timeout`, `CHAT_IDLE_TIMEOUT`). */
  idleTimeout: number;
  /** Seconds a stopped instance's users stay online elsewhere (`--presence-ttl`; PostgreSQL only). */
  presenceTtl: number;
  /** Poll PostgreSQL every this many ms instead of LISTEN; 0 listens (`--pg-poll-ms`). */
  pgPollMs: number;
  /** Open TCP connections at most, all clients together (`--max-connections`). */
  maxConnections: number;
  /** Seconds a connection may take to send a complete request head (`--handshake-timeout`). */
  handshakeTimeout: number;
  /** Seconds between two `typing` relayed per sender and conversation, and two batched presence frames (`--fanout-interval`). */
  fanoutInterval: number;
  /** Users online a `welcome` lists at most; the rest are paged (`--welcome-online`). */
  welcomeOnline: number;
  /** DMs a `welcome` lists at most; the rest are paged (`--welcome-dms`). */
  welcomeDms: number;
  /** Bytes of frames one connection may have waiting to be handled (`--max-queued-bytes`). */
  maxQueuedBytes: number;
  /** Largest body of `POST /api/login`, in bytes (`--max-login-bytes`). */
  maxLoginBytes: number;
  /** Password hashes computed at once, all clients together (`--max-concurrent-hashes`). */
  maxConcurrentHashes: number;
  /** Password hashes waiting for a slot before more are refused as busy (`--max-queued-hashes`). */
  maxQueuedHashes: number;
  /** Pending invitations one user may hold (`--max-invites-per-user`). */
  maxInvitesPerUser: number;
  /** New room names one user may bring into being, ever (`--max-rooms-created-per-user`). */
  maxRoomsCreatedPerUser: number;
  /** Host names the server is reached under besides IPs and localhost, comma-separated; `*` any (`--public-host`). */
  publicHost: string;
}

interface Spec {
  key: keyof Settings;
  flag: string;
  env: string;
  kind: "int" | "number" | "string";
  help: string;
  min?: number;
  /** The largest value allowed, where there is one. */
  max?: number;
}

const SPECS: Spec[] = [
  {
    key: "port",
    flag: "port",
    env: "PORT",
    kind: "int",
    min: 0,
    help: "TCP port (0 picks a free one)",
  },
  { key: "hostname", flag: "hostname", env: "HOST", kind: "string", help: "address to listen on" },
  {
    key: "data",
    flag: "data",
    env: "CHAT_DATA",
    kind: "string",
    help:
      "where users, rooms and messages are kept: a SQLite file, :memory: (keeps nothing), or postgres://user:pass@host:port/db (several instances; on Deno Deploy DATABASE_URL/PG* are used)",
  },
  {
    key: "sqliteSynchronous",
    flag: "sqlite-synchronous",
    env: "CHAT_SQLITE_SYNCHRONOUS",
    kind: "string",
    help:
      "full: an acknowledged message survives power loss; normal: faster commits that survive a crash of the server but maybe not of the machine",
  },
  {
    key: "sqliteWalPages",
    flag: "sqlite-wal-pages",
    env: "CHAT_SQLITE_WAL_PAGES",
    kind: "int",
    min: 100,
    help:
      "SQLite log pages (4 KiB each) past which the next commit waits for a checkpoint that lets the log start over: the log's size on disk while writes never stop",
  },
  {
    key: "searchIndex",
    flag: "search-index",
    env: "CHAT_SEARCH_INDEX",
    kind: "string",
    help:
      "on: SQLite keeps a trigram index of message text, filled in the background (~9 µs of CPU a message); off: none (search is not on the wire yet, and scans)",
  },
  {
    key: "maxFrameBytes",
    flag: "max-frame-bytes",
    env: "CHAT_MAX_FRAME_BYTES",
    kind: "int",
    min: 1024,
    help: "largest frame a client may send; a bigger one closes the connection with 1009",
  },
  {
    key: "maxTextLength",
    flag: "max-text-length",
    env: "CHAT_MAX_TEXT_LENGTH",
    kind: "int",
    min: 1,
    help: "longest message text in characters; longer gets an error frame too_large",
  },
  {
    key: "maxBufferedBytes",
    flag: "max-buffered-bytes",
    env: "CHAT_MAX_BUFFERED_BYTES",
    kind: "int",
    min: 1024,
    help: "bytes queued for a client that stopped reading before it is closed with 4000",
  },
  {
    key: "replayLimit",
    flag: "replay-limit",
    env: "CHAT_REPLAY_LIMIT",
    kind: "int",
    min: 1,
    help: "most messages replayed per conversation on resume, or held waiting for it",
  },
  {
    key: "allowOrigin",
    flag: "allow-origin",
    env: "CHAT_ALLOW_ORIGIN",
    kind: "string",
    help: "other origins whose pages may open chat.v1 sockets and log in, comma-separated, exact " +
      "(e.g. https://chat.example); the original page's protocol connects from any origin",
  },
  {
    key: "maxRoomsPerUser",
    flag: "max-rooms-per-user",
    env: "CHAT_MAX_ROOMS_PER_USER",
    kind: "int",
    min: 1,
    help: "rooms one user may be in besides the lobby; more gets too_many_rooms",
  },
  {
    key: "maxConnectionsPerUser",
    flag: "max-connections-per-user",
    env: "CHAT_MAX_CONNECTIONS_PER_USER",
    kind: "int",
    min: 1,
    help: "open connections (tabs, devices) per user; more gets HTTP 429",
  },
  {
    key: "maxConnectionsPerIp",
    flag: "max-connections-per-ip",
    env: "CHAT_MAX_CONNECTIONS_PER_IP",
    kind: "int",
    min: 1,
    help: "open connections per client address; more gets HTTP 429",
  },
  {
    key: "connectsPerMinute",
    flag: "connects-per-minute",
    env: "CHAT_CONNECTS_PER_MINUTE",
    kind: "int",
    min: 1,
    help: "new connections per client address per minute; more gets HTTP 429",
  },
  {
    key: "sendRate",
    flag: "send-rate",
    env: "CHAT_SEND_RATE",
    kind: "number",
    min: 0.01,
    help:
      "messages per second per user on average; more gets rate_limited (abuse closes with 1008)",
  },
  {
    key: "sendBurst",
    flag: "send-burst",
    env: "CHAT_SEND_BURST",
    kind: "int",
    min: 1,
    help: "messages a user may send at once after a quiet spell",
  },
  {
    key: "loginsPerMinute",
    flag: "logins-per-minute",
    env: "CHAT_LOGINS_PER_MINUTE",
    kind: "int",
    min: 1,
    help: "password logins per client address per minute; more gets HTTP 429",
  },
  {
    key: "idleTimeout",
    flag: "idle-timeout",
    env: "CHAT_IDLE_TIMEOUT",
    kind: "int",
    min: 0,
    help:
      "seconds a client may stay silent before a ping goes unanswered and it is dropped (0: never)",
  },
  {
    key: "presenceTtl",
    flag: "presence-ttl",
    env: "CHAT_PRESENCE_TTL",
    kind: "number",
    min: 0.2,
    help:
      "PostgreSQL: seconds within which a crashed instance's users show offline everywhere (renewed every quarter of it)",
  },
  {
    key: "pgPollMs",
    flag: "pg-poll-ms",
    env: "CHAT_PG_POLL_MS",
    kind: "int",
    min: 0,
    help:
      "PostgreSQL: read new messages and events every this many ms instead of LISTEN, for poolers that cannot LISTEN (0: listen)",
  },
  {
    key: "maxConnections",
    flag: "max-connections",
    env: "CHAT_MAX_CONNECTIONS",
    kind: "int",
    min: 0,
    help:
      "open TCP connections at most, all clients together; more get HTTP 503 (0: as many as ulimit -n allows, 1 descriptor each, 3 while an HTTP request is relayed)",
  },
  {
    key: "handshakeTimeout",
    flag: "handshake-timeout",
    env: "CHAT_HANDSHAKE_TIMEOUT",
    kind: "int",
    min: 1,
    help: "seconds a connection may take to send a whole request head before it is closed",
  },
  {
    key: "fanoutInterval",
    flag: "fanout-interval",
    env: "CHAT_FANOUT_INTERVAL",
    kind: "number",
    min: 0.01,
    help:
      "seconds between two typing frames relayed per sender and conversation (more are dropped) and between two batched presence frames (each user's latest state wins)",
  },
  {
    key: "welcomeOnline",
    flag: "welcome-online",
    env: "CHAT_WELCOME_ONLINE",
    kind: "int",
    min: 0,
    help:
      "users online a welcome lists at most (DM partners and room-mates first), with the count; clients page through the rest with {type: online}",
  },
  {
    key: "welcomeDms",
    flag: "welcome-dms",
    env: "CHAT_WELCOME_DMS",
    kind: "int",
    min: 0,
    max: DMS_PAGE_MAX,
    help:
      "DM conversations a welcome lists at most, in partner order, with their read state; clients page through the rest with {type: dms}",
  },
  {
    key: "maxQueuedBytes",
    flag: "max-queued-bytes",
    env: "CHAT_MAX_QUEUED_BYTES",
    kind: "int",
    min: 1024,
    help: "bytes of frames one connection may have waiting to be handled; more closes it with 1008",
  },
  {
    key: "maxLoginBytes",
    flag: "max-login-bytes",
    env: "CHAT_MAX_LOGIN_BYTES",
    kind: "int",
    min: 256,
    help: "largest POST /api/login body; a bigger one gets HTTP 413 unread",
  },
  {
    key: "maxConcurrentHashes",
    flag: "max-concurrent-hashes",
    env: "CHAT_MAX_CONCURRENT_HASHES",
    kind: "int",
    min: 1,
    help: "password hashes computed at once, all clients together",
  },
  {
    key: "maxQueuedHashes",
    flag: "max-queued-hashes",
    env: "CHAT_MAX_QUEUED_HASHES",
    kind: "int",
    min: 0,
    help:
      "password hashes waiting for a slot; more get rate_limited (set_password) or HTTP 503 (login)",
  },
  {
    key: "maxInvitesPerUser",
    flag: "max-invites-per-user",
    env: "CHAT_MAX_INVITES_PER_USER",
    kind: "int",
    min: 1,
    help: "pending invitations one user may hold; more are refused with forbidden",
  },
  {
    key: "maxRoomsCreatedPerUser",
    flag: "max-rooms-created-per-user",
    env: "CHAT_MAX_ROOMS_CREATED_PER_USER",
    kind: "int",
    min: 1,
    help: "new rooms one user may bring into being (create, or join a new name); more get bad_name",
  },
  {
    key: "publicHost",
    flag: "public-host",
    env: "CHAT_PUBLIC_HOST",
    kind: "string",
    help:
      "host names this server is reached under besides IP addresses and localhost, comma-separated (* for any); sockets and logins under another get HTTP 421 (DNS rebinding)",
  },
];

/** The defaults, used where neither a flag nor the environment says otherwise. */
export const DEFAULT_SETTINGS: Readonly<Settings> = {
  port: 8000,
  hostname: "0.0.0.0",
  data: "./data/chat.db",
  sqliteSynchronous: "full",
  sqliteWalPages: WAL_RESTART_PAGES,
  searchIndex: "off",
  maxFrameBytes: 64 * 1024,
  maxTextLength: 4000,
  maxBufferedBytes: 1024 * 1024,
  replayLimit: 1000,
  allowOrigin: "",
  maxRoomsPerUser: 100,
  maxConnectionsPerUser: 20,
  maxConnectionsPerIp: 200,
  connectsPerMinute: 300,
  sendRate: 5,
  sendBurst: 20,
  loginsPerMinute: 10,
  idleTimeout: 30,
  presenceTtl: 30,
  pgPollMs: 0,
  maxConnections: 0,
  handshakeTimeout: 10,
  fanoutInterval: 2,
  welcomeOnline: 200,
  welcomeDms: DMS_PAGE_DEFAULT,
  maxQueuedBytes: 1024 * 1024,
  maxLoginBytes: 4096,
  maxConcurrentHashes: 2,
  maxQueuedHashes: 16,
  maxInvitesPerUser: 100,
  maxRoomsCreatedPerUser: 1000,
  publicHost: "",
};

/** The result of {@linkcode parseSettings}. */
export type SettingsResult =
  | { ok: true; settings: Settings }
  | { ok: false; help: true }
  | { ok: false; help?: false; error: string };

/** The width `--help` wraps its text to. */
const HELP_WIDTH = 80;

/** Breaks text into lines of at most `width` characters, at spaces. */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line !== "" && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line === "" ? word : `${line} ${word}`;
  }
  return [...lines, line];
}

/** A default as `--help` shows it: nothing for an empty one. */
function shownDefault(value: string | number): string {
  return value === "" ? "" : ` (default: ${value})`;
}

/**
 * The text of `--help`: each flag with its environment variable in aligned
 * columns (as wide as the longest of each), and its meaning indented below,
 * so long names never run into each other.
 */
export function helpText(): string {
  const flags = SPECS.map((s) => `--${s.flag} <${s.kind === "string" ? "text" : "n"}>`);
  const flagWidth = Math.max("flag".length, ...flags.map((f) => f.length));
  const rows = SPECS.flatMap((s, i) => [
    `  ${flags[i].padEnd(flagWidth)}  ${s.env}`,
    ...wrap(`${s.help}${shownDefault(DEFAULT_SETTINGS[s.key])}`, HELP_WIDTH - 6)
      .map((line) => `      ${line}`),
  ]);
  return [
    "chat: group and private chat in one executable",
    "",
    "Usage: chat [--flag value]...   (or --flag=value)",
    "Flags win over environment variables, which win over the defaults.",
    "",
    `  ${"flag".padEnd(flagWidth)}  environment`,
    ...rows,
    "  --help",
    "      print this and exit",
    "",
    "With --data postgres://… several instances share one database: per-user limits",
    "(--send-rate, --send-burst, --max-connections-per-user) hold across all of them;",
    "per-address limits (--max-connections-per-ip, --connects-per-minute,",
    "--logins-per-minute) are counted by each instance on its own.",
  ].join("\n");
}

/**
 * Reads settings from flags, then the environment, then the defaults.
 * `env` is a lookup so callers without env permission can pass `() => undefined`.
 */
export function parseSettings(
  args: readonly string[],
  env: (name: string) => string | undefined,
): SettingsResult {
  const flags = new Map<string, string>();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--help" || arg === "-h") return { ok: false, help: true };
    if (!arg.startsWith("--")) return { ok: false, error: `unexpected argument: ${arg}` };
    const eq = arg.indexOf("=");
    const name = eq === -1 ? arg.slice(2) : arg.slice(2, eq);
    if (!SPECS.some((s) => s.flag === name)) return { ok: false, error: `unknown flag: --${name}` };
    const value = eq === -1 ? args[++i] : arg.slice(eq + 1);
    if (value === undefined) return { ok: false, error: `--${name} needs a value` };
    flags.set(name, value);
  }
  const settings: Settings = { ...DEFAULT_SETTINGS };
  for (const spec of SPECS) {
    const raw = flags.get(spec.flag) ?? env(spec.env);
    if (raw === undefined || raw === "") continue;
    if (spec.kind === "string") {
      (settings[spec.key] as string) = raw;
      continue;
    }
    const n = Number(raw);
    const shape = spec.kind === "int" ? /^\d+$/ : /^\d+(\.\d+)?$/;
    if (
      !shape.test(raw.trim()) || !Number.isFinite(n) || n > Number.MAX_SAFE_INTEGER ||
      n < (spec.min ?? 0) || n > (spec.max ?? Infinity)
    ) {
      const what = spec.kind === "int" ? "a whole number" : "a number";
      const range = spec.max === undefined
        ? `of at least ${spec.min ?? 0}`
        : `from ${spec.min ?? 0} to ${spec.max}`;
      return {
        ok: false,
        error: `--${spec.flag} (${spec.env}) must be ${what} ${range}, not ${raw}`,
      };
    }
    (settings[spec.key] as number) = n;
  }
  if (settings.port > 65535) return { ok: false, error: "--port must be at most 65535" };
  settings.sqliteSynchronous = settings.sqliteSynchronous.toLowerCase();
  if (!["full", "normal"].includes(settings.sqliteSynchronous)) {
    return { ok: false, error: "--sqlite-synchronous must be full or normal" };
  }
  settings.searchIndex = settings.searchIndex.toLowerCase();
  if (!["on", "off"].includes(settings.searchIndex)) {
    return { ok: false, error: "--search-index must be on or off" };
  }
  return { ok: true, settings };
}
