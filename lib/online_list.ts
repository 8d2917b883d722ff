/**
 * Who a client is told is online, bounded: `welcome` lists at most
 * `--welcome-online` users (those the user can see first: DM partners and
 * room-mates, then the others in name order) with the total count, and the
 * client pages through the rest with `{"type":"online", after, limit}`.
 * Either costs one bounded read of the {@linkcode Presence}, however many
 * are online.
 *
 * @module
 */

import type { Presence } from "./presence.ts";
import type { ServerFrame } from "./protocol.ts";

/** The `online` part of a `welcome`. */
export type WelcomeOnline = Pick<
  Extract<ServerFrame, { type: "welcome" }>,
  "online" | "onlineCount" | "onlineMore" | "onlineAfter"
>;

/** Options of {@linkcode welcomeOnline}. */
export interface WelcomeOnlineOptions {
  /** The most users listed (`--welcome-online`). */
  limit: number;
  /**
   * Users the client can see, listed first if they are online, in this
   * order; they are read lazily and only until `limit` are found.
   */
  visible?: Iterable<string>;
  /** Whether a user of `visible` is online, answered without a query (a connection here). */
  isOnline?: (user: string) => boolean;
}

/** The bounded list of who is online for a `welcome`. */
export async function welcomeOnline(
  presence: Presence,
  options: WelcomeOnlineOptions,
): Promise<WelcomeOnline> {
  const { limit } = options;
  const listed = new Set<string>();
  if (options.isOnline) {
    for (const user of options.visible ?? []) {
      if (listed.size >= limit) break;
      if (options.isOnline(user)) listed.add(user);
    }
  }
  const page = await presence.online({ limit });
  // Everyone online up to `after` in name order is listed: a client pages on from there.
  let after: string | undefined;
  for (const user of page.users) {
    if (listed.size >= limit && !listed.has(user)) break;
    listed.add(user);
    after = user;
  }
  const total = Math.max(page.total, listed.size);
  const out: WelcomeOnline = {
    online: [...listed],
    onlineCount: total,
    onlineMore: total > listed.size,
  };
  if (after !== undefined) out.onlineAfter = after;
  return out;
}

/** The answer to `{"type":"online"}`: a page of who is online after `after`. */
export async function onlinePage(
  presence: Presence,
  query: { after?: string; limit: number },
): Promise<Extract<ServerFrame, { type: "online" }>> {
  const page = await presence.online(query);
  return { type: "online", users: page.users, more: page.more };
}
