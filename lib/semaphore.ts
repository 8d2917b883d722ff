/**
 * A counting semaphore with a bounded queue, for work that costs real CPU
 * (password hashing): at most `max` run at once, at most `queue` wait, and
 * beyond that the caller is told at once to come back later.
 *
 * @module
 */

/** Raised by {@linkcode Semaphore.run} when both the slots and the queue are full. */
export class BusyError extends Error {
  override name = "BusyError";
}

/** At most `max` tasks at once, `queue` more waiting. */
export class Semaphore {
  #running = 0;
  #waiting: Array<() => void> = [];
  #max: number;
  #queue: number;

  /** A semaphore of `max` slots and a queue of `queue`. */
  constructor(max: number, queue: number) {
    this.#max = max;
    this.#queue = queue;
  }

  /** Tasks running now. */
  get running(): number {
    return this.#running;
  }

  /** Runs `task` when a slot is free; rejects with {@linkcode BusyError} if the queue is full. */
  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.#running >= this.#max) {
      if (this.#waiting.length >= this.#queue) throw new BusyError("busy; try again shortly");
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    } else {
      this.#running++;
    }
    try {
      return await task();
    } finally {
      // The slot passes straight to the next waiter, or is freed.
      const next = this.#waiting.shift();
      if (next) next();
      else this.#running--;
    }
  }
}
