/**
 * `--help` as a newcomer reads it: every flag's environment variable in one
 * column however long the flag, meanings within 80 columns, and no
 * `(default: )` for a setting whose default is empty.
 */

import assert from "node:assert/strict";
import { DEFAULT_SETTINGS, helpText } from "../lib/settings.ts";

Deno.test("--help aligns the environment column for the longest flags, fits 80 columns and shows no empty default", () => {
  const lines = helpText().split("\n");
  const flagRows = lines.filter((l) => /^ {2}--\S/.test(l) && !l.startsWith("  --help"));
  assert.ok(flagRows.length >= 16, lines.join("\n"));
  const columns = new Set(flagRows.map((l) => l.search(/ [A-Z][A-Z_]+$/)));
  assert.equal(columns.size, 1, `one environment column:\n${flagRows.join("\n")}`);
  const [column] = columns;
  for (const row of flagRows) {
    // At least two spaces between the flag and its variable: they never run into each other.
    assert.match(row.slice(0, column + 1), /\S {2,}$/, row);
  }
  assert.ok(flagRows.some((l) => l.includes("--max-connections-per-user")));
  for (const line of lines) assert.ok(line.length <= 80, `over 80 columns: ${line}`);
  assert.doesNotMatch(helpText(), /\(default: \)/);
  assert.equal(DEFAULT_SETTINGS.allowOrigin, "", "the case this guards: an empty default");
  assert.match(helpText(), /\(default: 8000\)/);
});
