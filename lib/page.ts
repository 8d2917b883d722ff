/**
 * The web page, embedded. Its files reach the server through the module
 * graph (text imports), never through reads at run time, so `deno run`, the
 * compiled binary and Deno Deploy serve the same bytes with no file access.
 *
 * @module
 */

import indexHtml from "../static/index.html" with { type: "text" };
import appJs from "../static/app.js" with { type: "text" };
import styleCss from "../static/style.css" with { type: "text" };

/** One embedded file. */
export interface Asset {
  /** The body, encoded once. */
  body: Uint8Array<ArrayBuffer>;
  /** Its media type. */
  contentType: string;
  /** A strong validator computed from the bytes. */
  etag: string;
}

// Scripts only from this origin (no inline script, no eval); sockets only to it.
const CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join("; ");

/** Headers every page response carries. */
export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  "content-security-policy": CSP,
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
};

async function asset(text: string, contentType: string): Promise<Asset> {
  const body = new TextEncoder().encode(text);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", body));
  const hex = Array.from(digest.subarray(0, 12), (b) => b.toString(16).padStart(2, "0")).join("");
  return { body, contentType, etag: `"${hex}"` };
}

/** The embedded files by URL path. */
export const ASSETS: ReadonlyMap<string, Asset> = new Map([
  ["/", await asset(indexHtml, "text/html; charset=utf-8")],
  ["/app.js", await asset(appJs, "text/javascript; charset=utf-8")],
  ["/style.css", await asset(styleCss, "text/css; charset=utf-8")],
]);

/**
 * Serves an embedded file for a GET or HEAD, with an ETag and a 304 for a
 * matching `If-None-Match`; undefined when the path is not an asset.
 */
export function serveAsset(req: Request, path: string): Response | undefined {
  const found = ASSETS.get(path === "/index.html" ? "/" : path);
  if (!found) return undefined;
  const headers = new Headers(SECURITY_HEADERS);
  headers.set("content-type", found.contentType);
  headers.set("etag", found.etag);
  // Revalidate every time: a cheap 304, and a new release shows at once.
  headers.set("cache-control", "no-cache");
  const tags = req.headers.get("if-none-match");
  if (tags && tags.split(",").some((t) => t.trim() === found.etag || t.trim() === "*")) {
    return new Response(null, { status: 304, headers });
  }
  headers.set("content-length", String(found.body.byteLength));
  return new Response(req.method === "HEAD" ? null : found.body, { headers });
}
