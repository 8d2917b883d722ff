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
  #frame: ServerFrame;
  #legacy: () => string | undefined;
  #v1?: string;
  #legacyText?: string | null;

  /** A frame, and how to render it for legacy clients (if they get it). */
  constructor(frame: ServerFrame, legacy: () => string | undefined = () => undefined) {
    this.#frame = frame;
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
