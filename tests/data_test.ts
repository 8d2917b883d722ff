/**
 * `--data` as a user meets it: what each value opens, and a clear error at
 * start (never a silent surprise) for a value the server cannot use.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { DataError, parseData } from "../lib/sql/open.ts";
import { ignoreWithoutPostgres, startPostgres } from "./_pg.ts";

const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));

/** Runs main.ts until it listens (then stops it) or exits; resolves with what it printed. */
async function start(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ listening: boolean; code?: number; output: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "--hostname", "127.0.0.1", "--port", "0", ...args],
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let output = "";
  const decoder = new TextDecoder();
  let listening = false;
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) {
      output += decoder.decode(chunk, { stream: true });
      if (!listening && /listening on/.test(output)) {
        listening = true;
        child.kill("SIGTERM");
      }
    }
  };
  await Promise.all([pump(child.stdout), pump(child.stderr)]);
  const status = await child.status;
  return { listening, code: listening ? undefined : status.code, output };
}

const here = { onDeploy: false, env: () => undefined, explicit: true };

Deno.test("--data picks SQLite for a path or :memory: and PostgreSQL for postgres:// and postgresql://", () => {
  assert.deepEqual(parseData("./data/chat.db", here), { kind: "sqlite", path: "./data/chat.db" });
  assert.deepEqual(parseData(":memory:", here), { kind: "sqlite", path: ":memory:" });
  assert.deepEqual(parseData("postgres://u@h:5/db", here), {
    kind: "postgres",
    url: "postgres://u@h:5/db",
  });
  assert.deepEqual(parseData("postgresql://h/db", here), {
    kind: "postgres",
    url: "postgresql://h/db",
  });
  assert.throws(() => parseData("mysql://h/db", here), DataError);
  assert.throws(() => parseData("./old/chat.kv", here), /deno task migrate --from .\/old\/chat.kv/);
});

Deno.test("on Deno Deploy --data uses DATABASE_URL, else PG*, else refuses to keep data nowhere", () => {
  const deploy = (vars: Record<string, string>) => ({
    onDeploy: true,
    env: (name: string) => vars[name],
    explicit: false,
  });
  assert.deepEqual(parseData("./data/chat.db", deploy({ DATABASE_URL: "postgres://d/x" })), {
    kind: "postgres",
    url: "postgres://d/x",
  });
  assert.deepEqual(parseData("./data/chat.db", deploy({ PGHOST: "db.internal" })), {
    kind: "postgres",
  });
  assert.throws(() => parseData("./data/chat.db", deploy({})), /Deno Deploy.*PostgreSQL/);
});

Deno.test("the server refuses at start a --data it cannot use, and says why", async () => {
  const dir = await Deno.makeTempDir({ prefix: "chat-data-" });
  try {
    const cases: Array<[string[], Record<string, string>, RegExp]> = [
      [["--data", "mysql://localhost/chat"], {}, /unknown kind of database/],
      [["--data", dir], {}, /is a folder/],
      [["--data", `${dir}/old.kv`], {}, /deno task migrate --from .*old\.kv --to .*old\.db/],
      // Nothing listens on port 1: the server must not start without its database.
      [["--data", "postgres://chat@127.0.0.1:1/chat"], {}, /cannot connect to PostgreSQL/],
      [["--data", `${dir}/x.db`], { DENO_DEPLOYMENT_ID: "abc" }, /Deno Deploy.*none is assigned/],
    ];
    for (const [args, env, expected] of cases) {
      const result = await start(args, env);
      assert.equal(result.listening, false, `${args.join(" ")} started:\n${result.output}`);
      assert.equal(result.code, 1, result.output);
      assert.match(result.output, expected);
    }
    // Nothing was created for the refused values (the old server made a folder "postgres:").
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), []);
    // A default start next to an old data/chat.kv points at the migration instead of starting empty.
    await Deno.mkdir(`${dir}/data`);
    await Deno.writeFile(`${dir}/data/chat.kv`, new Uint8Array());
    const child = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MAIN, "--port", "0"],
      cwd: dir,
      stdin: "null",
    }).output();
    assert.equal(child.code, 1);
    assert.match(new TextDecoder().decode(child.stderr), /deno task migrate --from .*chat\.kv/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "on Deno Deploy the server keeps its data in the PostgreSQL of DATABASE_URL",
  ignore: ignoreWithoutPostgres(),
  fn: async () => {
    await using pg = await startPostgres();
    const result = await start([], { DENO_DEPLOYMENT_ID: "abc", DATABASE_URL: pg.url });
    assert.equal(result.listening, true, result.output);
    assert.match(result.output, /data: PostgreSQL postgres:\/\/chat@127\.0\.0\.1/);
  },
});
