/**
 * {@linkcode SqlDatabase} on SQLite through `node:sqlite` (built into Deno:
 * no flag, works in the compiled binary).
 *
 * - WAL journal: readers never block the writer, a crash never corrupts.
 * - `full` by default: every batch that wrote is synced to disk (`fdatasync`
 *   of the WAL) before any of its answers, so an acknowledged message
 *   survives a SIGKILL, an OS crash and power loss. `normal`
 *   (`--sqlite-synchronous normal`) still survives a SIGKILL of the server
 *   (the WAL is in the OS cache) but may lose the last commits on power loss
 *   or an OS crash; it never corrupts the file.
 * - Another connection holding the write lock (another process on the file)
 *   is waited for, up to `busyTimeoutMs` (5 s), rather than failing at once.
 * - One connection per process, so one writer; every statement takes turns
 *   on it, and a transaction holds it from `BEGIN IMMEDIATE` to `COMMIT`, so no
 *   other statement sees its writes before they are committed.
 *
 * `node:sqlite` is synchronous, and a commit of SQLite's own `synchronous=FULL`
 * waits for an fsync: on the event loop that stalled every other user (p99
 * 35–39 ms with 20 senders, `tools/store_cost.ts`). Until `sqlite_engine.ts`,
 * the connection lived in a worker for that; a round trip to it cost more
 * than the statements (a new user's arrival took 450 µs of CPU, 245 of them
 * the worker's, against 245–275 in all now, `tools/store_path.ts`). Now the
 * connection is on the loop with SQLite's `synchronous=NORMAL`, which syncs
 * the log before each checkpoint and the file after it but not at a commit;
 * the commit's own sync is this module's: `Deno.FsFile.syncData` on the log,
 * which runs on Deno's blocking-task threads, and the batch's answers wait
 * for it. Statements run on the loop: each batch is one group of indexed
 * statements (a commit of a few dozen DMs, ~0.2–0.5 ms). The lock is never
 * waited for on the loop either (`busy_timeout` 0): a batch that finds it
 * held is run again after a wait (see `#busy`).
 *
 * @module
 */

import { setImmediate } from "node:timers";
import type { AppendInput, AppendOutcome } from "./append.ts";
import { type Queryable, type SqlDatabase, SQLITE, type SqlValue } from "./dialect.ts";
import {
  type BatchOp,
  Op,
  type OpKind,
  type OpResult,
  SqliteEngine,
  toSqlite,
} from "./sqlite_engine.ts";

/** How SQLite syncs commits to disk. */
export type SqliteSynchronous = "full" | "normal";

/** Options of {@linkcode SqliteDatabase.open}. */
export interface SqliteOptions {
  /** `full` (default): survive power loss; `normal`: survive a crash of the process only. */
  synchronous?: SqliteSynchronous;
  /** How long to wait for another process's write lock, in milliseconds (default 5000). */
  busyTimeoutMs?: number;
  /**
   * The log's pages (4 KiB each) past which the next batch waits for a
   * checkpoint that catches up with all of them, so that the log starts over
   * from its beginning (default {@linkcode WAL_RESTART_PAGES}): checkpoints
   * that run while batches commit never catch up with a writer that never
   * stops, and the log would only grow.
   */
  walRestartPages?: number;
}

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

/**
 * The default of {@linkcode SqliteOptions.walRestartPages}: 64 MB of log. At
 * 1,000 pages (SQLite's own checkpoint point) with a checkpoint every 50 ms,
 * a saturated DM cost 24.6 and 26.6 µs against 20.1 and 23.9 at 4,000 and
 * 200 ms (`deno task bench --only dm,latency`, interleaved): fewer checkpoints
 * copy the pages written over and over (heads, read marks) fewer times. At
 * 5,000 DMs/s a batch writes ~11 pages, ~1,000 batches a second: at 4,000
 * pages the log started over ~3 times a second, each time holding the
 * batches for its catch-up (1–2 ms; a trace of one run). At 16,000 the p99
 * was lower in each of six interleaved runs (4.14–4.54 ms against 4.43–5.18,
 * medians 4.41 and 4.84; the saturated DM unchanged). At 200,000 it was
 * worse (5.3–5.7 ms): the log grew through the whole run, and a sync of a
 * file that grows costs more than one of a file rewritten in place.
 */
