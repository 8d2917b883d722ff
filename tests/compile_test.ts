/**
 * The single binary: `deno compile` (with the flags of the `compile` task)
 * embeds the page, and the page is never read from disk at run time.
 *
 * `deno compile` joins the program to `denort`, a runtime it downloads from
 * Deno's CDN unless `DENORT_BIN` names a local one. The download is
 * unreachable here, so the first test sets `DENORT_BIN` to the deno CLI
 * itself: the result does not run as the app, but the embedding step runs in
 * full. The second test runs the binary and needs a real `denort`: it runs
 * only when `DENORT_BIN` is set in the environment.
 *
 * @module
 */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { fileURLToPath } from "node:url";
import config from "../deno.json" with { type: "json" };
import {
  COMPILE_FLAGS,
  compileArgs as taskArgs,
  explainFailure,
  V8_FLAGS,
} from "../tools/compile.ts";
import { TestClient } from "./_client.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const PAGE_FILES = ["static/index.html", "static/app.js", "static/style.css"];

/** The `compile` task's arguments after `deno`, with the output put in `output`. */
function compileArgs(output: string): string[] {
  const task: string = config.tasks.compile;
  assert.match(task, /tools\/compile\.ts/, `tasks.compile runs the wrapper: ${task}`);
  return taskArgs(output);
}

