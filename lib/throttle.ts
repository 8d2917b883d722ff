/**
 * Throttles for frames that fan out: one sender's traffic must never make
 * someone else a slow consumer, so what every member receives is paced per
 * sender, not per receiver.
 *
 * - {@linkcode Throttle}: at most one event per key per interval; the rest
 *   are dropped (typing: "still typing" said once is as good as a thousand times).
 * - {@linkcode Coalescer}: at most one event per key per interval, the latest
 *   state delivered at the end of the interval (presence: the final
 *   online/offline state always arrives, the flapping in between does not).
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

/**
 * Delivers the latest value per key at most once per interval: the first
 * at once, later ones at the end of the window (only if it changed from what
 * was delivered).
 */
export class Coalescer<T> implements Disposable {
  #state = new Map<string, { sent: T; pending?: T; timer?: ReturnType<typeof setTimeout> }>();
  #intervalMs: number;
  #deliver: (key: string, value: T) => void;

  /** A coalescer calling `deliver` at most once per key every `intervalMs`. */
  constructor(intervalMs: number, deliver: (key: string, value: T) => void) {
    this.#intervalMs = intervalMs;
    this.#deliver = deliver;
  }

  /** Offers a new value for a key. */
  push(key: string, value: T): void {
    const state = this.#state.get(key);
    if (!state) {
      this.#send(key, value);
      return;
    }
    state.pending = value;
  }

  #send(key: string, value: T): void {
    this.#deliver(key, value);
    const state: { sent: T; pending?: T; timer?: ReturnType<typeof setTimeout> } = { sent: value };
    state.timer = setTimeout(() => {
      this.#state.delete(key);
      if (state.pending !== undefined && state.pending !== state.sent) {
        this.#send(key, state.pending);
      }
    }, this.#intervalMs);
    this.#state.set(key, state);
  }

  /** Stops the timers, dropping what is pending (for a shutdown). */
  [Symbol.dispose](): void {
    for (const state of this.#state.values()) clearTimeout(state.timer);
    this.#state.clear();
  }
}
