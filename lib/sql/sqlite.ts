/**
 * {@linkcode SqlDatabase} on SQLite through `node:sqlite` (built into Deno:
 * no flag, works in the compiled binary).
 *
 * - WAL journal: readers never block the writer, a crash never corrupts.
 * - `synchronous=FULL` by default: every commit is fsync'ed to the WAL before
 *   it is acknowledged, so an acknowledged message survives a SIGKILL, an OS
 *   crash and power loss. `NORMAL` (`--sqlite-synchronous normal`) still
 *   survives a SIGKILL of the server (the WAL is in the OS cache) but may lose
 *   the last commits on power loss or an OS crash; it never corrupts the file.
 * - `busy_timeout`: another process holding the write lock is waited for (up
 *   to 5 s) rather than failing at once.
 * - One connection per process, so one writer; every statement takes turns
 *   on it, and a transaction holds it from `BEGIN IMMEDIATE` to `COMMIT`, so no
 *   other statement sees its writes before they are committed.
 *
 * `node:sqlite` is synchronous, and a `synchronous=FULL` commit waits for an
 * fsync: on the event loop that stalled every other user (p99 35–39 ms with
 * 20 senders, `tools/store_cost.ts`). So the connection lives in a worker
 * (`sqlite_worker.ts`) and the loop only posts statements to it; group commit
 * keeps it to one fsync per batch.
 *
 * @module
 */

import { setImmediate } from "node:timers";
import type { AppendInput, AppendOutcome } from "./append.ts";
import { type Queryable, type SqlDatabase, SQLITE, type SqlValue } from "./dialect.ts";

/** How SQLite syncs commits to disk. */
export type SqliteSynchronous = "full" | "normal";

/** Options of {@linkcode SqliteDatabase.open}. */
export interface SqliteOptions {
  /** `full` (default): survive power loss; `normal`: survive a crash of the process only. */
  synchronous?: SqliteSynchronous;
  /** How long to wait for another process's write lock, in milliseconds (default 5000). */
  busyTimeoutMs?: number;
}

/**
 * What each op of a batch to the worker does (see `sqlite_worker.ts`): a
 * statement, or a transaction's begin and end, or forgetting every prepared
 * statement.
 */
export const Op = {
  query: 0,
  begin: 1,
  commit: 2,
  rollback: 3,
  reset: 4,
  /** `SAVEPOINT`, `RELEASE` and `ROLLBACK TO` of one transaction of a group (see `#transact`). */
  savepoint: 5,
  release: 6,
  rollbackTo: 7,
  /** The append transaction of `append.ts`, begun and committed in the worker. */
  append: 8,
} as const;
/** One of {@linkcode Op}. */
export type OpKind = typeof Op[keyof typeof Op];
/**
 * One op of a batch: its kind, its transaction's number (0: none), its
 * statement's number, the statement's text the first time it is sent (then
 * `null`), and its parameters (for `append`, its input alone).
 */
export type BatchOp = [
  OpKind,
  number,
  number,
  string | null,
  readonly SqlValue[] | readonly [AppendInput],
];

/** An op waiting to be sent, or for its answer. */
interface Pending {
  op: BatchOp;
  resolve(rows: unknown[]): void;
  reject(error: Error): void;
}

/** The most transactions one commit takes (see `#transact`). */
const MAX_GROUP = 64;

/** Transactions sharing one SQLite transaction, and so one commit (one fsync). */
interface Group {
  /** The SQLite transaction's number. */
  id: number;
  /** How many transactions it took so far. */
  size: number;
  /** Settled by its COMMIT's answer. */
  committed: Promise<void>;
  commit(): void;
  fail(error: unknown): void;
}

/** The most statements the worker keeps prepared; beyond it both sides forget them all. */
const MAX_STATEMENTS = 4096;

/**
 * PostgreSQL's `$n` placeholders in SQLite's syntax: plain `?` when they run
 * `$1, $2, …` in order, as most statements do (node:sqlite binds numbered
 * `?NNN` parameters about 20 times slower: 265 against 15 µs a row in a
 * 500-row INSERT), and `?n` where a statement reuses one. Run once per
 * statement text (the worker keeps it prepared; see `#statement`).
 */
