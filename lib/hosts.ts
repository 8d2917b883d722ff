/**
 * Which host names the server answers as itself, against DNS rebinding: a
 * page on `evil.example` whose name is made to resolve to this server's
 * address is same-origin with it as far as the browser knows (its Origin
 * and the Host header agree), so the Origin check alone lets it in. Sockets
 * and logins are therefore served only under a Host that is the server's
 * own: an IP literal, `localhost` (and `*.localhost`), or a name given by
 * `--public-host` (or the host of an `--allow-origin`). Any other name is
 * refused with 421 Misdirected Request.
 *
 * @module
 */

/** Decides whether a request's Host is one the server answers to. */
export function hostPolicy(publicHosts: string, allowOrigins: string): (host: string) => boolean {
  const names = new Set<string>();
  for (const h of publicHosts.split(",")) if (h.trim()) names.add(h.trim().toLowerCase());
  for (const o of allowOrigins.split(",")) {
    try {
      if (o.trim()) names.add(new URL(o.trim()).hostname.toLowerCase());
    } catch {
      // Not a URL: matches nothing.
    }
  }
  return (host) => {
    const name = hostnameOf(host);
    if (name === undefined) return false;
    return names.has(name) || name === "localhost" || name.endsWith(".localhost") ||
      isIpLiteral(name);
  };
}

/** The host name of a Host header (`name:port`, `[v6]:port`), lower case; undefined if malformed. */
function hostnameOf(host: string): string | undefined {
  try {
    return new URL(`http://${host}/`).hostname.toLowerCase();
  } catch {
    return undefined;
  }
}

function isIpLiteral(name: string): boolean {
  // URL parsing has normalised IPv4 (incl. 0x7f.1 and friends) to dotted decimal and IPv6 to [..].
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(name) || name.startsWith("[");
}
