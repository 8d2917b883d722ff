/**
 * Pure helpers of identity: how names compare, how look-alikes are caught,
 * and how tokens and passwords are made and checked. No storage here.
 *
 * @module
 */

/**
 * The form two names are compared in: NFKC (so full-width `ａｌｉｃｅ` and
 * ligatures fold to plain letters) and case folded, so `Alice`, `ALICE` and
 * `ａｌｉｃｅ` are one name.
 */
export function canonicalName(name: string): string {
  return name.normalize("NFKC").toLowerCase().normalize("NFKC");
}

// Letters of other scripts that look like Latin ones (after case folding),
// from Unicode's confusables data: the ones that make a believable fake name.
const CONFUSABLES: Record<string, string> = {
  // Cyrillic
  "а": "a",
  "в": "b",
  "с": "c",
  "ԁ": "d",
  "е": "e",
  "ё": "e",
  "һ": "h",
  "і": "i",
  "ї": "i",
  "ј": "j",
  "к": "k",
  "ӏ": "l",
  "м": "m",
  "н": "h",
  "о": "o",
  "р": "p",
  "ԛ": "q",
  "ѕ": "s",
  "т": "t",
  "у": "y",
  "ѡ": "w",
  "х": "x",
  "ү": "y",
  "г": "r",
  "ь": "b",
  // Greek
  "α": "a",
  "β": "b",
  "ε": "e",
  "η": "n",
  "ι": "i",
  "κ": "k",
  "ν": "v",
  "ο": "o",
  "ρ": "p",
  "τ": "t",
  "υ": "u",
  "χ": "x",
  "ω": "w",
  // Latin look-alikes and digits that pass for letters
  "ı": "i",
  "ɡ": "g",
  "ɑ": "a",
  "ℓ": "l",
  "0": "o",
  "1": "l",
  "|": "l",
};

/**
 * The "skeleton" of a name: its canonical form with look-alike letters
 * replaced by the Latin letter they imitate, `i`/`l` merged, and combining
 * marks dropped. Two different names with one skeleton are confusable.
 */
export function skeleton(name: string): string {
  let out = "";
  for (const ch of canonicalName(name).normalize("NFD")) {
    if (/\p{M}/u.test(ch)) continue;
    out += CONFUSABLES[ch] ?? ch;
  }
  return out.replaceAll("rn", "m").replaceAll("vv", "w").replaceAll("i", "l");
}

function base64url(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** A new secret token: 32 random bytes, base64url (43 characters). */
export function newToken(): string {
  return base64url(crypto.getRandomValues(new Uint8Array(32)));
}

/** Whether a string has the shape of a token (so junk is refused before hashing). */
export function isTokenShaped(token: string): boolean {
  return /^[A-Za-z0-9_-]{43}$/.test(token);
}

/** What is stored for a token: its SHA-256, hex. A token has 256 bits, so no slow hash is needed. */
export async function hashToken(token: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(token));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A stored password: PBKDF2-HMAC-SHA256 with a random salt. */
export interface PasswordHash {
  /** The KDF, for future upgrades. */
  kdf: "pbkdf2-sha256";
  /** Its iteration count. */
  iterations: number;
  /** 16 random bytes, base64url. */
  salt: string;
  /** 32 derived bytes, base64url. */
  hash: string;
}

/** OWASP's 2023 recommendation for PBKDF2-HMAC-SHA256. */
export const PBKDF2_ITERATIONS = 600_000;

async function derive(
  password: string,
  salt: Uint8Array<ArrayBuffer>,
  iterations: number,
): Promise<Uint8Array> {
  const key = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(password),
    "PBKDF2",
    false,
    [
      "deriveBits",
    ],
  );
  const bits = await crypto.subtle.deriveBits(
    { name: "PBKDF2", hash: "SHA-256", salt, iterations },
    key,
    256,
  );
  return new Uint8Array(bits);
}

/** Hashes a password with a fresh salt. */
export async function hashPassword(
  password: string,
  iterations = PBKDF2_ITERATIONS,
): Promise<PasswordHash> {
  const salt = crypto.getRandomValues(new Uint8Array(16));
  return {
    kdf: "pbkdf2-sha256",
    iterations,
    salt: base64url(salt),
    hash: base64url(await derive(password, salt, iterations)),
  };
}

function fromBase64url(s: string): Uint8Array<ArrayBuffer> {
  const bin = atob(s.replaceAll("-", "+").replaceAll("_", "/"));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

/** Checks a password against its stored hash, in time independent of where they differ. */
export async function verifyPassword(password: string, stored: PasswordHash): Promise<boolean> {
  const derived = await derive(password, fromBase64url(stored.salt), stored.iterations);
  const expected = fromBase64url(stored.hash);
  if (derived.length !== expected.length) return false;
  let diff = 0;
  for (let i = 0; i < derived.length; i++) diff |= derived[i] ^ expected[i];
  return diff === 0;
}