export const WAL_RESTART_PAGES = 16_000;
/** The least time between two checkpoints while batches write (ms). */
const CHECKPOINT_EVERY_MS = 200;

/** The checkpointing worker (`sqlite_checkpoint.ts`), its requests answered in order. */
class Checkpointer {
  #worker: Worker;
  #answers: Array<(answer: { log?: number; error?: string }) => void> = [];

  constructor(path: string) {
    this.#worker = new Worker(new URL("./sqlite_checkpoint.ts", import.meta.url), {
      type: "module",
    });
    this.#worker.onmessage = (e) => this.#answers.shift()?.(e.data);
    this.#worker.onerror = (e) => {
      e.preventDefault();
      for (const answer of this.#answers.splice(0)) answer({ error: e.message });
    };
    this.#ask({ open: path });
  }

  #ask(request: unknown): Promise<{ log?: number; error?: string }> {
    return new Promise((resolve) => {
      this.#answers.push(resolve);
      this.#worker.postMessage(request);
    });
  }

  /**
   * A `PASSIVE` checkpoint: the log's frames when it began (it took them all,
   * no reader holding any back); undefined if it failed.
   */
  async checkpoint(): Promise<number | undefined> {
    return (await this.#ask("checkpoint")).log;
  }

  async close(): Promise<void> {
    await this.#ask({ close: true });
    this.#worker.terminate();
  }
}

/** The most statements the engine keeps prepared; beyond it both sides forget them all. */
const MAX_STATEMENTS = 4096;

/**
 * A SQLite database file (or `:memory:`), its connection on the event loop.
 *
 * Every statement asked for in one turn of the event loop runs in one batch,
 * after the turn, and the next batch runs only once the previous one is
 * answered (synced): what was asked meanwhile waits in `#outbox` and goes
 * together, so that one sync serves them all (group commit). A transaction's
 * BEGIN goes with its first statements, and its COMMIT with whatever was
 * waiting for it to end. The engine runs them all in order, one connection:
 * while a transaction is open, statements outside it wait here (in
 * `#waiting`, in the order they were asked, with the transactions after it),
 * so that none sees its writes before the commit or becomes part of it.
 */
export class SqliteDatabase implements SqlDatabase {
  readonly dialect = SQLITE;
  readonly description: string;
  #engine: SqliteEngine;
  /**
   * The write-ahead log, synced here after each batch that wrote, before its
   * answers (`synchronous=full`); undefined where no sync is asked for.
   */
  #log: Deno.FsFile | undefined;
  /** Ops to run in the next batch. */
  #outbox: Pending[] = [];
  /** The ops of the batch run now, or waiting for its sync, in order. */
  #inFlight: Pending[] | undefined;
  #scheduled = false;
  /** Statement numbers by text (the engine prepares each once). */
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
  #closing: Promise<void> | undefined;
  /** The wait before the lock is tried again. */
  #retry: ReturnType<typeof setTimeout> | undefined;
  /** Why the database is unusable, once it is: every later statement fails at once. */
  #broken: Error | undefined;

  /** How long ops wait for another connection's write lock before they fail (ms). */
  #busyTimeoutMs: number;
  /** See {@linkcode SqliteOptions.walRestartPages}. */
  #walRestartPages: number;
  /** The checkpoints' worker (a file's log only). */
  #checkpointer: Checkpointer | undefined;
  /** Whether a checkpoint runs now, and when the last one ended. */
  #checkpointing = false;
  #checkpointed = 0;
  /** The log needs a checkpoint that catches up: 1 once no batch is in flight, 2 while it runs. */
  #catchUp: 0 | 1 | 2 = 0;
  /** Since when the op at the batch's head has found the lock held (0: it has not). */
  #busySince = 0;
  /** How long the next wait for the lock is. */
  #busyDelay = 0;

