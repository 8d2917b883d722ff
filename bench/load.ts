/**
 * The load generator: one phase of the benchmark against one target (the
 * bare relay or the chat server), in its own process so it can be pinned to
 * its own core. It reads the target's CPU and memory from `/proc/<pid>` at
 * the phase's boundaries and prints one JSON line: the figures, the errors
 * it saw, and how busy it was itself (near 100% of its core means the
 * generator, not the target, was the limit).
 *
 * Every phase is bounded in count and in time. Frames are pre-encoded
 * ({@linkcode Template}); received frames are classified by their first
 * bytes and their `#` sequence number, not parsed as JSON.
 *
 * Usage (from chat_bench.ts): deno run -A bench/load.ts '<PhaseConfig as JSON>'
 *
 * @module
 */

import { CidMode, clientFrame, isType, RawSocket, seqOf, Template, typeBytes } from "./ws.ts";

/** What chat_bench.ts asks for. */
export interface PhaseConfig {
  phase: "dm" | "latency" | "room" | "crowd";
  /** The target's ports and process ids: several for instances of one server on one database. */
  ports: number[];
  pids: number[];
  /** The database's main process (PostgreSQL's postmaster): its CPU, its children's included, counts as the target's. */
  dbPid?: number;
  /** Whether the target acknowledges a send with the sender's own copy (the server does). */
  acks: boolean;
  /** Whether it issues tokens in `welcome` (returning users present them). */
  tokens: boolean;
  /** A prefix for user names, unique per run. */
  prefix: string;
  /** The phase's sizes: see each phase. */
  params: Record<string, number>;
}

/** What a phase reports. */
export interface PhaseResult {
  metrics: Record<string, number>;
  /** Generator CPU as a fraction of one core, per measured window. */
  generator: Record<string, number>;
  /** CPU seconds of the target's threads over the whole phase, by thread name (first instance). */
  threads?: Record<string, number>;
  errors: number;
  samples: string[];
  notes: string[];
}

const config: PhaseConfig = JSON.parse(Deno.args[0]);
const { ports, pids, params, prefix } = config;

/**
 * A send's client id, as the page gives every message (a UUIDv7 there, in
 * time order; here the sequence number, before the sender so that all
 * senders' ids grow together as times do), unless the run is `--cids off`;
 * `--cids random` scatters them, as other clients' random UUIDs would.
 */
const cid = (sender: number): { cid?: string } =>
  params.cids === CidMode.off ? {} : { cid: `@00000000-s${sender}` };
/** Options of a send's {@linkcode Template}. */
const cids = { scatter: params.cids === CidMode.random };

const result: PhaseResult = { metrics: {}, generator: {}, errors: 0, samples: [], notes: [] };
const decoder = new TextDecoder();

function error(what: string): void {
  result.errors++;
  if (result.samples.length < 5) result.samples.push(what);
}

const T = {
  welcome: typeBytes("welcome"),
  message: typeBytes("message"),
  error: typeBytes("error"),
  joined: typeBytes("joined"),
  presence: typeBytes("presence"),
};

/** CPU seconds (user + system) of a process, from /proc. */
function cpuSeconds(of: number | "self"): number {
  const stat = Deno.readTextFileSync(`/proc/${of}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Resident memory of the target's processes in KiB. */
function rssKiB(): number {
  let sum = 0;
  for (const pid of pids) {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    sum += Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  }
  return sum;
}

/** CPU seconds of a process tree's root (with the children it reaped) and its live children. */
function treeSeconds(root: number): number {
  const stat = Deno.readTextFileSync(`/proc/${root}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  let ticks = Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const child = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
      const c = child.slice(child.lastIndexOf(")") + 2).split(" ");
      if (Number(c[1]) === root) ticks += Number(c[11]) + Number(c[12]);
    } catch {
      // Gone meanwhile.
    }
  }
  return ticks / 100;
}

/** CPU seconds of the whole target: its processes, and the database's if it has one. */
function targetSeconds(db = config.dbPid ? treeSeconds(config.dbPid) : 0): number {
  let sum = db;
  for (const pid of pids) sum += cpuSeconds(pid);
  return sum;
}

/** A point in time with both processes' CPU, to measure a window between two. */
interface Mark {
  at: number;
  target: number;
  /** The database's part of `target`. */
  db: number;
  self: number;
}

function mark(): Mark {
  const db = config.dbPid ? treeSeconds(config.dbPid) : 0;
  return { at: performance.now(), target: targetSeconds(db), db, self: cpuSeconds("self") };
}

