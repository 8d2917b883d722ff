/**
 * Counters for per-address and per-user limits: how many are open now, and
 * how many started in the current minute. In memory, per process: a limit
 * here protects this process.
 *
 * @module
 */

/** Counts open things (connections) per key. */
export class OpenCounter {
  #open = new Map<string, number>();

  /** How many are open for a key. */
  count(key: string): number {
    return this.#open.get(key) ?? 0;
  }

  /** Counts one more open; the returned function counts it closed (once, however often called). */
  open(key: string): () => void {
    this.#open.set(key, this.count(key) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const left = this.count(key) - 1;
      if (left > 0) this.#open.set(key, left);
      else this.#open.delete(key);
    };
  }
}

/** Counts events per key in fixed one-minute windows. */
export class MinuteCounter {
  #windows = new Map<string, { start: number; count: number }>();
  #limit: number;

  /** A counter allowing `limit` events per key per minute. */
  constructor(limit: number) {
    this.#limit = limit;
  }

  /** Counts an event; false when the key is over its limit this minute. */
  take(key: string, now = Date.now()): boolean {
    let window = this.#windows.get(key);
    if (!window || now - window.start >= 60_000) {
      // Drop stale windows now and then, so idle addresses do not pile up.
      if (this.#windows.size > 10_000) {
        for (const [k, w] of this.#windows) if (now - w.start >= 60_000) this.#windows.delete(k);
      }
      window = { start: now, count: 0 };
      this.#windows.set(key, window);
    }
    return ++window.count <= this.#limit;
  }
}
