/**
 * The addresses to print when the server starts: where people can open the
 * page. Listening on every address (`0.0.0.0` or `::`), that is `localhost`
 * on this machine and each of its network addresses for the others.
 *
 * @module
 */

/** A network interface's address, as `Deno.networkInterfaces()` lists it. */
export type InterfaceAddress = Pick<Deno.NetworkInterfaceInfo, "family" | "address">;

/** Whether `hostname` means every address of the machine. */
export function isWildcard(hostname: string): boolean {
  return hostname === "0.0.0.0" || hostname === "::" || hostname === "[::]";
}

/** `http://host:port/`, with an IPv6 host in brackets. */
export function httpUrl(host: string, port: number): string {
  return `http://${host.includes(":") ? `[${host}]` : host}:${port}/`;
}

/**
 * The URLs people can use for a server bound to `addr`: `localhost` first,
 * then (for a wildcard address) each non-loopback address of the machine
 * (IPv4, and IPv6 global ones when bound to `::`), without link-local ones.
 */
export function reachableUrls(
  addr: { hostname: string; port: number },
  interfaces: readonly InterfaceAddress[],
): string[] {
  if (!isWildcard(addr.hostname)) return [httpUrl(addr.hostname, addr.port)];
  const v6 = addr.hostname !== "0.0.0.0";
  const others = interfaces.filter((i) =>
    i.family === "IPv4"
      ? !i.address.startsWith("127.") && !i.address.startsWith("169.254.")
      : v6 && i.address !== "::1" && !/^fe80:/i.test(i.address)
  ).map((i) => httpUrl(i.address, addr.port));
  return [httpUrl("localhost", addr.port), ...new Set(others)];
}

/**
 * The machine's addresses, or undefined without `--allow-sys=networkInterfaces`
 * (or where the platform has none to tell).
 */
export function localInterfaces(): InterfaceAddress[] | undefined {
  try {
    return Deno.networkInterfaces();
  } catch {
    return undefined;
  }
}
