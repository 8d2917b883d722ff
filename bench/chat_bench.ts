/**
 * `deno task bench`: the chat server beside a bare `Deno.upgradeWebSocket`
 * relay (bench/relay.ts), in one run, on loopback. Each phase starts a fresh
 * target (the relay, then `main.ts` with the chosen store) pinned to one core
 * with `taskset`, and the load generator (bench/load.ts) pinned to the
 * other; CPU and memory come from `/proc/<pid>`. One table shows both, with
 * the ratio beside each figure; a figure marked `gen` was limited by the
 * generator's own core rather than the target. Every run is also appended
 * as JSON lines (one per target and phase) for comparison across commits.
 *
 * Usage:
 *   deno task bench [--quick | --smoke] [--runs N] [--only dm,latency,room,crowd]
 *                   [--store kv|sqlite|postgres] [--data DIR|URL] [--rate 5000]
 *                   [--online 5000] [--cids ordered|random|off] [--json FILE] [--profile DIR]
 *                   [--main PATH] [--instances N (with postgres)] [-- more flags for main.ts]
 *
 * Exits 1 if any phase saw an error (an error frame, a refused or dropped
 * connection, a message lost, duplicated or out of order, a line on the
 * server's stderr): CI runs `--quick` once for exactly that, on SQLite and on
 * three instances on PostgreSQL; `--smoke` is a smaller run of seconds.
 *
 * @module
 */

import { DatabaseSync } from "node:sqlite";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import type { PhaseConfig, PhaseResult } from "./load.ts";
import { CidMode } from "./ws.ts";

const here = (path: string) => fileURLToPath(new URL(path, import.meta.url));
const MAIN_OPTION = Deno.args.indexOf("--main");
/** The server to measure: this checkout's, or another's with `--main PATH`. */
const MAIN = MAIN_OPTION === -1 ? here("../main.ts") : Deno.args[MAIN_OPTION + 1];
const RELAY = here("./relay.ts");
const LOAD = here("./load.ts");

/**
 * The `--v8-flags` that `deno task start` gives the server, from the
 * `deno.json` beside `MAIN` (none if it has none): measured as it is run.
 */
function startV8Flags(): string[] {
  try {
    const config = JSON.parse(Deno.readTextFileSync(`${dirname(MAIN)}/deno.json`));
    return String(config.tasks?.start ?? "").split(/\s+/).filter((w) =>
      w.startsWith("--v8-flags=")
    );
  } catch {
    return [];
  }
}
const V8_FLAGS = startV8Flags();

// ---- arguments -------------------------------------------------------------

const rest = Deno.args.indexOf("--");
const args = rest === -1 ? Deno.args : Deno.args.slice(0, rest);
const serverArgs = rest === -1 ? [] : Deno.args.slice(rest + 1);
const flag = (name: string) => args.includes(`--${name}`);
function option(name: string): string | undefined {
  const at = args.indexOf(`--${name}`);
  return at === -1 ? undefined : args[at + 1];
}
const KNOWN = [
  "main",
  "instances",
  "profile",
  "quick",
  "smoke",
  "runs",
  "only",
  "store",
  "data",
  "rate",
  "online",
  "cids",
  "json",
  "help",
];
for (const a of args) {
  if (a.startsWith("--") && !KNOWN.includes(a.slice(2))) usage(`unknown option ${a}`);
}
function usage(problem?: string): never {
  const text =
    (Deno.readTextFileSync(fileURLToPath(import.meta.url)).match(/Usage:[\s\S]*?\n \*\n/)?.[0] ??
      "").replace(/^ \* ?/gm, "");
  if (problem) console.error(`error: ${problem}\n`);
  console.log(text.trim());
  Deno.exit(problem ? 2 : 0);
}
if (flag("help")) usage();

const SMOKE = flag("smoke");
const QUICK = flag("quick") || SMOKE;
const RUNS = Number(option("runs") ?? 1);
const RATE = Number(option("rate") ?? (SMOKE ? 1000 : 5000));
/**
 * The client ids sends carry: in time order as the page's UUIDv7s (default), scattered as
 * random UUIDs (`random`), or none (`off`, as every run before 859c40b).
 */
