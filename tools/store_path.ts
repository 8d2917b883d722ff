/**
 * What the store path costs the server, without sockets (short, bounded):
 * the store and accounts queries of an arrival as `server.ts` and `hub.ts`
 * ask them, 32 at a time (new users, then the same users returning with
 * their tokens), and DM appends from 20 pairs, open loop at `RATE`/s for
 * `SECONDS`, then saturated (320 in flight). Prints CPU µs each by thread
 * (`deno` is the main thread, `worker-1` SQLite's) and the rate reached.
 *
 * `deno run -A tools/store_path.ts [checkout]` (another checkout's `lib/` to
 * compare; env `SYNC=normal`, `RATE`, `SECONDS`, `N`, `CIDS=random|ordered|off`: client
 * ids as random UUIDs, in time order as the page's UUIDv7s, or none; `SEARCH=on`: with the
 * search index, which the server keeps only with `--search-index on`). Pin it to one core with
 * `taskset -c 1` to see it as the benchmark's server does.
 *
 * @module
 */

import { join, resolve } from "node:path";

const root = resolve(Deno.args[0] ?? join(import.meta.dirname!, ".."));
const { openStore } = await import(join(root, "lib/sql/open.ts"));
const { Accounts } = await import(join(root, "lib/accounts.ts"));
const SYNC = Deno.env.get("SYNC") ?? "full";
const N = Number(Deno.env.get("N") ?? 2000);
const RATE = Number(Deno.env.get("RATE") ?? 5000);
const SECONDS = Number(Deno.env.get("SECONDS") ?? 2);
const CIDS = Deno.env.get("CIDS") ?? "ordered";
// As the server runs by default (`--search-index off`); `openStore` alone would keep the index.
const SEARCH = Deno.env.get("SEARCH") === "on";

/** CPU µs so far by thread name, from /proc. */
function threads(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const t of Deno.readDirSync("/proc/self/task")) {
    const stat = Deno.readTextFileSync(`/proc/self/task/${t.name}/stat`);
    const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    out[name] = (out[name] ?? 0) + (Number(f[11]) + Number(f[12])) * 10_000;
  }
  return out;
}

function report(label: string, before: Record<string, number>, n: number, ms: number, more = "") {
  const after = threads();
  const spent = Object.entries(after).map(([k, v]) => [k, (v - (before[k] ?? 0)) / n] as const);
  const total = spent.reduce((sum, [, v]) => sum + v, 0);
  const parts = spent.filter(([, v]) => v >= 1).map(([k, v]) => `${k}=${v.toFixed(0)}`);
  console.log(
    `${label}: ${total.toFixed(0)} µs CPU each (${parts.join(" ")}), ${
      (n / ms * 1000).toFixed(0)
    }/s${more}`,
  );
}

async function pool<T>(items: T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) await fn(items[next++]);
  }));
}

const dir = await Deno.makeTempDir({ prefix: "chat-store-path-" });
try {
  const store = await openStore(join(dir, "chat.db"), {
    sqliteSynchronous: SYNC,
    searchIndex: SEARCH,
  });
  const accounts = new Accounts(store.db, { iterations: 1000 });

  /** The store's part of an arrival; resolves with the token a new user was given. */
  const arrive = async (name: string, token?: string): Promise<string | undefined> => {
    const resolved = await accounts.resolve(name);
    if (!resolved.ok) throw new Error(resolved.reason);
    const auth = await accounts.authenticate(resolved.user, { token, legacy: false });
    if (!auth.ok) throw new Error(auth.reason);
    if (!(await accounts.register(resolved.user)).ok) throw new Error("not registered");
    // The hub's welcome.
    await accounts.register(resolved.user);
    const rooms = ["lobby", ...(await store.rooms(name)).filter((r: string) => r !== "lobby")];
    await Promise.all([
      store.conversations(name, rooms, 200),
      store.invites(name),
      accounts.hasPassword(name),
      Promise.all(rooms.map((r: string) => store.room(r))),
    ]);
    return auth.token;
  };

  await pool(Array.from({ length: 200 }, (_, i) => `warm${i}`), 32, async (n) => {
    await arrive(n);
  });
  const names = Array.from({ length: N }, (_, i) => `user${i}`);
  const tokens = new Map<string, string>();
  let before = threads(), started = performance.now();
  await pool(names, 32, async (n) => void tokens.set(n, (await arrive(n))!));
  report("new user", before, N, performance.now() - started);
  before = threads(), started = performance.now();
  await pool(names, 32, async (n) => void await arrive(n, tokens.get(n)));
  report("returning user", before, N, performance.now() - started);

  const pairs = 20;
  let seq = 0;
  const cid = (): { cid?: string } =>
    CIDS === "off" ? {} : {
      cid: CIDS === "random"
        ? crypto.randomUUID()
        // Time first, as a UUIDv7's text: fixed-width hex that sorts as it was made.
        : `${(Date.now() * 4096 + (seq++ % 4096)).toString(16).padStart(16, "0")}-${
          crypto.randomUUID().slice(19)
        }`,
    };
  const dm = (i: number) => ({
    from: `user${(i % pairs) * 2}`,
    to: `user${(i % pairs) * 2 + 1}`,
    text: `message ${i} of an ordinary length`,
    ...cid(),
  });
  // Open loop: sends due by the clock, whatever the answers.
  const total = RATE * SECONDS;
  const latency: number[] = [];
  const done: Promise<unknown>[] = [];
  before = threads(), started = performance.now();
  for (let i = 0; i < total;) {
    const due = Math.min(total, Math.floor((performance.now() - started) * RATE / 1000));
    for (; i < due; i++) {
      const at = started + i * 1000 / RATE;
      done.push(store.append(dm(i)).then(() => latency.push(performance.now() - at)));
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  await Promise.all(done);
  latency.sort((a, b) => a - b);
  const pct = (p: number) => latency[Math.floor(latency.length * p)].toFixed(1);
  report(
    `DM append, open loop ${RATE}/s`,
    before,
    total,
    performance.now() - started,
    `, p50 ${pct(0.5)} ms, p99 ${pct(0.99)} ms`,
  );
  const saturated = 30_000;
  let sent = 0;
  before = threads(), started = performance.now();
  await Promise.all(Array.from({ length: 320 }, async () => {
    while (sent < saturated) await store.append(dm(sent++));
  }));
  report("DM append, saturated (320 in flight)", before, saturated, performance.now() - started);
  await store.close();
} finally {
  await Deno.remove(dir, { recursive: true });
}