/** Runs `deno compile` as the task does, with `denort` as the runtime; returns its output. */
async function compile(output: string, denort: string): Promise<string> {
  const result = await new Deno.Command(Deno.execPath(), {
    args: compileArgs(output),
    cwd: ROOT,
    env: { DENORT_BIN: denort, NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  const printed = decoder.decode(result.stdout) + decoder.decode(result.stderr);
  assert.equal(result.code, 0, `deno compile failed:\n${printed}`);
  return printed;
}

Deno.test("deno compile embeds the page in the binary", async () => {
  const dir = await Deno.makeTempDir({ prefix: "chat-compile-" });
  try {
    const output = `${dir}/chat`;
    const printed = await compile(output, Deno.execPath());
    assert.match(printed, /Embedded Files/, printed);
    assert.match(printed, /static\//, `the listing names static/:\n${printed}`);
    assert.ok((await Deno.stat(output)).isFile, `${output} was written`);

    // deno compile stores embedded files as they are (no compression), so
    // each file's exact bytes are somewhere in the binary.
    const binary = Buffer.from(await Deno.readFile(output));
    for (const file of PAGE_FILES) {
      const bytes = await Deno.readFile(`${ROOT}/${file}`);
      assert.ok(bytes.byteLength > 0, `${file} is not empty`);
      assert.notEqual(binary.indexOf(Buffer.from(bytes)), -1, `${file} is embedded byte for byte`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the server never reads the page from disk (it comes through text imports)", async () => {
  const sources = ["main.ts"];
  for await (const entry of Deno.readDir(`${ROOT}/lib`)) {
    if (entry.isFile && entry.name.endsWith(".ts")) sources.push(`lib/${entry.name}`);
  }
  const fileReads =
    /\bDeno\.(readTextFile|readFile|open)(Sync)?\s*\(|\b(readFileSync|readFile|serveDir|serveFile)\s*\(/;
  const found: string[] = [];
  for (const source of sources.sort()) {
    const lines = (await Deno.readTextFile(`${ROOT}/${source}`)).split("\n");
    lines.forEach((line, i) => {
      // The descriptor limit from /proc, or probed by opening the executable (lib/guard.ts), is
      // the kernel's, not a page file.
      if (fileReads.test(line) && !line.includes('"/proc/') && !line.includes("Deno.execPath()")) {
        found.push(`${source}:${i + 1}: ${line.trim()}`);
      }
    });
  }
  assert.deepEqual(found, [], "no source reads files at run time");

  const page = await Deno.readTextFile(`${ROOT}/lib/page.ts`);
  for (const file of PAGE_FILES) {
    const imported = new RegExp(
      `^import \\w+ from "\\.\\./${RegExp.escape(file)}" with \\{ type: "text" \\};$`,
      "m",
    );
    assert.match(page, imported, `lib/page.ts imports ${file} as text`);
  }
});

const DENORT = Deno.env.get("DENORT_BIN");

Deno.test({
  name: DENORT
    ? "the compiled binary serves the page and chats"
    : "the compiled binary serves the page and chats (ignored: needs DENORT_BIN, a denort runtime; its download is unreachable here)",
  ignore: !DENORT,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "chat-binary-" });
    try {
      const output = `${dir}/chat`;
      await compile(output, DENORT!);
      const child = new Deno.Command(output, {
        args: ["--hostname", "127.0.0.1", "--port", "0", "--data", ":memory:"],
        stdin: "null",
        stdout: "piped",
        stderr: "inherit",
      }).spawn();
      let log = "";
      try {
        const decoder = new TextDecoder();
        const reader = child.stdout.getReader();
        let origin: string | undefined;
        while (!origin) {
          const { value, done } = await reader.read();
          if (done) throw new Error(`the binary exited before listening:\n${log}`);
          log += decoder.decode(value, { stream: true });
          origin = log.match(/listening on (http:\/\/[^/\s]+)\//)?.[1];
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        const drained = (async () => {
          for (;;) {
            const { value, done } = await reader.read();
            if (done) return;
            log += decoder.decode(value, { stream: true });
          }
        })();

        const res = await fetch(`${origin}/`);
        assert.equal(res.status, 200);
        assert.equal(await res.text(), await Deno.readTextFile(`${ROOT}/static/index.html`));

        const [client, welcome] = await TestClient.join(origin, "alice");
        assert.equal(welcome.user, "alice");
        assert.equal(client.socket.protocol, "chat.v1");
        await client.close();

        child.kill("SIGTERM");
        const status = await child.status;
        await drained;
        assert.equal(status.code, 0, `exit after SIGTERM:\n${log}`);
      } finally {
        try {
          child.kill("SIGKILL");
        } catch {
          // Already exited.
        }
        await child.status;
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("deno task compile without a network says what failed and what to do, prints no backtrace, leaves no dist/", async () => {
  const dir = await Deno.makeTempDir({ prefix: "chat-compile-offline-" });
  try {
    const output = `${dir}/dist/chat`;
    // The npm packages come first, while the registry is reachable: offline is the runtime's
    // download alone (a missing npm package has its own explanation, tested below).
    const cached = await new Deno.Command(Deno.execPath(), {
      args: ["cache", "main.ts"],
      cwd: ROOT,
      env: { DENO_DIR: `${dir}/deno`, NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(cached.code, 0, new TextDecoder().decode(cached.stderr));
    const result = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "tools/compile.ts", "--output", output],
      cwd: ROOT,
      // No network on any machine: the download goes to a proxy on a closed loopback port. A fresh
      // DENO_DIR has no cached runtime; no DENORT_BIN; a backtrace asked for, to see it withheld.
      clearEnv: true,
      env: {
        PATH: Deno.env.get("PATH") ?? "",
        HOME: dir,
        DENO_DIR: `${dir}/deno`,
        HTTPS_PROXY: "http://127.0.0.1:1",
        HTTP_PROXY: "http://127.0.0.1:1",
        RUST_BACKTRACE: "1",
        NO_COLOR: "1",
      },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const decoder = new TextDecoder();
    const printed = decoder.decode(result.stdout) + decoder.decode(result.stderr);
    assert.notEqual(result.code, 0, printed);
    assert.match(
      printed,
      /could not download its runtime \(denort\) from https:\/\/dl\.deno\.land\//,
    );
    assert.match(printed, /connect to the network/);
    assert.match(printed, /DENORT_BIN=/);
    assert.doesNotMatch(printed, /Stack backtrace|Caused by/, printed);
    await assert.rejects(Deno.stat(`${dir}/dist`), Deno.errors.NotFound, "no dist/ left behind");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task compile with the npm registry out of reach names the package and what to do", () => {
  const printed = [
    "Download https://registry.npmjs.org/postgres/-/postgres-3.4.9.tgz",
    "error: Failed caching npm package 'postgres@3.4.9'",
    "    0: error sending request for url (https://registry.npmjs.org/postgres/-/postgres-3.4.9.tgz)",
    "    3: Connection refused (os error 111)",
  ].join("\n");
  const said = explainFailure(printed, undefined);
  assert.match(said, /could not download the npm package postgres@3\.4\.9: Connection refused/);
  assert.match(said, /Connect to the network/);
});

Deno.test("the binary, deno task start and dev run with the same V8 flags", () => {
  const v8 = (words: readonly string[]) => words.filter((w) => w.startsWith("--v8-flags"));
  assert.deepEqual(v8(COMPILE_FLAGS), [V8_FLAGS]);
  for (const task of [config.tasks.start, config.tasks.dev]) {
    assert.deepEqual(v8(task.split(/\s+/)), [V8_FLAGS], task);
  }
});