export function toSqlite(text: string): string {
  const numbers = [...text.matchAll(/\$(\d+)/g)].map((m) => Number(m[1]));
  const inOrder = numbers.every((n, i) => n === i + 1);
  return text.replace(/\$(\d+)/g, inOrder ? "?" : "?$1");
}

/**
 * A SQLite database file (or `:memory:`), its connection held by a worker.
 *
 * Every statement asked for in one turn of the event loop goes to the worker
 * in one message, and the next message leaves only when the answer to the
 * previous one is back: what was asked meanwhile waits in `#outbox` and goes
 * together (a round trip costs far more than a statement). A transaction's
 * BEGIN goes with its first statements, and its COMMIT with whatever was
 * waiting for it to end. The worker runs them all in order, one connection:
 * while a transaction is open, statements outside it wait here (in
 * `#waiting`, in the order they were asked, with the transactions after it),
 * so that none sees its writes before the commit or becomes part of it.
 */
export class SqliteDatabase implements SqlDatabase {
  readonly dialect = SQLITE;
  readonly description: string;
  #worker: Worker;
  /** Ops to send in the next message. */
  #outbox: Pending[] = [];
  /** The ops of the message the worker has now, in order. */
  #inFlight: Pending[] | undefined;
  #scheduled = false;
  /** Statement numbers by text (the worker prepares each once). */
  #statements = new Map<string, number>();
  #nextStatement = 1;
  /** The open transaction's number (0: none), and the next one's. */
  #tx = 0;
  #nextTx = 1;
  /** What waits for the open transaction to end: statements outside it, and later transactions. */
  #waiting: Array<{ go(): void; transaction: boolean }> = [];
  /** The SQLite transaction open now, with the transactions it holds. */
  #group: Group | undefined;
  #nextMember = 1;
  /** The answer to an `open` or `close` message. */
  #control: { resolve(rows: unknown[]): void; reject(error: Error): void } | undefined;
  #closing: Promise<void> | undefined;
  /** Why the worker is gone, once it is: every later statement fails at once instead of hanging. */
  #broken: Error | undefined;

