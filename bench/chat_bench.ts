/**
 * `deno task bench`: throughput, latency and server CPU per delivered message,
 * measured against the real server (main.ts in a child process, KV on disk)
 * with real WebSocket clients on loopback. Each scenario runs several times;
 * the table shows medians. The machine is shared and noisy: compare ratios
 * and medians, not single runs.
 *
 * Usage: deno task bench [--runs 3] [--quick] [--only "part of a scenario name"]
 *
 * @module
 */

import { spawnServer } from "../tests/_server.ts";

const args = new Set(Deno.args);
const runsArg = Deno.args.indexOf("--runs");
const RUNS = runsArg === -1 ? 3 : Number(Deno.args[runsArg + 1]);
const QUICK = args.has("--quick");

/** CPU seconds (user + system) a process has used, from /proc. */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

interface Result {
  messages: number;
  deliveries: number;
  seconds: number;
  cpuSeconds: number;
  latenciesMs: number[];
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))];
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** A bare chat.v1 client: resolves when welcomed, counts what it receives. */
async function open(origin: string, user: string, onMessage: (f: Record<string, unknown>) => void) {
  const ws = new WebSocket(`${origin.replace("http", "ws")}/ws/${user}`, "chat.v1");
  await new Promise<void>((resolve, reject) => {
    ws.onmessage = (e) => {
      const f = JSON.parse(e.data);
      if (f.type === "welcome") {
        ws.onmessage = (e) => onMessage(JSON.parse(e.data));
        resolve();
      }
    };
    ws.onerror = () => reject(new Error(`connect ${user}`));
  });
  return ws;
}

async function closeAll(sockets: WebSocket[]): Promise<void> {
  await Promise.all(sockets.map((ws) =>
    new Promise<void>((resolve) => {
      if (ws.readyState === WebSocket.CLOSED) return resolve();
      ws.onclose = () => resolve();
      ws.close();
    })
  ));
}

/**
 * DMs between pairs: `pairs` senders each send `perSender` DMs to their own
 * recipient, with at most `window` unacknowledged at a time.
 */
async function dmScenario(origin: string, pid: number, run: number): Promise<Result> {
  const pairs = QUICK ? 10 : 50, perSender = QUICK ? 100 : 400, window = 16;
  const latencies: number[] = [];
  const sockets: WebSocket[] = [];
  let delivered = 0;
  const allDelivered = Promise.withResolvers<void>();
  const total = pairs * perSender;
  const senders: Array<{ ws: WebSocket; acked: () => Promise<void> }> = [];
  for (let i = 0; i < pairs; i++) {
    const to = `dmr${run}_${i}`;
    sockets.push(
      await open(origin, to, (f) => {
        if (f.type !== "message") return;
        latencies.push(performance.now() - Number(f.text));
        if (++delivered === total) allDelivered.resolve();
      }),
    );
  }
  for (let i = 0; i < pairs; i++) {
    let waiting: (() => void) | undefined;
    let inFlight = 0;
    const ws = await open(origin, `dms${run}_${i}`, (f) => {
      if (f.type !== "message") return;
      inFlight--;
      waiting?.();
    });
    sockets.push(ws);
    senders.push({
      ws,
      acked: () => {
        inFlight++;
        if (inFlight < window) return Promise.resolve();
        return new Promise((resolve) => waiting = resolve);
      },
    });
  }
  const cpu0 = await cpuSeconds(pid);
  const t0 = performance.now();
  await Promise.all(senders.map(async ({ ws, acked }, i) => {
    for (let n = 0; n < perSender; n++) {
      ws.send(
        JSON.stringify({ type: "send", to: `dmr${run}_${i}`, text: String(performance.now()) }),
      );
      await acked();
    }
  }));
  await allDelivered.promise;
  const seconds = (performance.now() - t0) / 1000;
  const cpu = (await cpuSeconds(pid)) - cpu0;
  await closeAll(sockets);
  // Each DM is delivered to the recipient and (as its acknowledgement) to the sender.
  return { messages: total, deliveries: total, seconds, cpuSeconds: cpu, latenciesMs: latencies };
}

