/**
 * `deno task mutate`: mutation testing of `lib/` with StrykerJS. Each mutant
 * (a small change to the code: a condition flipped, a call removed, a
 * constant changed) is switched on in turn and the tests of
 * `tools/mutate/run_tests.ts` run against it; a mutant the tests do not
 * notice "survives", and shows a promise no test keeps.
 *
 * StrykerJS is installed into `tools/mutate/` on first use (npm, pinned in
 * its package.json) and runs under Deno, whose Node compatibility is newer
 * than the Node on these machines (StrykerJS 10 wants Node 22). It uses the
 * `command` test runner, so every mutant costs one `deno test` run: all of
 * `lib/` (about 2,700 mutants) takes hours on two cores. Pass `--mutate` with
 * files or line ranges to measure a part:
 *
 * ```sh
 * deno task mutate --mutate lib/connection.ts:240-310,lib/limiter.ts
 * deno task mutate --concurrency 1 --minutes 20 --mutate lib/hub.ts
 * ```
 *
 * Other flags go to `stryker run` as they are. At the end it prints the
 * score ((killed + timed out) / (all but errors and ignored)) and every
 * survivor with its place and change.
 *
 * `deno task mutate --quick` instead puts each known bug of
 * `tools/mutants.ts` into a copy of the repository and runs the test files it
 * names (a few minutes): the same score and survivors, for bugs that break a
 * promise of the README.
 *
 * @module
 */

import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const DIR = join(ROOT, "tools", "mutate");
const STRYKER = join(DIR, "node_modules", "@stryker-mutator", "core", "bin", "stryker.js");
const REPORT = join(DIR, "reports", "mutation.json");

/** One mutant of StrykerJS's JSON report (mutation-testing-report-schema). */
interface Mutant {
  mutatorName: string;
  replacement?: string;
  status: string;
  location: { start: { line: number; column: number }; end: { line: number; column: number } };
}

/** The report's files, by path, with their source and mutants. */
type Report = { files: Record<string, { source: string; mutants: Mutant[] }> };

async function run(cmd: string, args: string[], env?: Record<string, string>): Promise<number> {
  const child = new Deno.Command(cmd, { args, cwd: ROOT, env, stdin: "null" }).spawn();
  return (await child.status).code;
}

/** Installs StrykerJS into tools/mutate/ unless it is there already. */
async function install(): Promise<void> {
  try {
    await Deno.stat(STRYKER);
    return;
  } catch {
    // Not installed yet.
  }
  console.log("installing StrykerJS into tools/mutate/ (npm, as its package-lock.json says)");
  const code = await run("npm", [
    "ci",
    "--prefix",
    DIR,
    "--no-audit",
    "--no-fund",
    "--loglevel=error",
    "--engine-strict=false",
  ]);
  if (code !== 0) throw new Error(`npm install failed (exit ${code})`);
}

/** The text a mutant replaced, from the report's copy of the source. */
function original(source: string, m: Mutant): string {
  const lines = source.split("\n");
  const { start, end } = m.location;
  if (start.line === end.line) return lines[start.line - 1].slice(start.column - 1, end.column - 1);
  return [
    lines[start.line - 1].slice(start.column - 1),
    ...lines.slice(start.line, end.line - 1),
    lines[end.line - 1].slice(0, end.column - 1),
  ].join("\n");
}

const short = (text: string) => {
  const one = text.replace(/\s+/g, " ").trim();
  return one.length > 90 ? `${one.slice(0, 90)}…` : one;
};

/** Prints the score and the survivors; returns the score in percent. */
export function summarise(report: Report): number {
  const counts: Record<string, number> = {};
  const survivors: string[] = [];
  for (const [file, { source, mutants }] of Object.entries(report.files)) {
    for (const m of mutants) {
      counts[m.status] = (counts[m.status] ?? 0) + 1;
      if (m.status === "Survived" || m.status === "NoCoverage") {
        const at = `${relative(ROOT, join(ROOT, file))}:${m.location.start.line}`;
        survivors.push(
          `  ${at} ${m.mutatorName}: ${short(original(source, m))} → ${short(m.replacement ?? "")}`,
        );
      }
    }
  }
  const detected = (counts.Killed ?? 0) + (counts.Timeout ?? 0);
  const valid = detected + (counts.Survived ?? 0) + (counts.NoCoverage ?? 0);
  const score = valid === 0 ? 0 : (100 * detected) / valid;
  console.log(`\nsurvivors (${survivors.length}):\n${survivors.join("\n") || "  none"}`);
  console.log(
    `\nmutation score: ${score.toFixed(1)}% (${detected} of ${valid} detected; ${
      Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(", ")
    })`,
  );
  return score;
}

