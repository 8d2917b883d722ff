/**
 * The known bugs of `tools/mutants.ts` stay applicable: `deno task mutate
 * --quick` reports a bug whose search text is gone as stale and measures
 * nothing with it, and 9 of 21 had gone stale unnoticed as the code moved.
 * This checks, in milliseconds, what that run would find stale.
 *
 * @module
 */

import assert from "node:assert/strict";
import { KNOWN_BUGS, staleness } from "../tools/mutants.ts";

const root = new URL("../", import.meta.url);

Deno.test("every known bug of tools/mutants.ts names code that is there, once, and test files that exist", async () => {
  const problems: string[] = [];
  for (const bug of KNOWN_BUGS) {
    const source = await Deno.readTextFile(new URL(bug.file, root)).catch(() => undefined);
    if (source === undefined) {
      problems.push(`${bug.name}: ${bug.file} is gone`);
      continue;
    }
    const why = staleness(bug, source);
    if (why) problems.push(`${bug.name}: ${why} in ${bug.file}`);
    for (const test of bug.tests) {
      const exists = await Deno.stat(new URL(test, root)).then(() => true, () => false);
      if (!exists) problems.push(`${bug.name}: ${test} does not exist`);
    }
  }
  assert.deepEqual(problems, []);
});
