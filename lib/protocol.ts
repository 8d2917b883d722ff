/**
 * The wire protocol: the frames of the typed `chat.v1` subprotocol, the
 * frames of the original (legacy) page, and the one parser that turns text
 * from a socket into a typed frame. Everything past {@linkcode parseClientFrame}
 * is typed; nothing else inspects raw JSON.
 *
 * @module
 */

import { canonicalForm, MAX_NAME_LENGTH, parseName } from "./names.ts";

/** The subprotocol a typed client asks for in `Sec-WebSocket-Protocol`. */
export const SUBPROTOCOL = "chat.v1";

/** The room every connection belongs to, legacy ones included. */
export const LOBBY = "lobby";

/**
 * Why a handshake's name was refused: the code that starts the close reason
 * of a 4003 (`<code>: <English words>`), which clients translate.
 * - `lookalike`: too much like another registered name
 * - `taken`: claimed, with a password (log in with it)
 * - `taken_no_password`: claimed, no password (only its own devices can use it)
 * - `bad_token`: the token presented is not (or no longer) one of this name's
 * - `claimed_legacy`: the original page asked for a claimed name
 * - `just_claimed`: someone claimed it at the same moment
 */
export const REFUSAL_CODES = [
  "lookalike",
  "taken",
  "taken_no_password",
  "bad_token",
  "claimed_legacy",
  "just_claimed",
] as const;

/** One of {@linkcode REFUSAL_CODES}. */
export type RefusalCode = typeof REFUSAL_CODES[number];

/** The name legacy error frames carry in `from_user`; never a valid username. */
export const SYSTEM_SENDER = "*";

/** A conversation as a client names it: a room, or a DM with another user. */
export type Target = { room: string; to?: undefined } | { to: string; room?: undefined };

/** A conversation as `history` and `read` name it (`with` is the other party of a DM). */
export type ConversationRef = { room: string; with?: undefined } | {
  with: string;
  room?: undefined;
};

/** Just the conversation of anything that names one (a frame, an event, a resume point). */
export function refOf(x: ConversationRef): ConversationRef {
  return x.room !== undefined ? { room: x.room } : { with: x.with };
}

/** A message as the server stores and sends it. */
export interface ChatMessage {
  /** Position in its conversation: strictly increasing from 1, never reused. */
  id: number;
  /** The room, for a room message. */
  room?: string;
  /** The recipient, for a DM. */
  to?: string;
  /** The sender; always set by the server. */
  from: string;
  /** The text, at most `maxTextLength` characters. */
  text: string;
  /** When the server accepted it, in milliseconds since the epoch. */
  ts: number;
  /** The sender's own id for the message, echoed so it can match its acknowledgement. */
  cid?: string;
}

/** Frames a `chat.v1` client sends. */
export type ClientFrame =
  | { type: "join"; room: string }
  | { type: "leave"; room: string }
  | ({ type: "send"; text: string; cid?: string } & Target)
  | ({ type: "history"; before?: number; after?: number; limit?: number } & ConversationRef)
  | { type: "resume"; conversations: ResumePoint[] }
  | ({ type: "typing" } & Target)
  | ({ type: "read"; id: number } & ConversationRef)
  | { type: "create"; room: string; private: boolean }
  | { type: "invite"; room: string; user: string }
  | { type: "rooms" }
  | { type: "set_password"; password: string }
  | { type: "logout"; everywhere: boolean }
  | { type: "online"; after?: string; limit: number }
  | { type: "dms"; after?: string; limit: number }
  | { type: "ping" };

/** Where a client stands in one conversation: it has every message up to `after`. */
export type ResumePoint = ConversationRef & { after: number };

/** What `welcome` says about one conversation the user takes part in. */
export type ConversationSummary = ConversationRef & {
  /** The id of its newest message (0 when empty). */
  last: number;
  /** The id of the newest message this user has read. */
  read: number;
  /** How many messages came after `read`. */
  unread: number;
};

/** Error codes of `{"type":"error"}` frames. */
export type ErrorCode =
  | "bad_frame"
  | "unknown_type"
  | "bad_name"
  | "too_large"
  | "unknown_user"
  | "not_member"
  | "store_failed"
  | "binary_unsupported"
  | "forbidden"
  | "room_exists"
  | "too_many_rooms"
  | "rate_limited";

