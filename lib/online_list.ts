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

/** The first page last serialised, by identity: a {@linkcode Presence} returns it again while it lasts. */
let shared: { users: readonly string[]; json: string } | undefined;

/**
 * The bounded list of who is online for a `welcome`, as the JSON object
 * members of its {@linkcode WelcomeOnline} fields (`"online":[…],"onlineCount":…`,
 * no braces), to be spliced into the frame: with thousands online, the same
 * first page goes into most welcomes, and is serialised once while it lasts.
 */
export async function welcomeOnline(
  presence: Presence,
  options: WelcomeOnlineOptions,
): Promise<string> {
  const { limit } = options;
  const listed = new Set<string>();
  if (options.isOnline) {
    for (const user of options.visible ?? []) {
      if (listed.size >= limit) break;
      if (options.isOnline(user)) listed.add(user);
    }
  }
  const page = await presence.online({ limit });
  let online: readonly string[];
  let usersJson: string;
  // Everyone online up to `after` in name order is listed: a client pages on from there.
  let after: string | undefined;
  if (listed.size === 0) {
    // Nobody the user can see is online (a new user's case): the list is the page itself.
    online = page.users;
    after = online.at(-1);
    if (shared?.users !== online) shared = { users: online, json: JSON.stringify(online) };
    usersJson = shared.json;
  } else {
    for (const user of page.users) {
      if (listed.size >= limit && !listed.has(user)) break;
      listed.add(user);
      after = user;
    }
    online = [...listed];
    usersJson = JSON.stringify(online);
  }
  const total = Math.max(page.total, online.length);
  return `"online":${usersJson},"onlineCount":${total},"onlineMore":${total > online.length}` +
    (after === undefined ? "" : `,"onlineAfter":${JSON.stringify(after)}`);
}

/** The answer to `{"type":"online"}`: a page of who is online after `after`. */
export async function onlinePage(
  presence: Presence,
  query: { after?: string; limit: number },
): Promise<Extract<ServerFrame, { type: "online" }>> {
  const page = await presence.online(query);
  return { type: "online", users: page.users, more: page.more };
}