/** Room fan-out: `members` users in a room, `senders` of them sending, everyone receiving. */
async function roomScenario(origin: string, pid: number, run: number): Promise<Result> {
  const members = QUICK ? 20 : 100, senders = 4, perSender = QUICK ? 50 : 150;
  const room = `bench${run}`;
  const latencies: number[] = [];
  const sockets: WebSocket[] = [];
  const total = senders * perSender * members;
  let delivered = 0;
  let reached: { target: number; resolve: () => void } | undefined;
  const allDelivered = Promise.withResolvers<void>();
  for (let i = 0; i < members; i++) {
    const ws = await open(origin, `rm${run}_${i}`, (f) => {
      if (f.type !== "message") return;
      latencies.push(performance.now() - Number(f.text));
      if (++delivered === total) allDelivered.resolve();
      if (reached && delivered >= reached.target) {
        reached.resolve();
        reached = undefined;
      }
    });
    ws.send(JSON.stringify({ type: "join", room }));
    sockets.push(ws);
  }
  // Joins are processed in order per connection; a history answer proves each join is done.
  await Promise.all(sockets.map((ws) =>
    new Promise<void>((resolve) => {
      const previous = ws.onmessage;
      ws.onmessage = (e) => {
        const f = JSON.parse(e.data);
        if (f.type === "history") {
          ws.onmessage = previous;
          resolve();
        }
      };
      ws.send(JSON.stringify({ type: "history", room, limit: 1 }));
    })
  ));
  const cpu0 = await cpuSeconds(pid);
  const t0 = performance.now();
  for (let n = 0; n < perSender; n++) {
    for (let s = 0; s < senders; s++) {
      sockets[s].send(JSON.stringify({ type: "send", room, text: String(performance.now()) }));
    }
    // Pace by deliveries so the server, not the client's send buffer, is measured.
    if (n % 10 === 9) {
      const target = (n - 5) * senders * members;
      if (delivered < target) await new Promise<void>((resolve) => reached = { target, resolve });
    }
  }
  await allDelivered.promise;
  const seconds = (performance.now() - t0) / 1000;
  const cpu = (await cpuSeconds(pid)) - cpu0;
  await closeAll(sockets);
  return {
    messages: senders * perSender,
    deliveries: total,
    seconds,
    cpuSeconds: cpu,
    latenciesMs: latencies,
  };
}

/**
 * DM round trips between two users at the default limits, with `flooders`
 * other users sending as fast as they can meanwhile (they are rate-limited,
 * then closed with 1008): a flooder must not slow anyone else down.
 */
function roundTrips(flooders: number) {
  return async (origin: string, pid: number, run: number): Promise<Result> => {
    const rounds = 18; // within the default burst of 20, so the probe itself is never limited
    const latencies: number[] = [];
    let wake: (() => void) | undefined;
    const alice = await open(
      origin,
      `alice${run}`,
      (f) => f.type === "message" && f.from === `bob${run}` && wake?.(),
    );
    const bob = await open(origin, `bob${run}`, (f) => {
      if (f.type === "message" && f.from === `alice${run}`) {
        bob.send(JSON.stringify({ type: "send", to: `alice${run}`, text: "pong" }));
      }
    });
    // Flooders run in their own processes: the benchmark's clients must not share their event loop.
    const floods = Array.from({ length: flooders }, (_, i) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-net", FLOOD, origin.replace("http", "ws"), `flood${run}_${i}`],
        stdin: "piped",
        stdout: "piped",
        stderr: "inherit",
      }).spawn());
    // Wait until each is connected ("ready"), so the round trips run during the flood.
    const outputs = floods.map((child) =>
      child.stdout.pipeThrough(new TextDecoderStream()).getReader()
    );
    for (const out of outputs) {
      for (let text = ""; !text.includes("ready");) text += (await out.read()).value ?? "";
    }
    const cpu0 = await cpuSeconds(pid);
    const t0 = performance.now();
    for (const child of floods) {
      const go = child.stdin.getWriter();
      await go.write(new TextEncoder().encode("go\n"));
      await go.close();
    }
    for (let i = 0; i < rounds; i++) {
      const sent = performance.now();
      const back = new Promise<void>((resolve) => wake = resolve);
      alice.send(JSON.stringify({ type: "send", to: `bob${run}`, text: "ping" }));
      await back;
      latencies.push(performance.now() - sent);
    }
    const seconds = (performance.now() - t0) / 1000;
    for (const out of outputs) while (!(await out.read()).done);
    await Promise.all(floods.map((child) => child.status));
    const cpu = (await cpuSeconds(pid)) - cpu0;
    await closeAll([alice, bob]);
    return {
      messages: rounds * 2,
      deliveries: rounds * 2,
      seconds,
      cpuSeconds: cpu,
      latenciesMs: latencies,
    };
  };
}

