/**
 * Pure helpers of identity: how names compare, how look-alikes are caught,
 * and how tokens and passwords are made and checked. No storage here.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { toPrototypes } from "./confusables.ts";
import { canonicalForm } from "./names.ts";

/**
 * The form two names are compared in: NFKC (so full-width `ａｌｉｃｅ` and
 * ligatures fold to plain letters) and case folded, so `Alice`, `ALICE` and
 * `ａｌｉｃｅ` are one name.
 */
export function canonicalName(name: string): string {
  return canonicalForm(name);
}

/**
 * Latin small capitals (`ᴀ`, `ʟ`, `ɢ`...) by the letter they are: Unicode's
 * confusables data lists them as prototypes of their own (only Cherokee
 * `ꭺ` maps to `ᴀ`), yet in a name list `ᴀʟɪᴄᴇ` reads as `alice`.
 */
const SMALL_CAPITALS: Readonly<Record<string, string>> = Object.fromEntries(
  [..."ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘꞯʀꜱᴛᴜᴠᴡʏᴢ"].map((c, i) => [c, "abcdefghijklmnopqrstuvwyz"[i]]),
);

/**
 * The "skeleton" of a name (UTS #39 §4, on Unicode's own confusables data:
 * see `confusables.ts`): two names with one skeleton look alike. It is the
 * standard skeleton (NFD, each character to its prototype, NFD), taken
 * twice, before and after NFKC and case folding, so that a look-alike of
 * either case or width is caught (`0` → `O` → `o`, Cherokee `Ꭺ` → `A` → `a`);
 * then Latin small capitals are read as their letters, combining marks are
 * dropped and `i`/`l` merged, which the standard leaves apart and a name list does not.
 */
export function skeleton(name: string): string {
  const once = toPrototypes(name.normalize("NFD")).normalize("NFKC").toLowerCase();
  const twice = toPrototypes(once.normalize("NFD")).normalize("NFD").toLowerCase();
  let out = "";
  for (const ch of twice) {
    if (/\p{M}/u.test(ch)) continue;
    out += SMALL_CAPITALS[ch] ?? ch;
  }
  return out.replaceAll("i", "l");
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

/**
 * What is stored for a token: its SHA-256, hex. A token has 256 bits, so no
 * slow hash is needed (and none is on a returning user's arrival). Computed
 * synchronously (`node:crypto`): `crypto.subtle.digest` goes to another
 * thread and back for a 43-byte input.
 */
export function hashToken(token: string): Promise<string> {
  return Promise.resolve(createHash("sha256").update(token).digest("hex"));
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