/** Frames the server sends to a `chat.v1` client. */
export type ServerFrame =
  | {
    type: "welcome";
    user: string;
    rooms: string[];
    /**
     * Who is online, at most `--welcome-online` of them: first those the user
     * can see (DM partners and room-mates), then the others in name order.
     */
    online: readonly string[];
    /** How many users are online in all (`online` may list fewer). */
    onlineCount: number;
    /** Whether more are online than `online` lists: page through them with `{"type":"online"}`. */
    onlineMore: boolean;
    /**
     * Where paging by name goes on from: every user online up to this name
     * is in `online` (absent: page from the first).
     */
    onlineAfter?: string;
    /** The rooms', then the first `--welcome-dms` DMs in partner order (the store's order of names). */
    conversations: ConversationSummary[];
    /** Whether the user has more DMs than listed: page on with `{"type":"dms","after":dmsAfter}`. */
    dmsMore: boolean;
    /** The last DM partner listed, when more follow. */
    dmsAfter?: string;
    /** The user's private rooms (a subset of `rooms`). */
    privateRooms: string[];
    /** Invitations to private rooms not yet accepted. */
    invites: Array<{ room: string; by: string }>;
    /** A token issued to this connection because it just claimed the name; keep it. */
    token?: string;
    account: { password: boolean };
    limits: { maxTextLength: number; maxFrameBytes: number; replayLimit: number };
  }
  | { type: "invited"; room: string; by: string }
  | { type: "rooms"; rooms: Array<{ room: string; members: number }> }
  | { type: "password_set" }
  | ({ type: "message" } & ChatMessage)
  | { type: "joined"; room: string; user: string }
  | { type: "left"; room: string; user: string }
  | ({ type: "history"; messages: ChatMessage[]; more: boolean } & ConversationRef)
  | ({ type: "typing"; from: string } & Target)
  | ({ type: "read"; id: number } & ConversationRef)
  | ({ type: "resumed"; after: number; from: number; to: number; more: boolean } & ConversationRef)
  | {
    /**
     * Presence changes since the previous one, at most one such frame per
     * `--fanout-interval`: each user appears once, in the state they ended
     * the interval in, and never the reader's own user.
     */
    type: "presence";
    /** Users who came online. */
    online: string[];
    /** Users who went offline. */
    offline: string[];
  }
  /** A page of who is online, in name order, after the `after` the client asked from. */
  | { type: "online"; users: readonly string[]; more: boolean }
  /** A page of the user's DMs, in partner order, after the `after` the client asked from. */
  | { type: "dms"; conversations: ConversationSummary[]; more: boolean }
  | { type: "pong" }
  | {
    type: "error";
    code: ErrorCode;
    message: string;
    /** The `cid` of the refused send. */
    ref?: string;
    /** The request refused, when it was understood: its type and target. */
    request?: { type: ClientFrame["type"]; room?: string; to?: string; with?: string };
    /** With `rate_limited`: milliseconds until a retry can succeed. */
    retry_after?: number;
  };

/** A frame from the original page: a DM when `to_user` is set, a lobby message otherwise. */
export interface LegacyFrame {
  to_user?: string;
  msg: string;
}

/** Limits the parser enforces. */
export interface ParseLimits {
  /** The longest `text`/`msg`, in UTF-16 code units (what a browser's `maxlength` counts). */
  maxTextLength: number;
}

/** A parse result: a frame, or the error frame to answer with. */
export type Parsed<T> = { ok: true; frame: T } | {
  ok: false;
  error: Extract<ServerFrame, { type: "error" }>;
};

/** The most conversations one `resume` frame may name. */
export const MAX_RESUME_CONVERSATIONS = 1000;

/** Password length bounds, in characters. */
export const PASSWORD_MIN = 8, PASSWORD_MAX = 200;

/**
 * The most changes one `presence` frame carries: beyond, the rest (latest
 * state per user still) wait for the next interval, oldest first.
 */
export const PRESENCE_BATCH_MAX = 500;

/** The default and the largest page of `{"type":"online"}`. */
export const ONLINE_PAGE_DEFAULT = 200, ONLINE_PAGE_MAX = 1000;
/** The default and the largest page of `{"type":"dms"}`. */
export const DMS_PAGE_DEFAULT = 200, DMS_PAGE_MAX = 500;

/** The longest `cid` a client may attach. */
export const MAX_CID_LENGTH = 64;
/** The default and the largest page of `history`. */
export const HISTORY_DEFAULT = 50, HISTORY_MAX = 200;

type Json = Record<string, unknown>;

function fail<T>(code: ErrorCode, message: string, ref?: unknown): Parsed<T> {
  const error: Extract<ServerFrame, { type: "error" }> = { type: "error", code, message };
  if (typeof ref === "string" && ref.length <= MAX_CID_LENGTH) error.ref = ref;
  return { ok: false, error };
}

function parseObject(text: string): Json | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
  return value as Json;
}

// Own properties only: a frame's `__proto__` or `constructor` key is data, never inherited.
function own(obj: Json, key: string): unknown {
  return Object.hasOwn(obj, key) ? obj[key] : undefined;
}

type FieldResult<T> = { ok: true; value: T } | { ok: false; message: string };

function name(obj: Json, key: string): FieldResult<string> {
  const result = parseName(own(obj, key));
  return result.ok
    ? { ok: true, value: result.name }
    : { ok: false, message: `${key}: ${result.reason}` };
}

