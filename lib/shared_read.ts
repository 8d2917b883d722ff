/**
 * A read that everyone asking for it at about the same time shares, without
 * anyone getting an answer older than their question: one read runs at a
 * time, and whoever asks while it runs waits for the next one, which starts
 * when it ends and which all of them share. So a burst of N askers costs
 * two reads, not N, and each answer was read after its asker asked.
 *
 * @module
 */

/** A shared read of `read()`; see the module doc. */
export class SharedRead<T> {
  #read: () => Promise<T>;
  /** The read under way (sent: those who ask now wait for the next). */
  #running: Promise<T> | undefined;
  /** The read that starts when the one under way ends, shared by all who asked meanwhile. */
  #queued: Promise<T> | undefined;

  #onIdle: (() => void) | undefined;

  /** Shares `read`; `onIdle` is called whenever a read ends with none queued behind it. */
  constructor(read: () => Promise<T>, onIdle?: () => void) {
    this.#read = read;
    this.#onIdle = onIdle;
  }

  /** Whether no read is under way or queued (the reader may be dropped). */
  get idle(): boolean {
    return this.#running === undefined && this.#queued === undefined;
  }

  /** A value read after this call. */
  get(): Promise<T> {
    if (this.#queued) return this.#queued;
    // Those who ask in this same turn share it too: it starts after all of them.
    const queued = (this.#running ?? Promise.resolve()).catch(() => {}).then(() => {
      this.#queued = undefined;
      const run = this.#read();
      this.#running = run;
      const done = () => {
        if (this.#running !== run) return;
        this.#running = undefined;
        if (this.#queued === undefined) this.#onIdle?.();
      };
      run.then(done, done);
      return run;
    });
    this.#queued = queued;
    return queued;
  }
}
