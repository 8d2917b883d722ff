/**
 * A throttle for frames that fan out: one sender's traffic must never make
 * someone else a slow consumer, so what every member receives is paced per
 * sender, not per receiver. {@linkcode Throttle} lets at most one event per
 * key through per interval and drops the rest (typing: "still typing" said
 * once is as good as a thousand times). Presence is batched instead, in
 * `presence_fanout.ts`.
 *
 * @module
 */

/** At most one event per key per interval; later ones within it are dropped. */
export class Throttle {
  #last = new Map<string, number>();
  #intervalMs: number;

  /** A throttle letting one event per key through every `intervalMs`. */
  constructor(intervalMs: number) {
    this.#intervalMs = intervalMs;
  }

  /** Whether an event for `key` may go now (and counts it if so). */
  allow(key: string, now: number = Date.now()): boolean {
    const last = this.#last.get(key);
    if (last !== undefined && now - last < this.#intervalMs) return false;
    // Forget keys whose interval is over, now and then, so the map stays bounded by activity.
    if (this.#last.size >= 10_000) {
      for (const [k, t] of this.#last) if (now - t >= this.#intervalMs) this.#last.delete(k);
    }
    this.#last.set(key, now);
    return true;
  }
}
