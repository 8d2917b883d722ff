/**
 * Usernames and room names: one rule for both, checked where a name enters
 * (the URL path, a frame field) so everything inside holds a valid name.
 *
 * @module
 */

/** The longest name, in code points after NFC normalisation. */
export const MAX_NAME_LENGTH = 32;

// Letters and digits of any script (so 小明 and Zoë work), combining marks
// (NFC leaves some scripts decomposed), and the three separators `_ - .`.
const NAME_PATTERN = /^[\p{L}\p{N}\p{M}_.-]+$/u;

// The common name, checked first: ASCII letters, digits and separators, within the limit (NFC
// leaves it as it is, and its length is its code points). Every DM names one; the general check
// (NFC, counting code points, the Unicode pattern) was 3–4% of the server's time for a DM.
const ASCII_NAME = new RegExp(`^[A-Za-z0-9_.-]{1,${MAX_NAME_LENGTH}}$`);

/** The result of {@linkcode parseName}: a normalised name, or why not. */
export type NameResult = { ok: true; name: string } | { ok: false; reason: string };

/**
 * Validates and NFC-normalises a user or room name.
 *
 * @example
 * ```ts
 * parseName("小明"); // { ok: true, name: "小明" }
 * parseName("a b"); // { ok: false, reason: "…" }
 * ```
 */
export function parseName(raw: unknown): NameResult {
  if (typeof raw !== "string") return { ok: false, reason: "a name must be a string" };
  if (ASCII_NAME.test(raw) && raw !== "." && raw !== "..") return { ok: true, name: raw };
  const name = raw.normalize("NFC");
  const length = [...name].length;
  if (length === 0) return { ok: false, reason: "a name must not be empty" };
  if (length > MAX_NAME_LENGTH) {
    return { ok: false, reason: `a name has at most ${MAX_NAME_LENGTH} characters` };
  }
  if (!NAME_PATTERN.test(name)) {
    return {
      ok: false,
      reason: "a name may hold only letters, digits, '_', '-' and '.'",
    };
  }
  if (name === "." || name === "..") return { ok: false, reason: "'.' and '..' are not names" };
  return { ok: true, name };
}

/**
 * The form two names (user or room) are compared in: NFKC (so full-width
 * `ａｌｉｃｅ` and ligatures fold to plain letters) and case folded, so
 * `Alice`, `ALICE` and `ａｌｉｃｅ` are one name.
 */
export function canonicalForm(name: string): string {
  return name.normalize("NFKC").toLowerCase().normalize("NFKC");
}