/** Seconds between two marks, and each process's CPU over it. */
function span(a: Mark, b: Mark) {
  const seconds = (b.at - a.at) / 1000;
  return {
    seconds,
    target: b.target - a.target,
    db: b.db - a.db,
    self: (b.self - a.self) / seconds,
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until the target is idle (under a tick of CPU per 100 ms, twice), at most 3 s. */
async function quiesce(): Promise<void> {
  let calm = 0;
  let last = targetSeconds();
  for (let i = 0; i < 30 && calm < 2; i++) {
    await sleep(100);
    const now = targetSeconds();
    calm = now - last <= 0.011 ? calm + 1 : 0;
    last = now;
  }
}

/** A connected, welcomed client. */
interface Client {
  socket: RawSocket;
  user: string;
  /** Which instance it is connected to (an index into the ports, modulo their number). */
  slot: number;
  token?: string;
}

/** Counters every client feeds. */
const seen = { presence: 0, frames: 0 };

/**
 * Connects a user and waits for its `welcome`; after that, `onFrame` gets
 * every data frame (error frames are counted as errors, presence counted).
 */
async function connect(
  user: string,
  onFrame: (payload: Uint8Array) => void = () => {},
  token?: string,
  slot = 0,
): Promise<Client> {
  const welcomed = Promise.withResolvers<void>();
  let ready = false;
  const client: Client = { socket: undefined!, user, slot };
  const protocols = config.tokens ? ["chat.v1", ...(token ? [`token.${token}`] : [])] : [];
  client.socket = await RawSocket.connect({
    port: ports[slot % ports.length],
    path: `/ws/${user}`,
    protocols,
    readBuffer: params.readBuffer ?? 16384,
    onFrame: (payload) => {
      seen.frames++;
      if (ready) {
        if (isType(payload, T.presence)) seen.presence++;
        else if (isType(payload, T.error)) error(`${user}: ${decoder.decode(payload)}`);
        else onFrame(payload);
        return;
      }
      if (isType(payload, T.welcome)) {
        if (config.tokens && !token) {
          const text = decoder.decode(payload);
          const at = text.indexOf('"token":"');
          if (at !== -1) client.token = text.slice(at + 9, text.indexOf('"', at + 9));
        }
        client.token ??= token;
        ready = true;
        welcomed.resolve();
      } else if (isType(payload, T.error)) {
        error(`${user}: ${decoder.decode(payload)}`);
      }
    },
    onClose: (code) => {
      if (!client.socket?.closing) error(`${user}: closed with ${code}`);
      welcomed.reject(new Error(`${user}: closed with ${code} before welcome`));
    },
  });
  await welcomed.promise;
  return client;
}

/** Resolves when `done()` is true (checked on `poke`), or after `ms`; true if done. */
function until(done: () => boolean, ms: number) {
  const { promise, resolve } = Promise.withResolvers<boolean>();
  const timer = setTimeout(() => resolve(done()), ms);
  return {
    promise: promise.finally(() => clearTimeout(timer)),
    poke: () => done() && resolve(true),
  };
}

/** Opens clients `names` with at most `concurrency` handshakes at a time, until `deadline`. */
async function openMany(
  names: string[],
  options: { concurrency: number; deadline: number; tokens?: (string | undefined)[] },
): Promise<(Client | undefined)[]> {
  const clients: (Client | undefined)[] = new Array(names.length);
  let next = 0;
  const worker = async () => {
    while (next < names.length && performance.now() < options.deadline) {
      const i = next++;
      try {
        clients[i] = await connect(names[i], undefined, options.tokens?.[i], i);
      } catch (e) {
        error(`connect ${names[i]}: ${(e as Error).message}`);
      }
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, worker));
  return clients;
}

/** Pairs of users: recipients first (so they exist), then their senders. */
async function pairs(count: number, onDelivery: (pair: number, seq: number) => void) {
  const recipients: Client[] = [];
  for (let i = 0; i < count; i++) {
    recipients.push(
      await connect(
        `${prefix}r${i}`,
        (payload) => {
          if (isType(payload, T.message)) onDelivery(i, seqOf(payload));
        },
        undefined,
        i,
      ),
    );
  }
  const acks = { count: 0 };
  const senders: Client[] = [];
  for (let i = 0; i < count; i++) {
    senders.push(
      // On the next instance, when there are several: every DM crosses between them.
      await connect(
        `${prefix}s${i}`,
        (payload) => {
          if (isType(payload, T.message)) acks.count++;
        },
        undefined,
        i + 1,
      ),
    );
  }
  const templates = recipients.map((r, i) =>
    new Template(JSON.stringify({ type: "send", to: r.user, text: "#00000000", ...cid(i) }), cids)
  );
  return { senders, templates, acks };
}

/** Waits (at most `ms`) until every sent DM arrived (and was acknowledged), else counts the loss. */
async function drain(
  sent: () => number,
  delivered: () => number,
  acks: { count: number },
  ms = 15_000,
): Promise<void> {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    if (delivered() >= sent() && (!config.acks || acks.count >= sent())) return;
    await sleep(20);
  }
  if (delivered() < sent()) error(`lost: ${sent() - delivered()} of ${sent()} never arrived`);
  if (config.acks && acks.count < sent()) {
    error(`unacknowledged: ${sent() - acks.count} of ${sent()}`);
  }
}

/**
 * DMs at saturation: `pairs` senders each keep `window` DMs in flight to
 * their own recipient (a DM is done when the recipient has it) for `seconds`
 * or `max` DMs; the figure is the target's CPU per delivered DM after `warmup` ms.
 */
async function dmPhase(): Promise<void> {
  const { pairs: count, window, seconds, max, warmup } = params;
  const sent = new Array<number>(count).fill(0);
  const got = new Array<number>(count).fill(0);
  let total = 0, delivered = 0, sending = false;
  // The clock starts when sending does, not while the users connect.
  let finished: ReturnType<typeof until> | undefined = undefined;
  const pump = (i: number) => {
    while (sending && sent[i] - got[i] < window && total < max) {
      setup.senders[i].socket.send(setup.templates[i].stamp(sent[i]++));
      total++;
    }
  };
  const setup = await pairs(count, (i, seq) => {
    if (seq !== got[i]) error(`pair ${i}: got #${seq}, expected #${got[i]}`);
    got[i]++;
    delivered++;
    pump(i);
    finished?.poke();
  });
  finished = until(() => delivered >= max, (seconds * 1000) + warmup);
  sending = true;
  for (let i = 0; i < count; i++) pump(i);
  await sleep(warmup);
  const a = mark(), from = delivered;
  await finished.promise;
  const b = mark(), n = delivered - from;
  sending = false;
  const s = span(a, b);
  result.metrics.dm_us = (s.target * 1e6) / n;
  result.metrics.dm_per_s = n / s.seconds;
  result.metrics.dm_target_cpu = s.target / s.seconds;
  if (config.dbPid) result.metrics.dm_db_us = (s.db * 1e6) / n;
  result.generator.dm_us = s.self;
  await drain(() => total, () => delivered, setup.acks);
}

/**
 * DMs open-loop: `rate` DMs a second for `seconds`, round-robin over `pairs`,
 * scheduled by the clock whatever arrives; latency is from the scheduled
 * send time to delivery (so a generator or target that falls behind shows
 * in it), counted after `warmup` ms.
 */
async function latencyPhase(): Promise<void> {
  const { pairs: count, rate, seconds, warmup } = params;
  const total = Math.floor((rate * (seconds * 1000 + warmup)) / 1000);
  const scheduled = new Float64Array(total);
  const latency = new Float64Array(total).fill(NaN);
  const last = new Array<number>(count).fill(-1);
  let delivered = 0;
  const setup = await pairs(count, (i, seq) => {
    const now = performance.now();
    if (seq <= last[i] || seq >= total) error(`pair ${i}: #${seq} after #${last[i]}`);
    last[i] = seq;
    latency[seq] = now - scheduled[seq];
    delivered++;
  });
  let k = 0;
  let lagMs = 0;
  const t0 = performance.now();
  const first = Math.ceil((warmup * rate) / 1000);
  let a: Mark | undefined, b: Mark | undefined;
  const done = Promise.withResolvers<void>();
  const tick = () => {
    const now = performance.now();
    const due = Math.min(total, Math.floor(((now - t0) * rate) / 1000) + 1);
    if (k < due && k >= first) lagMs = Math.max(lagMs, now - (t0 + (k * 1000) / rate));
    for (; k < due; k++) {
      if (k === first) a = mark();
      const i = k % count;
      scheduled[k] = t0 + (k * 1000) / rate;
      setup.senders[i].socket.send(setup.templates[i].stamp(k));
    }
    if (k < total) setTimeout(tick, 1);
    else {
      b = mark();
      done.resolve();
    }
  };
  tick();
  await done.promise;
  await drain(() => total, () => delivered, setup.acks);
  const measured = Array.from(latency.subarray(first)).filter((x) => !Number.isNaN(x))
    .sort((x, y) => x - y);
  const pct = (p: number) =>
    measured[Math.min(measured.length - 1, Math.floor(measured.length * p))];
  const s = span(a!, b!);
  result.metrics.latency_p50_ms = pct(0.5);
  result.metrics.latency_p99_ms = pct(0.99);
  result.metrics.latency_p999_ms = pct(0.999);
  result.metrics.latency_us = (s.target * 1e6) / (total - first);
  result.metrics.latency_rate = (total - first) / s.seconds;
  result.metrics.latency_send_lag_ms = lagMs;
  result.generator.latency_p99_ms = s.self;
  result.generator.latency_us = s.self;
  if (lagMs > 5) {
    result.notes.push(
      `the generator fell ${lagMs.toFixed(1)} ms behind its schedule (a busy machine?)`,
    );
  }
}

/**
 * Room fan-out: `members` join one room; `senders` of them send, with at
 * most `window` messages not yet delivered to everyone, `messages` in all
 * or for `seconds`. The figure is the target's CPU per delivery (a member's
 * copy, the sender's own included).
 */
async function roomPhase(): Promise<void> {
  const { members, senders, window, messages, seconds } = params;
  const room = `${prefix}room`;
  const counts = new Uint16Array(messages);
  const last = new Int32Array(members * senders).fill(-1);
  let k = 0, complete = 0, deliveries = 0, sending = false;
  // The clock starts when sending does, not while the members connect and join.
  let finished: ReturnType<typeof until> | undefined = undefined;
  const clients: Client[] = [];
  const pump = () => {
    while (sending && k - complete < window && k < messages) {
      const s = k % senders;
      clients[s].socket.send(templates[s].stamp(k++));
    }
  };
  const joins: Promise<void>[] = [];
  for (let j = 0; j < members; j++) {
    const joined = Promise.withResolvers<void>();
    joins.push(joined.promise);
    const user = `${prefix}m${j}`;
    const client = await connect(
      user,
      (payload) => {
        if (isType(payload, T.message)) {
          const seq = seqOf(payload);
          if (seq < 0 || seq >= messages) return error(`${user}: unexpected message`);
          const from = seq % senders;
          if (seq <= last[j * senders + from]) {
            error(`${user}: #${seq} after #${last[j * senders + from]}`);
          }
          last[j * senders + from] = seq;
          deliveries++;
          if (++counts[seq] === members) {
            complete++;
            pump();
            finished?.poke();
          }
        } else if (isType(payload, T.joined)) {
          const frame = JSON.parse(decoder.decode(payload));
          if (frame.user === user) joined.resolve();
        }
      },
      undefined,
      j,
    );
    client.socket.send(clientFrame(JSON.stringify({ type: "join", room })));
    clients.push(client);
  }
  await Promise.all(joins);
  const templates = clients.slice(0, senders).map((_, i) =>
    new Template(JSON.stringify({ type: "send", room, text: "#00000000", ...cid(i) }), cids)
  );
  finished = until(() => complete >= messages, seconds * 1000);
  const a = mark();
  sending = true;
  pump();
  await finished.promise;
  const b = mark(), n = deliveries;
  sending = false;
  const s = span(a, b);
  result.metrics.room_us = (s.target * 1e6) / n;
  result.metrics.room_deliveries_per_s = n / s.seconds;
  result.metrics.room_target_cpu = s.target / s.seconds;
  if (config.dbPid) result.metrics.room_db_us = (s.db * 1e6) / n;
  result.generator.room_us = s.self;
  const sent = k;
  await drain(() => sent * members, () => deliveries, { count: Infinity });
}

/**
 * A crowd: `online` new users arrive (`concurrency` handshakes at a time,
 * for at most `arrivalSeconds`), the memory they hold is measured once the
 * target is idle, they all leave and come back with their tokens, then for
 * `churnSeconds` `churnRate` arrivals and departures a second happen among
 * them: every `2 / churnRate` seconds one user leaves and another, who left
 * `awaySeconds` (3) before, comes back with its token. Away longer than the
 * server's presence interval (`--fanout-interval`, 2 s), each is news to
 * everyone: a departure and return within one interval would cancel out in
 * a batching server, and measure only the reconnection.
 */
async function crowdPhase(): Promise<void> {
  const { online, concurrency, arrivalSeconds, churnSeconds, churnRate } = params;
  // One connection first, so the baseline includes the code paths a connection needs.
  const warm = await connect(`${prefix}w`);
  await quiesce();
  const rss0 = rssKiB();
  const names = Array.from({ length: online }, (_, i) => `${prefix}u${i}`);

  let a = mark();
  let clients = await openMany(names, {
    concurrency,
    deadline: performance.now() + arrivalSeconds * 1000,
  });
  let b = mark();
  let opened = clients.filter(Boolean).length;
  let s = span(a, b);
  result.metrics.new_per_s = opened / s.seconds;
  result.metrics.new_us = (s.target * 1e6) / opened;
  result.metrics.online = opened;
  result.generator.new_per_s = s.self;
  if (opened < online) {
    result.notes.push(`only ${opened} of ${online} arrived in ${arrivalSeconds} s`);
  }

  await quiesce();
  result.metrics.idle_kib = (rssKiB() - rss0) / opened;

  const tokens = clients.map((c) => c?.token);
  await Promise.all(clients.map((c) => c?.socket.close()));
  await quiesce();
  a = mark();
  clients = await openMany(names.slice(0, opened), {
    concurrency,
    deadline: performance.now() + arrivalSeconds * 1000,
    tokens,
  });
  b = mark();
  opened = clients.filter(Boolean).length;
  s = span(a, b);
  result.metrics.returning_per_s = opened / s.seconds;
  result.metrics.returning_us = (s.target * 1e6) / opened;
  result.generator.returning_per_s = s.self;
  await quiesce();

  // Churn: every 2/churnRate seconds one user leaves, and the one who left `away` steps
  // before comes back (with its token). The first `away` leave before the window.
  const cycles = Math.floor((churnSeconds * churnRate) / 2);
  const away = Math.min(
    Math.max(0, opened - 1),
    Math.ceil(((params.awaySeconds ?? 3) * churnRate) / 2),
  );
  const left = new Map<number, Promise<unknown>>();
  const leave = (i: number) => {
    const client = clients[i];
    if (client) left.set(i, client.socket.close());
  };
  const comeBack = async (i: number) => {
    const client = clients[i];
    if (!client || !left.has(i)) return;
    await left.get(i);
    left.delete(i);
    try {
      clients[i] = await connect(client.user, undefined, client.token, client.slot);
    } catch (e) {
      clients[i] = undefined;
      error(`churn ${client.user}: ${(e as Error).message}`);
    }
  };
  for (let i = 0; i < away; i++) leave(i);
  await Promise.all(left.values());
  await quiesce();
  const pending: Promise<void>[] = [];
  a = mark();
  const framesBefore = seen.presence;
  for (let c = 0; c < cycles && opened > 0; c++) {
    leave((c + away) % opened);
    pending.push(comeBack(c % opened));
    await sleep(2000 / churnRate);
  }
  b = mark();
  result.metrics.presence_frames = seen.presence - framesBefore;
  await Promise.all(pending);
  // Those still away come back, so every socket is closed the same way below.
  await Promise.all([...left.keys()].map(comeBack));
  s = span(a, b);
  result.metrics.churn_cores = s.target / s.seconds;
  result.metrics.presence_per_s = result.metrics.presence_frames / s.seconds;
  result.generator.churn_cores = s.self;
  await Promise.all([warm, ...clients].map((c) => c?.socket.close()));
}

// Whatever happens (a server that stops answering a handshake, say), the phase ends in time.
const { seconds = 0, arrivalSeconds = 0, churnSeconds = 0 } = params;
const limitSeconds = 90 + seconds + 2 * arrivalSeconds + churnSeconds;
Deno.unrefTimer(setTimeout(() => {
  error(`${config.phase} did not finish within ${limitSeconds} s`);
  console.log(JSON.stringify(result));
  Deno.exit(0);
}, limitSeconds * 1000));

/** CPU seconds of each thread of a process, summed by thread name. */
function threadSeconds(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const entry of Deno.readDirSync(`/proc/${pid}/task`)) {
    try {
      const stat = Deno.readTextFileSync(`/proc/${pid}/task/${entry.name}/stat`);
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      out[name] = (out[name] ?? 0) + (Number(f[11]) + Number(f[12])) / 100;
    } catch {
      // The thread ended meanwhile.
    }
  }
  return out;
}
const threads0 = threadSeconds(pids[0]);

const phases = { dm: dmPhase, latency: latencyPhase, room: roomPhase, crowd: crowdPhase };
try {
  await phases[config.phase]();
} catch (e) {
  error(`${config.phase} failed: ${(e as Error).stack ?? e}`);
}
try {
  const threads1 = threadSeconds(pids[0]);
  result.threads = Object.fromEntries(
    Object.entries(threads1).map((
      [name, t],
    ) => [name, Number((t - (threads0[name] ?? 0)).toFixed(2))])
      .filter(([, t]) => (t as number) > 0),
  );
} catch {
  // The target is gone: nothing to add.
}
console.log(JSON.stringify(result));
Deno.exit(0);
