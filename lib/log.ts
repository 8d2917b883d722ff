/**
 * Logging that cannot be turned into a flood: each cause (a fixed message
 * written by us, never client text) is printed at most once a minute, with a
 * count of the repeats it stood for. Errors are shown by name and message
 * only: no stack of client data, no frame, token, password or message text.
 *
 * @module
 */

/** Logs each cause at most once per interval. */
export class LogOnce {
  #last = new Map<string, { at: number; repeats: number }>();
  #intervalMs: number;

  /** A logger printing each cause at most once per `intervalMs` (a minute by default). */
  constructor(intervalMs = 60_000) {
    this.#intervalMs = intervalMs;
  }

  /** Logs an error under a cause. */
  error(cause: string, error?: unknown): void {
    this.#log("error", cause, error);
  }

  /** Logs a warning under a cause. */
  warn(cause: string): void {
    this.#log("warn", cause);
  }

  #log(level: "error" | "warn", cause: string, error?: unknown): void {
    const now = Date.now();
    const seen = this.#last.get(cause);
    if (seen && now - seen.at < this.#intervalMs) {
      seen.repeats++;
      return;
    }
    if (this.#last.size > 1000) this.#last.clear();
    this.#last.set(cause, { at: now, repeats: 0 });
    const more = seen?.repeats ? ` (and ${seen.repeats} more times)` : "";
    const detail = error === undefined ? "" : `: ${describe(error)}`;
    console[level](`${cause}${detail}${more}`);
  }
}

/** An error's name and message, nothing else. */
export function describe(error: unknown): string {
  if (error instanceof Error) return `${error.name}: ${error.message}`.slice(0, 300);
  return typeof error;
}
