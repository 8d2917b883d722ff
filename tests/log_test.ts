import assert from "node:assert/strict";
import { describe, LogOnce } from "../lib/log.ts";

Deno.test("a cause is logged once per interval however often it happens, with the count of repeats after", () => {
  const lines: string[] = [];
  const original = console.error;
  console.error = (line: string) => lines.push(line);
  try {
    const log = new LogOnce(60_000);
    for (let i = 0; i < 1000; i++) log.error("store read failed", new Error("disk"));
    log.error("another cause");
    assert.deepEqual(lines, ["store read failed: Error: disk", "another cause"]);
    const soon = new LogOnce(0);
    soon.error("x");
    soon.error("x");
    assert.match(lines.at(-1)!, /^x/);
  } finally {
    console.error = original;
  }
});

Deno.test("an error is described by name and message only, cut short: no stack, no payload", () => {
  const error = new Error("boom");
  (error as Error & { frame: string }).frame = '{"password":"hunter2hunter2"}';
  assert.equal(describe(error), "Error: boom");
  assert.equal(describe({ password: "hunter2hunter2" }), "object");
  assert.ok(describe(new Error("y".repeat(1000))).length <= 300);
});