/**
 * A room name, in its canonical form (NFKC, case folded): `VAULT` and
 * `ｖａｕｌｔ` are the room `vault`, as `ALICE` is the user `alice`.
 */
function roomName(obj: Json, key: string): FieldResult<string> {
  const r = name(obj, key);
  return r.ok ? { ok: true, value: canonicalForm(r.value) } : r;
}

function target(obj: Json, roomKey: "room", userKey: "to" | "with"):
  | FieldResult<{ room: string } | { user: string }>
  | undefined {
  const hasRoom = own(obj, roomKey) !== undefined;
  const hasUser = own(obj, userKey) !== undefined;
  if (hasRoom === hasUser) return undefined;
  if (hasRoom) {
    const r = roomName(obj, roomKey);
    return r.ok ? { ok: true, value: { room: r.value } } : r;
  }
  const u = name(obj, userKey);
  return u.ok ? { ok: true, value: { user: u.value } } : u;
}

function text(obj: Json, key: string, limits: ParseLimits): FieldResult<string> | "too_large" {
  const value = own(obj, key);
  if (typeof value !== "string") return { ok: false, message: `${key} must be a string` };
  if (value.length > limits.maxTextLength) return "too_large";
  if (value.trim().length === 0) return { ok: false, message: `${key} must not be blank` };
  return { ok: true, value };
}

function conversationRef(obj: Json, type: string): Parsed<ConversationRef> {
  const t = target(obj, "room", "with");
  if (!t) return fail("bad_frame", `${type} needs exactly one of room or with`);
  if (!t.ok) return fail("bad_name", t.message);
  return { ok: true, frame: "room" in t.value ? { room: t.value.room } : { with: t.value.user } };
}

function positiveInt(value: unknown): boolean {
  return typeof value === "number" && Number.isSafeInteger(value) && value > 0;
}

/**
 * Parses one text frame from a `chat.v1` client. Never throws: anything that
 * is not a valid frame becomes the error frame to send back.
 */