const CIDS = (option("cids") ?? "ordered") as keyof typeof CidMode;
if (!Object.hasOwn(CidMode, CIDS)) usage(`--cids takes ${Object.keys(CidMode).join(", ")}`);
const ONLINE = Number(option("online") ?? (SMOKE ? 100 : QUICK ? 500 : 5000));
const STORE_OPTION = option("store");
const PHASES = (option("only") ?? "dm,latency,room,crowd").split(",");
/** Where the server's V8 CPU profiles go (one per phase), if anywhere. */
const PROFILE = option("profile");
const JSON_FILE = option("json") ?? here("./results/bench.jsonl");
if (!Number.isInteger(RUNS) || RUNS < 1) usage("--runs takes a whole number ≥ 1");
if (!(RATE > 0) || !(ONLINE > 0)) usage("--rate and --online take positive numbers");
for (const p of PHASES) if (!["dm", "latency", "room", "crowd"].includes(p)) usage(`no phase ${p}`);
if (STORE_OPTION !== undefined && !["kv", "sqlite", "postgres"].includes(STORE_OPTION)) {
  usage(`--store is kv, sqlite or postgres`);
}

/** Sizes per phase: every phase is bounded in count and in seconds. */
const SIZES: Record<PhaseConfig["phase"], Record<string, number>> = SMOKE
  ? {
    dm: { pairs: 5, window: 8, seconds: 1, max: 100_000, warmup: 200 },
    latency: { pairs: 5, rate: RATE, seconds: 1, warmup: 200 },
    room: { members: 50, senders: 2, window: 4, messages: 100, seconds: 10 },
    crowd: { online: ONLINE, concurrency: 16, arrivalSeconds: 20, churnSeconds: 1, churnRate: 20 },
  }
  : QUICK
  ? {
    dm: { pairs: 20, window: 16, seconds: 3, max: 1_000_000, warmup: 500 },
    latency: { pairs: 20, rate: RATE, seconds: 3, warmup: 500 },
    room: { members: 200, senders: 4, window: 32, messages: 500, seconds: 6 },
    crowd: { online: ONLINE, concurrency: 32, arrivalSeconds: 15, churnSeconds: 3, churnRate: 20 },
  }
  : {
    dm: { pairs: 50, window: 16, seconds: 8, max: 3_000_000, warmup: 1000 },
    latency: { pairs: 50, rate: RATE, seconds: 10, warmup: 1000 },
    room: { members: 200, senders: 4, window: 32, messages: 3000, seconds: 20 },
    crowd: { online: ONLINE, concurrency: 32, arrivalSeconds: 60, churnSeconds: 10, churnRate: 20 },
  };

// ---- the machine -----------------------------------------------------------

async function run(cmd: string, cmdArgs: string[]): Promise<string | undefined> {
  try {
    const out = await new Deno.Command(cmd, { args: cmdArgs, stdout: "piped", stderr: "null" })
      .output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : undefined;
  } catch {
    return undefined;
  }
}

const cores = navigator.hardwareConcurrency;
const taskset = cores >= 2 && (await run("taskset", ["-c", "0", "true"])) !== undefined;
const cpuModel = Deno.readTextFileSync("/proc/cpuinfo").match(/model name\s*:\s*(.*)/)?.[1] ??
  "unknown CPU";
const checkout = dirname(MAIN);
const commit = (await run("git", ["-C", checkout, "rev-parse", "--short", "HEAD"])) ?? "unknown";
const dirty = (await run("git", ["-C", checkout, "status", "--porcelain"])) ? "+dirty" : "";
const date = new Date().toISOString().slice(0, 16).replace("T", " ") + " UTC";
const machine = `${cores} × ${cpuModel}, ${
  Math.round(Deno.systemMemoryInfo().total / 2 ** 30)
} GiB, Deno ${Deno.version.deno}`;

/** `taskset -c N` before a command when pinning is possible. */
const pinned = (core: number, cmd: string[]) =>
  taskset ? ["taskset", "-c", String(core), ...cmd] : cmd;

// ---- the store -------------------------------------------------------------