/** Copies the repository's files (tracked, and new ones not ignored) into a temporary folder. */
async function copyRepository(): Promise<string> {
  const list = new Deno.Command("git", {
    args: ["ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    cwd: ROOT,
    stdout: "piped",
  }).outputSync();
  if (!list.success) throw new Error("git ls-files failed");
  const dir = await Deno.makeTempDir({ prefix: "chat-mutants-" });
  for (const file of new TextDecoder().decode(list.stdout).split("\0").filter(Boolean)) {
    const to = join(dir, file);
    await Deno.mkdir(dirname(to), { recursive: true });
    await Deno.copyFile(join(ROOT, file), to).catch(() => {}); // deleted but not yet staged
  }
  return dir;
}

/** Runs test files in `cwd`, bounded in time; true when they all pass. */
async function testsPass(cwd: string, files: string[], seconds = 180): Promise<boolean> {
  const child = new Deno.Command(Deno.execPath(), {
    // With the sanitizers, as `deno task test` runs them: a leaked timer is a bug too.
    args: [
      "test",
      "--no-check",
      "--allow-all",
      "--sanitize-ops",
      "--sanitize-resources",
      "--fail-fast",
      ...files,
    ],
    cwd,
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), seconds * 1000);
  const { success } = await child.status;
  clearTimeout(timer);
  return success;
}

/**
 * `--quick`: each known bug of tools/mutants.ts, put into a copy of the
 * repository, against its test files. Returns the exit code.
 */
async function quick(): Promise<number> {
  const { KNOWN_BUGS, staleness } = await import("./mutants.ts");
  const dir = await copyRepository();
  try {
    const all = [...new Set(KNOWN_BUGS.flatMap((b) => b.tests))];
    if (!(await testsPass(dir, all))) {
      console.error(`mutate: the tests fail without any bug: ${all.join(" ")}`);
      return 1;
    }
    const survived: string[] = [], stale: string[] = [];
    let killed = 0;
    for (const bug of KNOWN_BUGS) {
      const path = join(dir, bug.file);
      const source = await Deno.readTextFile(path);
      const why = staleness(bug, source);
      if (why) {
        stale.push(`  ${bug.file}: ${bug.name} (${why})`);
        console.log(`stale     ${bug.name}`);
        continue;
      }
      const started = Date.now();
      await Deno.writeTextFile(path, source.replace(bug.search, bug.replace));
      let caught: boolean;
      try {
        caught = !(await testsPass(dir, bug.tests));
      } finally {
        await Deno.writeTextFile(path, source);
      }
      const took = `${((Date.now() - started) / 1000).toFixed(1)} s`;
      console.log(`${caught ? "killed   " : "SURVIVED "} ${bug.name} (${took})`);
      if (caught) killed++;
      else survived.push(`  ${bug.file}: ${bug.name} (tests: ${bug.tests.join(" ")})`);
    }
    const valid = killed + survived.length;
    console.log(`\nsurvivors (${survived.length}):\n${survived.join("\n") || "  none"}`);
    if (stale.length) console.log(`stale (${stale.length}):\n${stale.join("\n")}`);
    console.log(
      `\nmutation score (known bugs): ${(valid ? (100 * killed) / valid : 0).toFixed(1)}% ` +
        `(${killed} of ${valid} caught${stale.length ? `, ${stale.length} stale` : ""})`,
    );
    return survived.length + stale.length === 0 ? 0 : 1;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) {
  if (Deno.args.includes("--quick")) Deno.exit(await quick());
  const args = [...Deno.args];
  let minutes = 60;
  const at = args.indexOf("--minutes");
  if (at !== -1) {
    minutes = Number(args[at + 1]);
    args.splice(at, 2);
    if (!(minutes > 0)) throw new Error("--minutes takes a positive number");
  }
  await install();
  await Deno.remove(REPORT).catch(() => {});
  // The test command runs `deno`: the one running this script.
  const path = `${dirname(Deno.execPath())}:${Deno.env.get("PATH") ?? ""}`;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", STRYKER, "run", join(DIR, "stryker.config.json"), ...args],
    cwd: ROOT,
    env: { PATH: path },
    stdin: "null",
  }).spawn();
  // Bounded: a run past --minutes is stopped (and prints no score).
  const timer = setTimeout(() => {
    console.error(`\nmutate: stopped after ${minutes} minutes; pass --mutate to measure less`);
    child.kill("SIGTERM");
  }, minutes * 60_000);
  const { code } = await child.status;
  clearTimeout(timer);
  let report: Report;
  try {
    report = JSON.parse(await Deno.readTextFile(REPORT));
  } catch {
    console.error(`mutate: StrykerJS wrote no report (exit ${code})`);
    Deno.exit(code || 1);
  }
  summarise(report);
  Deno.exit(code);
}
