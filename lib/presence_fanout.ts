/**
 * Presence changes on their way to one hub's readers, batched. With
 * thousands online, a frame per arrival to everyone is a frame per reader
 * per arrival: the work grows with the square of the crowd. Here every
 * change since the last flush goes out as ONE `presence` frame per
 * interval, encoded once and shared by every reader:
 *
 * - a user's last state within the interval wins, and a user who ends it as
 *   they began it (offline, online, offline) is not mentioned at all;
 * - the first change after a quiet interval goes out at once (on the next
 *   turn of the event loop, so a burst shares it); later ones wait for the
 *   end of the interval, so frames are at least an interval apart (a batch
 *   that reached no reader does not count);
 * - a reader never sees its own user's change: readers whose user is in the
 *   batch get a copy without it (encoded once per such user);
 * - changes are numbered as they are pushed ({@linkcode PresenceFanout.seq}),
 *   and a batch knows the last of its numbers: a reader whose `welcome` was
 *   made after them (so listed them already) can be spared it;
 * - a frame carries at most `maxBatch` changes ({@linkcode PRESENCE_BATCH_MAX}):
 *   the rest, still latest-state-wins, wait for the next interval, oldest
 *   first, so a reader's presence traffic is bounded per interval however
 *   many arrive.
 *
 * @module
 */

import { Outgoing, withoutElement } from "./frames.ts";
import { PRESENCE_BATCH_MAX } from "./protocol.ts";

/** One flush: the changes, and the frame each reader gets. */
export class PresenceBatch {
  /** Users who came online. */
  readonly online: readonly string[];
  /** Users who went offline. */
  readonly offline: readonly string[];
  /** The number of its latest change ({@linkcode PresenceFanout.seq} as it was pushed). */
  readonly lastSeq: number;
  #shared: Outgoing;
  #changed: Set<string>;
  /** Frames without one user's own change, by that user (null: nothing left for them). */
  #without = new Map<string, Outgoing | null>();
  #delivered = false;

  /** A batch of changes (each user at most once), the latest of them numbered `lastSeq`. */
  constructor(online: string[], offline: string[], lastSeq = Number.MAX_SAFE_INTEGER) {
    this.online = online;
    this.offline = offline;
    this.lastSeq = lastSeq;
    this.#changed = new Set([...online, ...offline]);
    this.#shared = new Outgoing({ type: "presence", online, offline });
  }

  /** Whether {@linkcode PresenceBatch.for} gave any reader a frame. */
  get delivered(): boolean {
    return this.#delivered;
  }

  /** How many changes it carries. */
  get size(): number {
    return this.#changed.size;
  }

  /**
   * The frame for a reader who is `user`: everyone's changes but their own
   * (the shared frame unless `user` is in the batch); undefined when that
   * leaves nothing.
   */
  for(user: string): Outgoing | undefined {
    if (!this.#changed.has(user)) {
      this.#delivered = true;
      return this.#shared;
    }
    let out = this.#without.get(user);
    if (out === undefined) {
      // During a crowd's arrival most readers are in the batch, each with a copy of a frame of
      // up to `maxBatch` names: cut out of the shared text, not filtered and encoded again
      // (~40 µs a reader at 500 names against ~5).
      out = this.#changed.size === 1 ? null : new Outgoing(
        withoutElement(this.#shared.v1, user) ?? {
          type: "presence",
          online: this.online.filter((u) => u !== user),
          offline: this.offline.filter((u) => u !== user),
        },
      );
      this.#without.set(user, out);
    }
    if (out) this.#delivered = true;
    return out ?? undefined;
  }
}

/** Options of {@linkcode PresenceFanout}. */
export interface PresenceFanoutOptions {
  /** Milliseconds between two flushes at least (`--fanout-interval`). */
  intervalMs: number;
  /** The most changes in one batch; {@linkcode PRESENCE_BATCH_MAX} when absent. */
  maxBatch?: number;
  /** Called with each batch; it delivers `batch.for(reader)` to every reader. */
  deliver: (batch: PresenceBatch) => void;
}

/** A pending change: the state before the interval's first change, the latest, and its number. */
interface Change {
  from: boolean;
  to: boolean;
  seq: number;
}

/** Collects presence changes and delivers them as at most one batch per interval. */
export class PresenceFanout implements Disposable {
  #intervalMs: number;
  #maxBatch: number;
  #deliver: (batch: PresenceBatch) => void;
  /** Changes not yet delivered, in the order users first changed (a Map keeps it). */
  #pending = new Map<string, Change>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #lastFlush = -Infinity;
  #disposed = false;
  #seq = 0;

  /** A fan-out flushing at most once every `intervalMs`. */
  constructor(options: PresenceFanoutOptions) {
    this.#intervalMs = options.intervalMs;
    this.#maxBatch = Math.max(1, options.maxBatch ?? PRESENCE_BATCH_MAX);
    this.#deliver = options.deliver;
  }

  /**
   * The number of the latest change pushed (0: none yet). Read before a
   * `welcome` reads who is online: every change numbered up to it is in what
   * that read sees, as presence records a change before it is announced.
   */
  get seq(): number {
    return this.#seq;
  }

  /** Changes waiting for the next flush. */
  get pending(): number {
    return this.#pending.size;
  }

  /** Records that a user came online (`true`) or went offline (`false`). */
  push(user: string, online: boolean): void {
    if (this.#disposed) return;
    const change = this.#pending.get(user);
    const seq = ++this.#seq;
    // A user's announcements alternate: before the first one here, they were the opposite.
    if (change) {
      change.to = online;
      change.seq = seq;
    } else this.#pending.set(user, { from: !online, to: online, seq });
    this.#schedule();
  }

  #schedule(): void {
    if (this.#timer !== undefined || this.#pending.size === 0) return;
    const wait = Math.max(0, this.#lastFlush + this.#intervalMs - performance.now());
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#flush();
    }, wait);
  }

  #flush(): void {
    const online: string[] = [];
    const offline: string[] = [];
    let lastSeq = 0;
    for (const [user, change] of this.#pending) {
      if (online.length + offline.length >= this.#maxBatch) break;
      this.#pending.delete(user);
      // Back where it began: nobody needs to hear of it.
      if (change.to === change.from) continue;
      (change.to ? online : offline).push(user);
      lastSeq = Math.max(lastSeq, change.seq);
    }
    if (online.length + offline.length > 0) {
      const batch = new PresenceBatch(online, offline, lastSeq);
      this.#deliver(batch);
      // The pace is the readers': a batch nobody got (a first user alone) holds nothing back.
      if (batch.delivered) this.#lastFlush = performance.now();
    }
    // What did not fit waits for the next interval.
    this.#schedule();
  }

  /** Stops the timer, dropping what is pending (for a shutdown). */
  [Symbol.dispose](): void {
    this.#disposed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#pending.clear();
  }
}