/** Whether main.ts offers the chosen store: its --help must name it. */
const help = (await run(Deno.execPath(), ["run", "-A", MAIN, "--help"])) ?? "";
/** By default, the store main.ts uses by default: SQLite where it has one, else KV. */
const STORE = STORE_OPTION ?? (/sqlite/i.test(help) ? "sqlite" : "kv");
const STORE_WORD = { kv: /\bKV\b/i, sqlite: /sqlite/i, postgres: /postgres/i }[STORE]!;
if (!STORE_WORD.test(help)) {
  console.error(
    `error: --store ${STORE}: this main.ts has no ${STORE} store (its --help does not mention it)`,
  );
  Deno.exit(2);
}
let dataOption = option("data");
if (STORE === "postgres" && dataOption !== undefined && !/^postgres(ql)?:\/\//.test(dataOption)) {
  console.error("error: --store postgres takes --data postgres://… (or none: a throwaway cluster)");
  Deno.exit(2);
}
// Without a URL, a throwaway PostgreSQL cluster for this run (the tests' own helper).
const cluster = STORE === "postgres" && dataOption === undefined
  ? await (await import("../tests/_pg.ts")).startPostgres().catch((e) => {
    console.error(`error: --store postgres: ${e.message}`);
    Deno.exit(2);
  })
  : undefined;
if (cluster) dataOption = cluster.url;
const INSTANCES = Number(option("instances") ?? 1);
if (!Number.isInteger(INSTANCES) || INSTANCES < 1) usage("--instances takes a whole number ≥ 1");
if (INSTANCES > 1 && STORE !== "postgres") usage("--instances needs --store postgres");
/**
 * PostgreSQL's postmaster for the URL's port, found by its command line: its
 * CPU and its backends' count as the server's (storage included).
 */
const dbPid = STORE === "postgres"
  ? findPostmaster(new URL(dataOption!).port || "5432")
  : undefined;
function findPostmaster(port: string): number | undefined {
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const argv = Deno.readTextFileSync(`/proc/${entry.name}/cmdline`).split("\0");
      const at = argv.indexOf("-p");
      if (/\/postgres$/.test(argv[0]) && at !== -1 && argv[at + 1] === port) {
        return Number(entry.name);
      }
    } catch {
      // Gone, or not ours to read.
    }
  }
  return undefined;
}
/** Part of every user name, so runs against one PostgreSQL database never meet. */
const RUN_ID = Date.now().toString(36).slice(-4);
const tmp = await Deno.makeTempDir({ prefix: "chat-bench-" });
const dataDir = STORE === "postgres" ? "" : dataOption ?? tmp;
/** Where each fresh server keeps its data. */
function dataFor(name: string): string {
  if (STORE === "postgres") return dataOption!;
  return `${dataDir}/${name}.${STORE === "kv" ? "kv" : "db"}`;
}

/** A reason to stop the whole benchmark (after cleaning up). */
class Fatal extends Error {}

/**
 * Why the server did not use the chosen store, if it did not: a Deno KV
 * file is SQLite with a `kv` table; the SQLite store's file has no such table.
 * (A PostgreSQL URL is taken on trust.)
 */
function storeMismatch(path: string): string | undefined {
  // A PostgreSQL URL is taken on trust, and so is a `--data` given to main.ts after `--`.
  if (STORE === "postgres" || serverArgs.includes("--data")) return undefined;
  let tables: string[];
  try {
    const db = new DatabaseSync(path, { readOnly: true });
    try {
      tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all()
        .map((row) => String(row.name));
    } finally {
      db.close();
    }
  } catch (e) {
    return `the server wrote no SQLite file at ${path} (${(e as Error).message})`;
  }
  const kv = tables.includes("kv");
  if (STORE === "kv" && !kv) return `${path} is not a Deno KV file: this main.ts has no KV store`;
  if (STORE === "sqlite" && kv) {
    return `${path} is a Deno KV file: this main.ts has no SQLite store (only KV exists on main)`;
  }
  return undefined;
}

// ---- targets ---------------------------------------------------------------

interface Target {
  pid: number;
  port: number;
  stderr: () => string;
  stop: () => Promise<void>;
}

/** Limits lifted so one address can be thousands of users sending as fast as they can. */
const OPEN_LIMITS = [
  ...["--send-rate", "1000000", "--send-burst", "1000000"],
  ...["--connects-per-minute", "10000000", "--max-connections-per-ip", "100000"],
];

