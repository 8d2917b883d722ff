/**
 * The chat server's entry point: settings → store → server, and a clean
 * shutdown on SIGINT/SIGTERM. Everything else lives in `lib/`.
 *
 * @module
 */

import { dirname } from "node:path";
import { Accounts } from "./lib/accounts.ts";
import { KvStore } from "./lib/kv_store.ts";
import { startChatServer } from "./lib/server.ts";
import { helpText, parseSettings } from "./lib/settings.ts";
import { LogOnce } from "./lib/log.ts";

/** Environment lookup that treats a denied permission as "not set". */
function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
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

// On Deno Deploy there is no file system to write to: use the platform's KV.
const onDeploy = env("DENO_DEPLOYMENT_ID") !== undefined;
const dataPath = onDeploy ? undefined : settings.data;
if (dataPath !== undefined && dataPath !== ":memory:") {
  await Deno.mkdir(dirname(dataPath), { recursive: true }).catch((e) =>
    fatal(`cannot create the folder of ${dataPath}`, e)
  );
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

const store = await KvStore.open(dataPath).catch((e) => fatal(`cannot open ${dataPath}`, e));
const server = await startChatServer({
  settings,
  store,
  accounts: new Accounts(store.kv, {
    maxConcurrentHashes: settings.maxConcurrentHashes,
    maxQueuedHashes: settings.maxQueuedHashes,
  }),
  guard: !onDeploy,
  onListen: ({ hostname, port }) => {
    const shown = hostname === "0.0.0.0" ? "localhost" : hostname;
    console.log(
      `chat listening on http://${shown}:${port}/ (data: ${dataPath ?? "Deno Deploy KV"})`,
    );
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
  await store.close();
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
