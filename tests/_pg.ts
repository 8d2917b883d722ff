/**
 * A throwaway PostgreSQL cluster for tests: its own data directory and port,
 * started as the `postgres` user (PostgreSQL refuses to run as root), with
 * `fsync=off` because a test cluster need not survive power loss (a SIGKILL of
 * the server it does survive: that is WAL, not fsync).
 *
 * ```ts
 * await using pg = await startPostgres();
 * const store = await SqlStore.open(pg.url);
 * await pg.crash();   // SIGKILL the whole server
 * await pg.restart(); // same port, same data
 * ```
 *
 * With `CI=true` a missing PostgreSQL is an error; elsewhere tests may ask
 * {@linkcode postgresAvailable} and skip.
 *
 * @module
 */

import { forgetTokens } from "./_client.ts";
import { type SpawnedServer, spawnServer } from "./_server.ts";

const BIN = Deno.env.get("PG_BIN") ?? "/usr/lib/postgresql/15/bin";

/** A running test cluster. */
export interface TestPostgres extends AsyncDisposable {
  /** `postgres://chat@127.0.0.1:PORT/chat` */
  url: string;
  /** The port it listens on (kept across restarts). */
  port: number;
  /** Kills the server's whole process group with SIGKILL and waits until it is gone. */
  crash(): Promise<void>;
  /** Starts it again (after {@linkcode crash}, or a running one is crashed first) and waits until it accepts connections. */
  restart(): Promise<void>;
}

/** Whether the PostgreSQL binaries are installed here. */
export function postgresAvailable(): boolean {
  try {
    Deno.statSync(`${BIN}/postgres`);
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether a test that needs PostgreSQL should be ignored: only when it is
 * missing and this is not CI (where a missing PostgreSQL must fail the test).
 */
export function ignoreWithoutPostgres(): boolean {
  return !postgresAvailable() && Deno.env.get("CI") !== "true";
}

async function run(cmd: string, args: string[], options: { asPostgres?: boolean } = {}) {
  const [command, all] = options.asPostgres && Deno.uid() === 0
    ? ["runuser", ["-u", "postgres", "--", cmd, ...args]]
    : [cmd, args];
  const out = await new Deno.Command(command, { args: all, stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
    throw new Error(`${cmd} ${args.join(" ")} failed (${out.code}):\n${text}`);
  }
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** Options of {@linkcode startPostgres}. */
export interface StartPostgresOptions {
  /** Sync commits to disk as production does (default false: tests need no power-loss safety). */
  fsync?: boolean;
}

/** Starts a fresh cluster with a database `chat` owned by user `chat`. */
export async function startPostgres(options: StartPostgresOptions = {}): Promise<TestPostgres> {
  if (!postgresAvailable()) {
    throw new Error(
      `PostgreSQL is not installed (looked for ${BIN}/postgres); apt-get install postgresql`,
    );
  }
  const dir = await Deno.makeTempDir({ prefix: "chat-pg-" });
  const data = `${dir}/data`;
  await Deno.mkdir(data);
  if (Deno.uid() === 0) await run("chown", ["-R", "postgres:postgres", dir]);
  await run(`${BIN}/initdb`, ["-D", data, "-A", "trust", "-U", "chat", "-E", "UTF8", "--no-sync"], {
    asPostgres: true,
  });
  const port = freePort();
  let child: Deno.ChildProcess | undefined;
  // The server's log, drained so it never blocks on a full pipe; kept for errors.
  let log = "";
  let drained: Promise<void> = Promise.resolve();

  const start = async () => {
    const args = [
      `${BIN}/postgres`,
      "-D",
      data,
      "-p",
      String(port),
      "-k",
      dir,
      "-c",
      "listen_addresses=127.0.0.1",
      "-c",
      `fsync=${options.fsync ? "on" : "off"}`,
      "-c",
      "max_connections=200",
    ];
    // Its own process group, so a crash can kill the postmaster and every backend at once.
    const [cmd, all] = Deno.uid() === 0
      ? ["setsid", ["runuser", "-u", "postgres", "--", ...args]]
      : ["setsid", args];
    child = new Deno.Command(cmd, { args: all, stdout: "null", stderr: "piped" }).spawn();
    const decoder = new TextDecoder();
    drained = child.stderr.pipeTo(
      new WritableStream({ write: (chunk) => void (log += decoder.decode(chunk)) }),
    ).catch(() => {});
    const started = Date.now();
    for (;;) {
      const ready = await new Deno.Command(`${BIN}/pg_isready`, {
        args: ["-h", "127.0.0.1", "-p", String(port), "-q"],
      }).output();
      if (ready.success) return;
      if (Date.now() - started > 30_000) {
        throw new Error(`PostgreSQL did not start in 30 s:\n${log}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  /**
   * Kills the cluster, every process at once; with `restartable`, also waits
   * until a new postmaster may take its data directory.
   */
  const kill = async (restartable: boolean) => {
    const c = child;
    if (!c) return;
    child = undefined;
    try {
      // setsid made the child (pid) the leader of a new process group: kill the group.
      Deno.kill(-c.pid, "SIGKILL");
    } catch {
      // Already gone.
    }
    await c.status;
    await drained;
    if (!restartable) return;
    // Backends of the killed postmaster exit on their own once it is gone; wait for the port and
    // pid file. A new postmaster refuses the directory while the old one's pid is taken, by a
    // zombie too (its lock-file check), and this machine's init is slow to reap (~2 s): a cluster
    // that is only thrown away does not wait for it.
    const started = Date.now();
    while (Date.now() - started < 10_000) {
      try {
        await Deno.stat(`${data}/postmaster.pid`);
      } catch {
        break;
      }
      const alive = await new Deno.Command("pgrep", { args: ["-g", String(c.pid)] }).output();
      if (!alive.success) break;
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  await start();
  await run(`${BIN}/createdb`, ["-h", "127.0.0.1", "-p", String(port), "-U", "chat", "chat"]);

  const crash = () => kill(true);
  const dispose = async () => {
    await kill(false);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  return {
    url: `postgres://chat@127.0.0.1:${port}/chat`,
    port,
    crash,
    restart: async () => {
      await crash();
      await start();
    },
    [Symbol.asyncDispose]: dispose,
  };
}

/** A cluster and `n` instances on it, all stopped on dispose. */
export async function instances(
  n: number,
  args: string[] = [],
): Promise<{ pg: TestPostgres; servers: SpawnedServer[] } & AsyncDisposable> {
  const pg = await startPostgres();
  const servers: SpawnedServer[] = [];
  // These tests follow every typing and presence change: pace fan-out far below their steps
  // (the pacing itself is the hostile suite's).
  args = ["--fanout-interval", "0.05", ...args];
  try {
    // The first creates the schema; the others start together.
    servers.push(await spawnServer({ data: pg.url, args }));
    servers.push(
      ...await Promise.all(
        Array.from({ length: n - 1 }, () => spawnServer({ data: pg.url, args })),
      ),
    );
  } catch (error) {
    await Promise.all(servers.map((s) => s.close()));
    await pg[Symbol.asyncDispose]();
    throw error;
  }
  return {
    pg,
    servers,
    [Symbol.asyncDispose]: async () => {
      await Promise.all(servers.map((s) => s.close()));
      // A later cluster may get these ports: its users are not these.
      forgetTokens(servers.map((s) => s.origin));
      await pg[Symbol.asyncDispose]();
    },
  };
}