  private constructor(
    engine: SqliteEngine,
    description: string,
    log: Deno.FsFile | undefined,
    busyTimeoutMs: number,
    walRestartPages: number,
    checkpointer: Checkpointer | undefined,
  ) {
    this.#walRestartPages = walRestartPages;
    this.#engine = engine;
    this.description = description;
    this.#log = log;
    this.#busyTimeoutMs = busyTimeoutMs;
    this.#checkpointer = checkpointer;
  }

  /** Opens (creating if needed) a database file, or `:memory:`. */
  static async open(path: string, options: SqliteOptions = {}): Promise<SqliteDatabase> {
    const file = path !== ":memory:";
    const full = options.synchronous !== "normal";
    const pragmas = [
      // Another connection's lock is waited for here, off the loop (see `#busy`).
      "PRAGMA busy_timeout = 0",
      ...(file ? ["PRAGMA journal_mode = WAL"] : []),
      // Checkpoints copy the log into the file and sync both: never here, on the event loop,
      // but in a worker's connection (`sqlite_checkpoint.ts`).
      ...(file ? ["PRAGMA wal_autocheckpoint = 0"] : []),
      // SQLite syncs the log before each checkpoint and the file after it; with `full`, every
      // batch that wrote is synced here too, off the event loop, before it is answered.
      "PRAGMA synchronous = NORMAL",
    ];
    const { engine, rows } = SqliteEngine.open(path, pragmas);
    let log: Deno.FsFile | undefined;
    try {
      const answers = rows as Array<Array<Record<string, string>>>;
      if (file && answers[1]?.[0]?.journal_mode !== "wal") {
        throw new Error(`${path}: cannot use WAL mode`);
      }
      // SQLite makes the log at its first write; an empty one is a log with nothing in it.
      if (file && full) {
        log = await Deno.open(`${path}-wal`, { read: true, write: true, create: true });
      }
    } catch (error) {
      engine.close();
      throw error;
    }
    return new SqliteDatabase(
      engine,
      file ? `SQLite ${path}` : "SQLite in memory",
      log,
      options.busyTimeoutMs ?? 5000,
      options.walRestartPages ?? WAL_RESTART_PAGES,
      file ? new Checkpointer(path) : undefined,
    );
  }

