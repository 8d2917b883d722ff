/**
 * The chat server's entry point: settings → store → server, and a clean
 * shutdown on SIGINT/SIGTERM. Everything else lives in `lib/`.
 *
 * @module
 */

import { Accounts } from "./lib/accounts.ts";
import { isWildcard, localInterfaces, reachableUrls } from "./lib/addresses.ts";
import { type Backend, localBackend } from "./lib/backend.ts";
import { openPgBackend } from "./lib/pg_backend.ts";
import { startChatServer } from "./lib/server.ts";
import { DEFAULT_SETTINGS, helpText, parseSettings } from "./lib/settings.ts";
import { openDatabase, parseData } from "./lib/sql/open.ts";
import type { SqliteSynchronous } from "./lib/sql/sqlite.ts";
import { SqlStore } from "./lib/sql/store.ts";
import { LogOnce } from "./lib/log.ts";

/** Environment lookup that treats a denied permission as "not set". */
function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

if (Deno.args[0] === "migrate") {
  const { migrateMain } = await import("./lib/migrate.ts");
  Deno.exit(await migrateMain(Deno.args.slice(1)));
}

const parsed = parseSettings(Deno.args, env);
if (!parsed.ok) {
  if (parsed.help) {
    console.log(helpText());
    Deno.exit(0);
  }
  console.error(`error: ${parsed.error}\n\n${helpText()}`);
  Deno.exit(2);
}
const settings = parsed.settings;
// On Deno Deploy the platform routes only its own and the project's domains here.
if (env("DENO_DEPLOYMENT_ID") !== undefined && settings.publicHost === "") {
  settings.publicHost = "*";
}

/** Prints why the server cannot start, and exits. */
function fatal(what: string, error: unknown): never {
  const reason = error instanceof Deno.errors.AddrInUse
    ? `port ${settings.port} is taken; pick another with --port`
    : error instanceof Error
    ? error.message
    : String(error);
  console.error(`error: ${what}: ${reason}`);
  Deno.exit(1);
}

// On Deno Deploy the platform accepts connections (no guard in front) and brings the database.
const onDeploy = env("DENO_DEPLOYMENT_ID") !== undefined;
const target = (() => {
  try {
    return parseData(settings.data, {
      onDeploy,
      env,
      explicit: settings.data !== DEFAULT_SETTINGS.data,
    });
  } catch (e) {
    fatal("cannot use --data", e);
  }
})();
const db = await openDatabase(target, {
  sqliteSynchronous: settings.sqliteSynchronous as SqliteSynchronous,
  sqliteWalPages: settings.sqliteWalPages,
}).catch((e) => fatal(`cannot open ${settings.data}`, e));
const store = await SqlStore.open(db, { searchIndex: settings.searchIndex === "on" })
  .catch((e) => fatal(`cannot use ${db.description}`, e));
const accounts = new Accounts(store.db, {
  maxConcurrentHashes: settings.maxConcurrentHashes,
  maxQueuedHashes: settings.maxQueuedHashes,
});
// One process keeps presence, per-user limits and fan-out in memory; on PostgreSQL the
// instances share them through the database.
const backend: Backend = target.kind === "postgres"
  ? await openPgBackend({
    url: target.url,
    where: db.description,
    store,
    accounts,
    limits: settings,
    presenceTtlMs: settings.presenceTtl * 1000,
    pollMs: settings.pgPollMs,
  }).catch((e) => fatal(`cannot share ${db.description} between instances`, e))
  : localBackend({
    where: db.description,
    store,
    accounts,
    limits: settings,
  });
const server = await startChatServer({
  settings,
  store: backend.store,
  accounts: backend.accounts,
  presence: backend.presence,
  userLimits: backend.userLimits,
  bus: backend.bus,
  guard: !onDeploy,
  onListen: (addr) => {
    const interfaces = isWildcard(addr.hostname) ? localInterfaces() : [];
    const [here, ...network] = reachableUrls(addr, interfaces ?? []);
    // The pid, to stop it by (Deno Deploy has none to give).
    const pid = typeof Deno.pid === "number" ? `, pid ${Deno.pid}` : "";
    console.log(`chat listening on ${here} (data: ${backend.where}${pid})`);
    for (const url of network) console.log(`  on your network: ${url}`);
    if (interfaces === undefined) {
      console.log("  (network addresses not listed: run with --allow-sys=networkInterfaces)");
    }
  },
}).catch((e) => fatal("cannot listen", e));

// A promise rejected with no handler is a bug, but never a reason to stop serving everyone.
const rejections = new LogOnce();
globalThis.addEventListener("unhandledrejection", (e) => {
  e.preventDefault();
  rejections.error("unhandled rejection (a bug; the server keeps serving)", e.reason);
});

let stopping = false;
async function stop(signal: Deno.Signal): Promise<void> {
  if (stopping) return;
  stopping = true;
  console.log(`${signal}: closing connections and finishing writes`);
  // Whatever happens below, exit within 10 s.
  const deadline = setTimeout(() => Deno.exit(1), 10_000);
  await server.shutdown();
  await backend.close();
  clearTimeout(deadline);
  Deno.exit(0);
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  try {
    Deno.addSignalListener(signal, () => void stop(signal));
  } catch {
    // Signals are not available everywhere (Windows lacks SIGTERM; Deploy has none).
  }
}
