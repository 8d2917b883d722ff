/**
 * Frames on their way out: encoded once however many recipients they have,
 * and error frames built one way everywhere.
 *
 * @module
 */

import type { ErrorCode, ServerFrame } from "./protocol.ts";

/** An error frame. */
export type ErrorFrame = Extract<ServerFrame, { type: "error" }>;

/** What an error frame may say besides its code: a message, the cid refused, the request. */
export interface ErrorDetail {
  message: string;
  ref?: string;
  request?: ErrorFrame["request"];
}

/** Builds an error frame. */
export function errorFrame(code: ErrorCode, detail: ErrorDetail): ErrorFrame {
  const frame: ErrorFrame = { type: "error", code, message: detail.message };
  if (detail.ref !== undefined) frame.ref = detail.ref;
  if (detail.request !== undefined) frame.request = detail.request;
  return frame;
}

/** One frame encoded lazily, once per shape, however many recipients it has. */
export class Outgoing {
  #frame: ServerFrame | undefined;
  #legacy: () => string | undefined;
  #v1?: string;
  #legacyText?: string | null;

  /**
   * A frame, or its `chat.v1` text already encoded (the JSON of a
   * {@linkcode ServerFrame}), and how to render it for legacy clients (if
   * they get it).
   */
  constructor(frame: ServerFrame | string, legacy: () => string | undefined = () => undefined) {
    if (typeof frame === "string") this.#v1 = frame;
    else this.#frame = frame;
    this.#legacy = legacy;
  }

  /** The frame as `chat.v1` clients get it. */
  get v1(): string {
    return this.#v1 ??= JSON.stringify(this.#frame);
  }

  /** The frame as legacy clients get it, if they get it at all. */
  get legacy(): string | undefined {
    if (this.#legacyText === undefined) this.#legacyText = this.#legacy() ?? null;
    return this.#legacyText ?? undefined;
  }
}

/**
 * `json` (the encoding of an object whose arrays hold strings) with the
 * array element `item` taken out, with its comma; undefined if no array
 * holds it. What `JSON.stringify` gives for the object without that element,
 * by copying the text instead of encoding it again: the element is the
 * encoded string with `[` or `,` before it and `,` or `]` after it, which
 * nothing inside a string can look like (a quote in a string is escaped, so
 * it is never right after a `[` or a `,`).
 */
export function withoutElement(json: string, item: string): string | undefined {
  const quoted = JSON.stringify(item);
  for (let at = json.indexOf(quoted); at !== -1; at = json.indexOf(quoted, at + 1)) {
    const before = json[at - 1], after = json[at + quoted.length];
    if ((before !== "[" && before !== ",") || (after !== "," && after !== "]")) continue;
    const end = at + quoted.length;
    // `[x,` and `,x,` lose the element and the comma after it; `,x]` the one before; `[x]` none.
    if (after === ",") return json.slice(0, at) + json.slice(end + 1);
    if (before === ",") return json.slice(0, at - 1) + json.slice(end);
    return json.slice(0, at) + json.slice(end);
  }
  return undefined;
}
