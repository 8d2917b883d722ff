/**
 * The test command StrykerJS runs for each mutant (`commandRunner.command`):
 * the test files that exercise `lib/` over real sockets, stores and child
 * processes, stopping at the first failure (a killed mutant needs no more).
 * Left out: the browser tests (minutes each under a mutant), the compiled
 * binary, the chaos test (long SIGKILL loops), and the original-page test
 * (it reads `shared/` beside the repository, which a Stryker sandbox lacks).
 *
 * Exit code: deno test's (0 = every test passed = the mutant survived).
 *
 * @module
 */

const SKIP = /^(page_.*|browser|compile|chaos|legacy)_test\.ts$/;

/** The test files a mutant is run against, in a fixed order (fast, broad ones first). */
export function testFiles(dir = "tests"): string[] {
  const files: string[] = [];
  for (const entry of Deno.readDirSync(dir)) {
    if (entry.isFile && entry.name.endsWith("_test.ts") && !SKIP.test(entry.name)) {
      files.push(`${dir}/${entry.name}`);
    }
  }
  const first = ["hub_test.ts", "delivery_test.ts", "slots_test.ts", "protocol_test.ts"];
  const rank = (f: string) => {
    const i = first.indexOf(f.slice(dir.length + 1));
    return i === -1 ? first.length : i;
  };
  return files.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

if (import.meta.main) {
  const { code } = await new Deno.Command(Deno.execPath(), {
    args: ["test", "--no-check", "--allow-all", "--fail-fast", ...testFiles()],
    stdin: "null",
  }).spawn().status;
  Deno.exit(code);
}