/** The server's own default limits, for scenarios that measure them. */
const DEFAULT_LIMITS = ["--send-rate", "5", "--send-burst", "20"];

const FLOOD = new URL("./flood.ts", import.meta.url).pathname;

const scenarios: Array<{ name: string; fn: typeof dmScenario; args?: string[] }> = [
  { name: "DM, 50 pairs, window 16", fn: dmScenario },
  { name: "room of 100, 4 senders", fn: roomScenario },
  { name: "DM round trip, quiet", fn: roundTrips(0), args: DEFAULT_LIMITS },
  { name: "DM round trip, 4 flooders", fn: roundTrips(4), args: DEFAULT_LIMITS },
];

const dir = await Deno.makeTempDir({ prefix: "chat-bench-" });
const rows: Record<string, string | number>[] = [];
try {
  const only = Deno.args.indexOf("--only");
  const chosen = only === -1
    ? scenarios
    : scenarios.filter((s) => s.name.includes(Deno.args[only + 1]));
  for (const scenario of chosen) {
    const results: Result[] = [];
    for (let run = 0; run < RUNS; run++) {
      await using server = await spawnServer({
        data: `${dir}/bench-${scenarios.indexOf(scenario)}-${run}.db`,
        args: scenario.args,
      });
      results.push(await scenario.fn(server.origin, server.pid, run));
    }
    const lat = results.map((r) => [...r.latenciesMs].sort((a, b) => a - b));
    rows.push({
      scenario: QUICK ? `${scenario.name} (quick)` : scenario.name,
      runs: RUNS,
      "messages/s": Math.round(median(results.map((r) => r.messages / r.seconds))),
      "deliveries/s": Math.round(median(results.map((r) => r.deliveries / r.seconds))),
      "p50 latency ms": Number(median(lat.map((l) => percentile(l, 50))).toFixed(2)),
      "p99 latency ms": Number(median(lat.map((l) => percentile(l, 99))).toFixed(2)),
      "server CPU µs/message": Number(
        median(results.map((r) => (r.cpuSeconds * 1e6) / r.messages)).toFixed(1),
      ),
      "server CPU µs/delivery": Number(
        median(results.map((r) => (r.cpuSeconds * 1e6) / r.deliveries)).toFixed(1),
      ),
    });
  }
} finally {
  await Deno.remove(dir, { recursive: true });
}

const headers = Object.keys(rows[0]);
const widths = headers.map((h) => Math.max(h.length, ...rows.map((r) => String(r[h]).length)));
const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(" | ")} |`;
console.log(line(headers));
console.log(`|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`);
for (const row of rows) console.log(line(headers.map((h) => String(row[h]))));
console.log(
  `\nmedians of ${RUNS} runs; server = main.ts in a child process with KV on disk; clients on loopback`,
);
