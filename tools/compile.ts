/**
 * `deno task compile`: `deno compile` with the server's permissions, and a
 * plain answer when it fails. `deno compile` joins the program to `denort`, a
 * runtime it downloads from Deno's CDN the first time; offline, that download
 * fails with a chain of Rust errors. This says what failed and what to do (a
 * network, or `DENORT_BIN`), prints no backtrace, and leaves no empty `dist/`.
 *
 * Usage: `deno run -A tools/compile.ts [--output dist/chat]`.
 *
 * @module
 */

import { dirname } from "node:path";

/**
 * V8's young generation at most 8 MB a semi-space, not 16: it grows to the
 * most under a burst of arrivals and stays there, so that with 5,000 idle
 * users it was ~6 KiB of each one's resident memory (the benchmark's crowd
 * phase, 2 runs each: 25.4 and 26.0 KiB a connection against 30.5 and 34.1;
 * 4 MB gave 21–24 but a worse p99 at 5,000 DMs/s, 36 and 51 ms against 32
 * and 30, as short-lived messages got promoted). The binary, `deno task
 * start` and `dev` all carry it; the benchmark reads it from `start`.
 */
export const V8_FLAGS = "--v8-flags=--max-semi-space-size=8";

/**
 * What the binary may do: the network, its own environment variables, files
 * (the KV data), and list the machine's network addresses (for the start line);
 * and how V8 runs it ({@linkcode V8_FLAGS}).
 */
export const COMPILE_FLAGS: readonly string[] = [
  V8_FLAGS,
  "--allow-sys=networkInterfaces",
  "--allow-net",
  "--allow-env=PORT,HOST,DENO_DEPLOYMENT_ID,CHAT_*,DATABASE_URL,PG*",
  "--allow-read",
  "--allow-write",
  // The checkpoints' worker is loaded by URL at run time: name it so the binary holds it.
  "--include",
  "lib/sql/sqlite_checkpoint.ts",
];

/** Where the binary goes unless `--output` says otherwise. */
export const DEFAULT_OUTPUT = "dist/chat";

/** The arguments of `deno` that compile the server to `output`. */
export function compileArgs(output: string = DEFAULT_OUTPUT): string[] {
  return ["compile", ...COMPILE_FLAGS, "--output", output, "main.ts"];
}

/** Why a failed `deno compile` failed, in words for the person who ran it. */
export function explainFailure(printed: string, denortBin: string | undefined): string {
  const npm = /Failed caching npm package '([^']+)'/.exec(printed);
  if (npm) {
    const causes = [...printed.matchAll(/^\s*\d+: (.+)$/gm)].map((m) => m[1].trim());
    return [
      `error: deno compile could not download the npm package ${npm[1]}: ${
        causes.at(-1) ?? "the download failed"
      }.`,
      "",
      "Connect to the network (or set NPM_CONFIG_REGISTRY to a registry you can reach) and run",
      "`deno task compile` again; packages are cached after the first download.",
    ].join("\n");
  }
  const download = /dl\.deno\.land|denort/i.exec(printed) !== null &&
    /error sending request|dns|connect|timed out|download/i.test(printed);
  if (!download) return "";
  const url = /https:\/\/dl\.deno\.land\/\S+?\.zip/.exec(printed)?.[0] ?? "Deno's CDN";
  // The innermost cause is the last numbered line of the chain ("4: failed to lookup …").
  const causes = [...printed.matchAll(/^\s*\d+: (.+)$/gm)].map((m) => m[1].trim());
  const cause = causes.at(-1) ?? "the download failed";
  return [
    `error: deno compile could not download its runtime (denort) from ${url}: ${cause}.`,
    "",
    "Either:",
    "  - connect to the network and run `deno task compile` again (the runtime is cached after",
    "    the first download), or",
    "  - point DENORT_BIN at a denort binary of the same Deno version, e.g.",
    "      DENORT_BIN=/path/to/denort deno task compile",
    ...(denortBin
      ? [`  (DENORT_BIN is set to ${denortBin}, but deno compile still downloaded.)`]
      : []),
  ].join("\n");
}

/** Terminal colour codes (ESC [ … m), which deno prints unless NO_COLOR is set. */
const ANSI = new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, "g");

/** Whether a directory exists. */
async function exists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

/** Removes a directory if it is empty. */
async function removeIfEmpty(path: string): Promise<void> {
  for await (const _ of Deno.readDir(path)) return;
  await Deno.remove(path);
}

async function main(): Promise<number> {
  const at = Deno.args.indexOf("--output");
  const output = at === -1 ? DEFAULT_OUTPUT : Deno.args[at + 1];
  if (output === undefined) {
    console.error("error: --output needs a path");
    return 2;
  }
  const dir = dirname(output);
  const dirExisted = await exists(dir);
  const child = new Deno.Command(Deno.execPath(), {
    args: compileArgs(output),
    // A backtrace says nothing to the person compiling; the cause chain is kept.
    env: { RUST_BACKTRACE: "0" },
    stdin: "null",
    stdout: "inherit",
    stderr: "piped",
  }).spawn();
  // Progress goes through as it comes; from the first error line on, it is held to be explained.
  let held = "";
  let failing = false;
  const decoder = new TextDecoder();
  let partial = "";
  for await (const chunk of child.stderr) {
    partial += decoder.decode(chunk, { stream: true });
    const lines = partial.split("\n");
    partial = lines.pop() ?? "";
    for (const line of lines) {
      if (line.replace(ANSI, "").startsWith("error")) failing = true;
      if (failing) held += line + "\n";
      else console.error(line);
    }
  }
  held += partial;
  const status = await child.status;
  if (status.success) {
    if (held) console.error(held.trimEnd());
    return 0;
  }
  // Drop what a failed compile left: a dist/ it created and nothing in it.
  if (!dirExisted && await exists(dir)) await removeIfEmpty(dir);
  const plain = held.replace(ANSI, "");
  const explained = explainFailure(plain, Deno.env.get("DENORT_BIN"));
  console.error(explained || plain.replace(/\n*Stack backtrace:[\s\S]*$/, "").trimEnd());
  return status.code || 1;
}

if (import.meta.main) Deno.exit(await main());