export function parseClientFrame(raw: string, limits: ParseLimits): Parsed<ClientFrame> {
  const obj = parseObject(raw);
  if (!obj) return fail("bad_frame", "a frame must be a JSON object");
  const type = own(obj, "type");
  const cid = own(obj, "cid");
  switch (type) {
    case "ping":
    case "rooms":
      return { ok: true, frame: { type } };
    case "create": {
      const room = roomName(obj, "room");
      if (!room.ok) return fail("bad_name", room.message);
      const priv = own(obj, "private");
      if (priv !== undefined && typeof priv !== "boolean") {
        return fail("bad_frame", "private must be true or false");
      }
      return { ok: true, frame: { type, room: room.value, private: priv === true } };
    }
    case "invite": {
      const room = roomName(obj, "room");
      if (!room.ok) return fail("bad_name", room.message);
      const user = name(obj, "user");
      if (!user.ok) return fail("bad_name", user.message);
      return { ok: true, frame: { type, room: room.value, user: user.value } };
    }
    case "set_password": {
      const password = own(obj, "password");
      if (
        typeof password !== "string" || password.length < PASSWORD_MIN ||
        password.length > PASSWORD_MAX
      ) {
        return fail(
          "bad_frame",
          `password must be a string of ${PASSWORD_MIN} to ${PASSWORD_MAX} characters`,
        );
      }
      return { ok: true, frame: { type, password } };
    }
    case "logout": {
      const everywhere = own(obj, "everywhere");
      if (everywhere !== undefined && typeof everywhere !== "boolean") {
        return fail("bad_frame", "everywhere must be true or false");
      }
      return { ok: true, frame: { type, everywhere: everywhere === true } };
    }
    case "online":
    case "dms": {
      const after = own(obj, "after");
      // A cursor, compared by code units: any string as long as a name may be (in UTF-16).
      if (
        after !== undefined && (typeof after !== "string" || after.length > 2 * MAX_NAME_LENGTH)
      ) {
        return fail("bad_frame", `after must be a name (at most ${MAX_NAME_LENGTH} characters)`);
      }
      const limit = own(obj, "limit");
      if (limit !== undefined && !positiveInt(limit)) {
        return fail("bad_frame", "limit must be a positive integer");
      }
      const [byDefault, most] = type === "online"
        ? [ONLINE_PAGE_DEFAULT, ONLINE_PAGE_MAX]
        : [DMS_PAGE_DEFAULT, DMS_PAGE_MAX];
      const frame: Extract<ClientFrame, { type: "online" | "dms" }> = {
        type,
        limit: Math.min((limit as number | undefined) ?? byDefault, most),
      };
      if (after !== undefined) frame.after = after as string;
      return { ok: true, frame };
    }
    case "join":
    case "leave": {
      const room = roomName(obj, "room");
      if (!room.ok) return fail("bad_name", room.message);
      return { ok: true, frame: { type, room: room.value } };
    }
    case "send":
    case "typing": {
      const t = target(obj, "room", "to");
      if (!t) return fail("bad_frame", `${type} needs exactly one of room or to`, cid);
      if (!t.ok) return fail("bad_name", t.message, cid);
      const where: Target = "room" in t.value ? { room: t.value.room } : { to: t.value.user };
      if (type === "typing") return { ok: true, frame: { type, ...where } };
      if (cid !== undefined && (typeof cid !== "string" || cid.length > MAX_CID_LENGTH)) {
        return fail("bad_frame", `cid must be a string of at most ${MAX_CID_LENGTH} characters`);
      }
      const body = text(obj, "text", limits);
      if (body === "too_large") {
        return fail("too_large", `text has at most ${limits.maxTextLength} characters`, cid);
      }
      if (!body.ok) return fail("bad_frame", body.message, cid);
      const frame: ClientFrame = { type, ...where, text: body.value };
      if (typeof cid === "string") frame.cid = cid;
      return { ok: true, frame };
    }
    case "history":
    case "read": {
      const where = conversationRef(obj, type);
      if (!where.ok) return where;
      if (type === "read") {
        const id = own(obj, "id");
        if (!positiveInt(id)) return fail("bad_frame", "id must be a positive integer");
        return { ok: true, frame: { type, ...where.frame, id: id as number } };
      }
      const frame: ClientFrame = { type, ...where.frame };
      for (const key of ["before", "after"] as const) {
        const value = own(obj, key);
        if (value === undefined) continue;
        if (!positiveInt(value) && value !== 0) {
          return fail("bad_frame", `${key} must be a whole number`);
        }
        frame[key] = value as number;
      }
      const limit = own(obj, "limit");
      if (limit !== undefined && !positiveInt(limit)) {
        return fail("bad_frame", "limit must be a positive integer");
      }
      frame.limit = Math.min((limit as number | undefined) ?? HISTORY_DEFAULT, HISTORY_MAX);
      return { ok: true, frame };
    }
    case "resume": {
      const list = own(obj, "conversations");
      if (!Array.isArray(list) || list.length > MAX_RESUME_CONVERSATIONS) {
        return fail(
          "bad_frame",
          `conversations must be a list of at most ${MAX_RESUME_CONVERSATIONS} {room|with, after}`,
        );
      }
      const conversations: ResumePoint[] = [];
      for (const item of list) {
        if (typeof item !== "object" || item === null || Array.isArray(item)) {
          return fail("bad_frame", "each conversation must be an object {room|with, after}");
        }
        const where = conversationRef(item as Json, type);
        if (!where.ok) return where;
        const after = own(item as Json, "after");
        if (!positiveInt(after) && after !== 0) {
          return fail("bad_frame", "after must be a whole number");
        }
        conversations.push({ ...where.frame, after: after as number });
      }
      return { ok: true, frame: { type, conversations } };
    }
    default:
      if (typeof type !== "string") return fail("bad_frame", "a frame needs a string type");
      return fail("unknown_type", `unknown frame type: ${type.slice(0, 40)}`);
  }
}

/** Parses one text frame from a client of the original page. Never throws. */
export function parseLegacyFrame(raw: string, limits: ParseLimits): Parsed<LegacyFrame> {
  const obj = parseObject(raw);
  if (!obj) return fail("bad_frame", "a frame must be a JSON object");
  const body = text(obj, "msg", limits);
  if (body === "too_large") {
    return fail("too_large", `msg has at most ${limits.maxTextLength} characters`);
  }
  if (!body.ok) return fail("bad_frame", body.message);
  const to = own(obj, "to_user");
  // The original page sends its input box as is: an empty recipient means "everyone".
  if (to === undefined || to === null || to === "") return { ok: true, frame: { msg: body.value } };
  const user = name(obj, "to_user");
  if (!user.ok) return fail("bad_name", user.message);
  return { ok: true, frame: { to_user: user.value, msg: body.value } };
}

/** The shape a legacy client receives a message in (the original's object plus extras). */
export function toLegacy(message: ChatMessage): Record<string, unknown> {
  const out: Record<string, unknown> = {
    from_user: message.from,
    msg: message.text,
    id: message.id,
    ts: message.ts,
  };
  if (message.to !== undefined) out.to_user = message.to;
  else out.room = message.room;
  return out;
}

/** The legacy rendering of an error: the original page shows `from_user:msg`. */
export function toLegacyError(error: Extract<ServerFrame, { type: "error" }>): string {
  return JSON.stringify({
    type: "error",
    code: error.code,
    message: error.message,
    from_user: SYSTEM_SENDER,
    msg: `⚠ ${error.message}`,
  });
}