async function start(kind: "relay" | "server", name: string, instance = 0): Promise<Target> {
  const cmd = kind === "relay" ? [Deno.execPath(), "run", "--allow-net", RELAY, "0"] : [
    Deno.execPath(),
    "run",
    "--allow-net",
    "--allow-env",
    "--allow-read",
    "--allow-write",
    "--unstable-kv",
    ...V8_FLAGS,
    ...(PROFILE
      ? [
        "--cpu-prof",
        `--cpu-prof-dir=${PROFILE}`,
        `--cpu-prof-name=${name}${instance ? `-${instance}` : ""}.cpuprofile`,
      ]
      : []),
    MAIN,
    ...["--hostname", "127.0.0.1", "--port", "0", "--data", dataFor(name)],
    ...OPEN_LIMITS,
    ...serverArgs,
  ];
  const [program, ...rest] = pinned(1, cmd);
  const child = new Deno.Command(program, {
    args: rest,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let out = "", err = "";
  const decoder = new TextDecoder();
  const listening = Promise.withResolvers<number>();
  const pump = async (stream: ReadableStream<Uint8Array>, into: "out" | "err") => {
    for await (const chunk of stream) {
      const text = decoder.decode(chunk, { stream: true });
      if (into === "out") out += text;
      else err += text;
      const m = out.match(/listening on http:\/\/[^:]+:(\d+)\//);
      if (m) listening.resolve(Number(m[1]));
    }
  };
  const pumps = Promise.all([pump(child.stdout, "out"), pump(child.stderr, "err")]);
  child.status.then((s) =>
    listening.reject(new Error(`${kind} exited (${s.code}) before listening:\n${out}${err}`))
  );
  const port = await listening.promise;
  return {
    pid: child.pid,
    port,
    stderr: () => err,
    stop: async () => {
      try {
        // A profiled server must exit by itself to write its profile.
        child.kill(PROFILE && kind === "server" ? "SIGTERM" : "SIGKILL");
      } catch {
        // Exited already.
      }
      await child.status;
      await pumps;
    },
  };
}

async function phase(
  kind: "relay" | "server",
  name: PhaseConfig["phase"],
  runIndex: number,
): Promise<PhaseResult> {
  const targets: Target[] = [];
  try {
    // Several instances start one after the other: the first creates the schema.
    for (let i = 0; i < (kind === "server" ? INSTANCES : 1); i++) {
      targets.push(await start(kind, `${name}-${runIndex}`, i));
    }
    const config: PhaseConfig = {
      phase: name,
      ports: targets.map((t) => t.port),
      pids: targets.map((t) => t.pid),
      dbPid: kind === "server" ? dbPid : undefined,
      acks: kind === "server",
      tokens: kind === "server",
      prefix: `b${RUN_ID}${runIndex}${name[0]}`,
      params: { ...SIZES[name], cids: CidMode[CIDS] },
    };
    const [program, ...rest] = pinned(0, [
      Deno.execPath(),
      "run",
      "-A",
      LOAD,
      JSON.stringify(config),
    ]);
    const out = await new Deno.Command(program, { args: rest, stdout: "piped", stderr: "inherit" })
      .output();
    const text = new TextDecoder().decode(out.stdout).trim().split("\n").at(-1) ?? "";
    let result: PhaseResult;
    try {
      result = JSON.parse(text);
    } catch {
      result = {
        metrics: {},
        generator: {},
        errors: 1,
        samples: [`the generator printed no result (exit ${out.code}): ${text.slice(0, 200)}`],
        notes: [],
      };
    }
    const wrong = kind === "server" ? storeMismatch(dataFor(`${name}-${runIndex}`)) : undefined;
    if (wrong) throw new Fatal(`--store ${STORE}: ${wrong}`);
    for (const target of targets) {
      const logged = target.stderr().trim();
      if (logged) {
        result.errors++;
        result.samples.push(`${kind} stderr: ${logged.split("\n").slice(0, 3).join(" / ")}`);
      }
    }
    return result;
  } finally {
    await Promise.all(targets.map((t) => t.stop()));
  }
}

// ---- the runs --------------------------------------------------------------

type Kind = "relay" | "server";
const results: Record<Kind, PhaseResult[]> = { relay: [], server: [] };
let errors = 0;
const lines: string[] = [];
const started = performance.now();
const storeText = `store ${STORE}` + (INSTANCES > 1 ? `, ${INSTANCES} instances` : "") +
  (STORE === "postgres"
    ? (dbPid ? ", PostgreSQL's CPU included" : ", PostgreSQL's CPU NOT included")
    : "") +
  (CIDS === "ordered" ? "" : CIDS === "off" ? ", no client ids" : ", random client ids") +
  (V8_FLAGS.length ? `, ${V8_FLAGS.join(" ")}` : "");
let fatal: string | undefined;
const mode = SMOKE ? "smoke" : QUICK ? "quick" : "full";
console.error(
  `bench (${mode}, ${RUNS} run${RUNS > 1 ? "s" : ""}, ${storeText}): ${machine}; ` +
    (taskset ? "targets on core 1, generator on core 0" : "not pinned (no taskset or one core)"),
);
try {
  for (let r = 0; r < RUNS; r++) {
    for (const name of PHASES as PhaseConfig["phase"][]) {
      for (const kind of ["relay", "server"] as const) {
        const t0 = performance.now();
        const result = await phase(kind, name, r);
        console.error(
          `  run ${r + 1} ${name} ${kind}: ${((performance.now() - t0) / 1000).toFixed(1)} s` +
            (result.errors ? `, ${result.errors} errors: ${result.samples.join("; ")}` : "") +
            (result.notes.length ? ` (${result.notes.join("; ")})` : ""),
        );
        result.notes = result.notes.map((note) => `${name}, ${kind}: ${note}`);
        errors += result.errors;
        results[kind].push(result);
        lines.push(JSON.stringify({
          date,
          commit: commit + dirty,
          machine,
          pinned: taskset,
          mode,
          cids: CIDS,
          v8Flags: kind === "server" ? V8_FLAGS : [],
          store: kind === "server" ? STORE : "none",
          instances: kind === "server" ? INSTANCES : 1,
          main: MAIN,
          run: r + 1,
          target: kind,
          phase: name,
          ...result,
        }));
      }
    }
  }
} catch (e) {
  if (!(e instanceof Fatal)) throw e;
  fatal = e.message;
} finally {
  await Deno.remove(tmp, { recursive: true });
  await cluster?.[Symbol.asyncDispose]();
}
if (fatal) {
  console.error(`error: ${fatal}`);
  Deno.exit(2);
}

await Deno.mkdir(fileURLToPath(new URL(".", `file://${JSON_FILE}`)), { recursive: true });
await Deno.writeTextFile(JSON_FILE, lines.join("\n") + "\n", { append: true });

// ---- the table -------------------------------------------------------------

const median = (values: number[]) => {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

const size = SIZES;
const ROWS: Array<{ key: string; label: string; lower: boolean; gen: string; scale?: number }> = [
  {
    key: "dm_us",
    label: `DM saturated: server CPU µs per DM (${size.dm.pairs} pairs)`,
    lower: true,
    gen: "dm_us",
  },
  { key: "dm_db_us", label: "  of which PostgreSQL's", lower: true, gen: "dm_us" },
  { key: "dm_per_s", label: "DM saturated: DMs/s", lower: false, gen: "dm_us" },
  {
    key: "dm_target_cpu",
    label: "  target's CPU, % of its core (under 100: not saturated)",
    lower: false,
    gen: "",
    scale: 100,
  },
  {
    key: "latency_p50_ms",
    label: `DM at ${RATE.toLocaleString("en")}/s open loop: p50 ms`,
    lower: true,
    gen: "latency_us",
  },
  { key: "latency_p99_ms", label: "  p99 ms", lower: true, gen: "latency_us" },
  { key: "latency_p999_ms", label: "  p99.9 ms", lower: true, gen: "latency_us" },
  { key: "latency_us", label: "  server CPU µs per DM", lower: true, gen: "latency_us" },
  {
    key: "latency_send_lag_ms",
    label: "  generator behind its schedule, ms (worst)",
    lower: true,
    gen: "",
  },
  {
    key: "room_us",
    label: `room of ${size.room.members}: CPU µs per delivery`,
    lower: true,
    gen: "room_us",
  },
  { key: "room_db_us", label: "  of which PostgreSQL's", lower: true, gen: "room_us" },
  {
    key: "room_target_cpu",
    label: "  target's CPU, % of its core",
    lower: false,
    gen: "",
    scale: 100,
  },
  {
    key: "new_per_s",
    label: `new users/s (0 → ${ONLINE} online, ${size.crowd.arrivalSeconds} s at most)`,
    lower: false,
    gen: "new_per_s",
  },
  { key: "online", label: "  users online at the end of it", lower: false, gen: "" },
  { key: "new_us", label: "  server CPU µs per new user", lower: true, gen: "new_per_s" },
  {
    key: "returning_per_s",
    label: "returning users/s (with token)",
    lower: false,
    gen: "returning_per_s",
  },
  {
    key: "returning_us",
    label: "  server CPU µs per returning user",
    lower: true,
    gen: "returning_per_s",
  },
  { key: "idle_kib", label: "KiB per idle connection (RSS)", lower: true, gen: "" },
  {
    key: "churn_cores",
    label: `presence churn, ${size.crowd.churnRate}/s among those online: % of a core`,
    lower: true,
    gen: "churn_cores",
    scale: 100,
  },
  {
    key: "presence_per_s",
    label: "  presence frames received per second, all clients",
    lower: true,
    gen: "",
  },
];

function figure(kind: Kind, key: string, gen: string, scale = 1) {
  const values = results[kind].map((r) => (r.metrics[key] ?? NaN) * scale).filter(Number.isFinite);
  const limited = gen !== "" &&
    median(results[kind].map((r) => r.generator[gen] ?? NaN)) > 0.9;
  return { value: median(values), values, limited };
}

function format(n: number): string {
  if (!Number.isFinite(n)) return "—";
  const abs = Math.abs(n);
  const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : abs >= 1 ? 2 : 3;
  return n.toLocaleString("en", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function cell(f: { value: number; values: number[]; limited: boolean }): string {
  let text = format(f.value);
  if (f.values.length > 1) {
    text += ` (${format(Math.min(...f.values))}–${format(Math.max(...f.values))})`;
  }
  return f.limited ? `${text} gen` : text;
}

const table = [["figure", "relay", "server", "server ÷ relay", "better"]];
for (const row of ROWS) {
  const relay = figure("relay", row.key, row.gen, row.scale);
  const server = figure("server", row.key, row.gen, row.scale);
  if (!Number.isFinite(relay.value) && !Number.isFinite(server.value)) continue;
  const ratio = server.value / relay.value;
  table.push([
    row.label,
    cell(relay),
    cell(server),
    Number.isFinite(ratio) ? `${format(ratio)}×` : "—",
    row.lower ? "lower" : "higher",
  ]);
}
const widths = table[0].map((_, i) => Math.max(...table.map((r) => r[i].length)));
const line = (cells: string[]) =>
  `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(" | ")} |`;
console.log(`\n${machine}; ${date}; commit ${commit}${dirty}; ${storeText}; ${mode}`);
console.log(line(table[0]));
console.log(
  `|${widths.map((w, i) => (i === 0 ? "-".repeat(w + 2) : `${"-".repeat(w + 1)}:`)).join("|")}|`,
);
for (const row of table.slice(1)) console.log(line(row));
const anyLimited = ROWS.some((row) =>
  figure("relay", row.key, row.gen).limited || figure("server", row.key, row.gen).limited
);
console.log(
  `\n${RUNS > 1 ? `medians of ${RUNS} runs (range in brackets); ` : ""}` +
    (taskset
      ? "each target pinned to core 1, the generator to core 0"
      : "NOT pinned: targets and generator share the cores") +
    `; ${((performance.now() - started) / 1000).toFixed(0)} s; JSON lines in ${JSON_FILE}`,
);
if (anyLimited) {
  console.log(
    "gen: the load generator used over 90% of its core there, so that figure is the generator's " +
      "limit, not the target's",
  );
}
const notes = [...new Set([...results.relay, ...results.server].flatMap((r) => r.notes))];
for (const note of notes) console.log(`note: ${note}`);
if (errors > 0) {
  console.error(`\n${errors} errors (see above): failing`);
  Deno.exit(1);
}
console.log(`0 errors`);