  #fail(error: Error): void {
    this.#broken = error;
    clearTimeout(this.#retry);
    this.#retry = undefined;
    const pending = [...this.#inFlight ?? [], ...this.#outbox];
    this.#inFlight = undefined;
    this.#outbox = [];
    for (const p of pending) p.reject(error);
    // Each of them now fails at once, on #broken.
    for (const { go } of this.#waiting.splice(0)) go();
  }

  /** Queues one op for the next batch. */
  #push(kind: OpKind, tx: number, text: string | null, params: BatchOp[4]) {
    if (this.#broken) return Promise.reject(this.#broken);
    let id = 0;
    let sql: string | null = null;
    if (text !== null) {
      id = this.#statements.get(text) ?? 0;
      if (id === 0) {
        if (this.#statements.size >= MAX_STATEMENTS) {
          // Ops already queued name statements the engine knows; the reset runs after them.
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
    // After this turn's microtasks, so that everything asked in this turn goes in one batch
    // (setTimeout(0) would wait about 2 ms here).
    setImmediate(() => {
      this.#scheduled = false;
      if (this.#inFlight || this.#outbox.length === 0 || this.#broken || this.#catchUp) return;
      this.#run();
    });
  }

  /** Runs what the outbox holds, as one batch. */
  #run(): void {
    let batch = this.#outbox;
    this.#outbox = [];
    this.#inFlight = batch;
    const { results, busy } = this.#engine.batch(batch.map((p) => p.op));
    if (busy) {
      // What did not run goes first in the next batch, after a wait for the lock.
      this.#outbox = [...batch.slice(results.length), ...this.#outbox];
      batch = batch.slice(0, results.length);
      this.#inFlight = batch;
      this.#busy();
    } else {
      this.#busySince = 0;
    }
    const wrote = this.#engine.takeWritten();
    if (wrote) this.#mayCheckpoint();
    if (this.#log === undefined || !wrote) {
      this.#settle(batch, results);
      return;
    }
    // Answered once on disk: what is asked meanwhile waits, and goes in the next batch.
    this.#log.syncData().then(
      () => this.#settle(batch, results),
      (error) => this.#fail(new Error(`SQLite's log could not be synced: ${error}`)),
    );
  }

  /**
   * Another connection (another process, or another database object of this
   * one) holds the write lock: the op at the outbox's head is asked again
   * after a wait, growing from 1 ms to 20, or fails as SQLite's own busy
   * timeout would have failed it, and what follows it runs.
   */
  #busy(): void {
    const now = performance.now();
    if (this.#busySince === 0) {
      this.#busySince = now;
      this.#busyDelay = 1;
    }
    if (now - this.#busySince >= this.#busyTimeoutMs) {
      this.#busySince = 0;
      this.#outbox.shift()!.reject(new Error("database is locked"));
      return;
    }
    this.#retry ??= setTimeout(() => {
      this.#retry = undefined;
      if (this.#outbox.length > 0) this.#schedule();
    }, this.#busyDelay);
    this.#busyDelay = Math.min(this.#busyDelay * 2, 20);
  }

  /** A batch's answers, once it ran (and was synced). */
  #settle(batch: Pending[], results: OpResult[]): void {
    if (this.#inFlight !== batch) return;
    this.#inFlight = undefined;
    batch.forEach((pending, i) => {
      const result = results[i];
      if (Array.isArray(result)) pending.resolve(result);
      else pending.reject(new Error(result?.e ?? "SQLite gave no answer"));
    });
    if (this.#catchUp === 1) this.#checkpoint(true);
    // What the answers' callers ask next joins what waited meanwhile.
    else if (this.#outbox.length > 0 && this.#retry === undefined) this.#schedule();
  }

  /** A batch wrote: a checkpoint, if none ran in the last `CHECKPOINT_EVERY_MS`. */
  #mayCheckpoint(): void {
    if (!this.#checkpointer || this.#checkpointing || this.#catchUp) return;
    if (performance.now() - this.#checkpointed < CHECKPOINT_EVERY_MS) return;
    this.#checkpoint(false);
  }

  /**
   * Checkpoints in the worker, while batches go on; or, to catch up, while
   * none runs (they wait for it). A log grown past `walRestartPages` calls for
   * a catch-up, after which the next batch starts the log over; it is short,
   * as the checkpoint before it copied most of the log.
   */
  #checkpoint(catchUp: boolean): void {
    this.#checkpointing = true;
    if (catchUp) this.#catchUp = 2;
    this.#checkpointer!.checkpoint().then((log) => {
      this.#checkpointing = false;
      this.#checkpointed = performance.now();
      if (catchUp) {
        this.#catchUp = 0;
        if (this.#outbox.length > 0 && this.#retry === undefined) this.#schedule();
      } else if (log !== undefined && log >= this.#walRestartPages && !this.#closing) {
        // `log` is where the log ended when the checkpoint began: batches may have written
        // more since, which only a checkpoint while none runs is sure to take in. A failed
        // checkpoint (`log` undefined: an I/O error, say) leaves the log as it is; the next
        // batch that writes tries again.
        this.#catchUp = 1;
        if (!this.#inFlight) this.#checkpoint(true);
      }
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
   * The append transaction in one op: the engine begins it, runs its rounds
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
    // A BEGIN that failed (the file locked by another process past the busy timeout) is the
    // cause of whatever its statements answered, and ends the transaction at once: the engine
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
      this.#broken ??= new Error("the database is closed");
      await this.#checkpointer?.close();
      this.#log?.close();
      this.#engine.close();
    })();
    return this.#closing;
  }
}