  private constructor(worker: Worker, description: string) {
    this.#worker = worker;
    this.description = description;
    worker.onmessage = (e: MessageEvent<string | { rows?: unknown[]; error?: string }>) => {
      if (typeof e.data !== "string") {
        const waiter = this.#control;
        this.#control = undefined;
        if (e.data.error !== undefined) waiter?.reject(new Error(e.data.error));
        else waiter?.resolve(e.data.rows ?? []);
        return;
      }
      const results = JSON.parse(e.data) as Array<unknown[] | { e: string }>;
      const batch = this.#inFlight ?? [];
      this.#inFlight = undefined;
      batch.forEach((pending, i) => {
        const result = results[i];
        if (Array.isArray(result)) pending.resolve(result);
        else pending.reject(new Error(result?.e ?? "the SQLite worker gave no answer"));
      });
      // What the answers' callers ask next joins what waited meanwhile.
      if (this.#outbox.length > 0) this.#schedule();
    };
    worker.onerror = (e) => {
      e.preventDefault();
      this.#fail(new Error(`the SQLite worker failed: ${e.message}`));
    };
  }

  /** Opens (creating if needed) a database file, or `:memory:`. */
  static async open(path: string, options: SqliteOptions = {}): Promise<SqliteDatabase> {
    const worker = new Worker(new URL("./sqlite_worker.ts", import.meta.url), { type: "module" });
    const db = new SqliteDatabase(
      worker,
      path === ":memory:" ? "SQLite in memory" : `SQLite ${path}`,
    );
    const pragmas = [
      `PRAGMA busy_timeout = ${Math.trunc(options.busyTimeoutMs ?? 5000)}`,
      ...(path === ":memory:" ? [] : ["PRAGMA journal_mode = WAL"]),
      `PRAGMA synchronous = ${options.synchronous === "normal" ? "NORMAL" : "FULL"}`,
    ];
    try {
      const answers = await db.#ask({ open: path, pragmas }) as Array<
        Array<Record<string, string>>
      >;
      if (path !== ":memory:" && answers[1]?.[0]?.journal_mode !== "wal") {
        throw new Error(`${path}: cannot use WAL mode`);
      }
    } catch (error) {
      worker.terminate();
      throw error;
    }
    return db;
  }

  #fail(error: Error): void {
    this.#broken = error;
    const pending = [...this.#inFlight ?? [], ...this.#outbox];
    this.#inFlight = undefined;
    this.#outbox = [];
    for (const p of pending) p.reject(error);
    this.#control?.reject(error);
    this.#control = undefined;
    // Each of them now fails at once, on #broken.
    for (const { go } of this.#waiting.splice(0)) go();
  }

  /** An `open` or `close` message (sent only when no batch is in flight). */
  #ask(request: Record<string, unknown>): Promise<unknown[]> {
    if (this.#broken) return Promise.reject(this.#broken);
    return new Promise((resolve, reject) => {
      this.#control = { resolve, reject };
      this.#worker.postMessage(request);
    });
  }

  /** Queues one op for the next message. */
  #push(kind: OpKind, tx: number, text: string | null, params: BatchOp[4]) {
    if (this.#broken) return Promise.reject(this.#broken);
    let id = 0;
    let sql: string | null = null;
    if (text !== null) {
      id = this.#statements.get(text) ?? 0;
      if (id === 0) {
        if (this.#statements.size >= MAX_STATEMENTS) {
          // Ops already queued name statements the worker knows; the reset runs after them.
          this.#statements.clear();
          this.#outbox.push({ op: [Op.reset, 0, 0, null, []], resolve() {}, reject() {} });
        }
        id = this.#nextStatement++;
        this.#statements.set(text, id);
        sql = toSqlite(text);
      }
    }
    return new Promise<unknown[]>((resolve, reject) => {
      this.#outbox.push({ op: [kind, tx, id, sql, params], resolve, reject });
      this.#schedule();
    });
  }

  #schedule(): void {
    if (this.#scheduled || this.#inFlight) return;
    this.#scheduled = true;
    // After this turn's microtasks, so that everything asked in this turn goes in one message
    // (setTimeout(0) would wait about 2 ms here).
    setImmediate(() => {
      this.#scheduled = false;
      if (this.#inFlight || this.#outbox.length === 0 || this.#broken) return;
      const batch = this.#outbox;
      this.#outbox = [];
      this.#inFlight = batch;
      this.#worker.postMessage(JSON.stringify(batch.map((p) => p.op)));
    });
  }

  /** Runs `go` now, or once the open transaction (and everything queued before) is over. */
  #inTurn(go: () => void, transaction = false): void {
    if (this.#mustWait) this.#waiting.push({ go, transaction });
    else go();
  }

  /** Whether what is asked now waits: a transaction is open, or others wait before it. */
  get #mustWait(): boolean {
    return this.#tx !== 0 || this.#waiting.length > 0;
  }

  /** The open transaction's end is queued: what waited for it goes, up to the next transaction. */
  #end(): void {
    this.#tx = 0;
    while (this.#tx === 0 && this.#waiting.length > 0) this.#waiting.shift()!.go();
  }

  query<T>(text: string, params: readonly SqlValue[] = []): Promise<T[]> {
    if (this.#closing) return Promise.reject(new Error("the database is closed"));
    // Nothing to wait for (the common case): no wrapping promise or closure per statement.
    if (!this.#mustWait) {
      return this.#push(Op.query, 0, text, params) as Promise<T[]>;
    }
    return new Promise<T[]>((resolve, reject) => {
      this.#inTurn(() =>
        (this.#push(Op.query, 0, text, params) as Promise<T[]>).then(resolve, reject)
      );
    });
  }

  /**
   * The append transaction in one op: the worker begins it, runs its rounds
   * and commits it (or rolls it back and answers the error). It takes turns
   * as a statement does, after the open transaction, and is one of its own:
   * a group of `transaction`s never holds it.
   */
  append(input: AppendInput): Promise<AppendOutcome> {
    if (this.#closing) return Promise.reject(new Error("the database is closed"));
    const run = () =>
      this.#push(Op.append, 0, null, [input]).then((rows) => rows[0] as AppendOutcome);
    if (!this.#mustWait) return run();
    return new Promise<AppendOutcome>((resolve, reject) => {
      this.#inTurn(() => run().then(resolve, reject));
    });
  }

  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    if (this.#closing) return Promise.reject(new Error("the database is closed"));
    return new Promise<T>((resolve, reject) => {
      this.#inTurn(() => this.#transact(fn).then(resolve, reject), true);
    });
  }

  /**
   * Runs one transaction. Transactions asked while another runs (and queued
   * right behind it) share its SQLite transaction, each in a savepoint of its
   * own: a failed one rolls back to its savepoint alone, and the others are
   * committed together, with one fsync, and only then answered (so answered
   * means committed, for each). A commit on this machine costs ~340 µs of CPU
   * and 3.5 ms of waiting in fsync alone; a new user's claim is one.
   */
  async #transact<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    let group = this.#group;
    const first = group === undefined;
    if (group === undefined) {
      let commit = () => {}, fail = (_: unknown) => {};
      const committed = new Promise<void>((resolve, reject) => {
        commit = resolve;
        fail = reject;
      });
      // Observed by each member that waits for it; none may be left unhandled.
      committed.catch(() => {});
      group = this.#group = { id: this.#nextTx++, size: 0, committed, commit, fail };
    }
    group.size++;
    const id = group.id;
    const member = this.#nextMember++;
    this.#tx = id;
    let over = false;
    const begun = first ? this.#push(Op.begin, id, null, []) : Promise.resolve([]);
    const saved = this.#push(Op.savepoint, id, null, [member]);
    const tx: Queryable = {
      query: <R>(text: string, params: readonly SqlValue[] = []) =>
        over
          ? Promise.reject(new Error("the transaction is over"))
          : this.#push(Op.query, id, text, params) as Promise<R[]>,
    };
    // Called now, so that its first statements go with the BEGIN.
    const running = (async () => await fn(tx))();
    const ran = running.then((value) => ({ value }), (error) => ({ error, value: undefined }));
    // A BEGIN that failed (the file locked by another process past busy_timeout) is the cause
    // of whatever its statements answered, and ends the transaction at once: the worker
    // refuses its statements, and those asked later are refused here.
    const began = Promise.all([begun, saved]).then(
      () => undefined,
      (error) => ({ error, value: undefined }),
    );
    const outcome: { value: T | undefined; error?: unknown } = await Promise.race([
      began.then((failed) => failed ?? ran),
      ran,
    ]);
    const failure = (await began) ?? ("error" in outcome ? outcome : undefined);
    over = true;
    const end = this.#push(failure ? Op.rollbackTo : Op.release, id, null, [member]);
    if (failure && first && this.#group === group && group.size === 1) {
      // Nothing of the group was kept: no COMMIT needed (and none possible if BEGIN failed).
      this.#push(Op.rollback, id, null, []);
      this.#group = undefined;
      group.commit();
    }
    this.#next();
    if (failure) {
      await end.catch(() => {});
      throw failure.error;
    }
    await end;
    await group.committed;
    return outcome.value as T;
  }

  /** A transaction of the group is over: the next one queued joins it, or the group commits. */
  #next(): void {
    const group = this.#group;
    if (group && group.size < MAX_GROUP && this.#waiting[0]?.transaction) {
      this.#waiting.shift()!.go();
      return;
    }
    if (group) {
      this.#group = undefined;
      this.#push(Op.commit, group.id, null, []).then(() => group.commit(), group.fail);
    }
    this.#end();
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      // After everything asked before: the last statement's answer means all are done.
      await new Promise<void>((resolve) =>
        this.#inTurn(() =>
          this.#push(Op.query, 0, "SELECT 1", []).then(() => resolve(), () => resolve())
        )
      );
      if (!this.#broken) await this.#ask({ close: true }).catch(() => {});
      this.#broken ??= new Error("the database is closed");
      this.#worker.terminate();
    })();
    return this.#closing;
  }
}
