/**
 * What SQLite answers is on disk first: with `synchronous` full (the
 * default), every write-ahead-log write made before an answer is covered by
 * an `fdatasync` (or `fsync`) of the log that ended before the answer. The
 * sync is `lib/sql/sqlite.ts`'s own (SQLite runs with `NORMAL`), so the
 * test watches the real system calls of a real process with `strace`: no
 * power cut can be simulated here, but the order of its calls is what a
 * power cut would find.
 */

import assert from "node:assert/strict";
import { join } from "node:path";

const STRACE = "/usr/bin/strace";
const hasStrace = await Deno.stat(STRACE).then(() => true, () => false);
// On CI strace is installed (.ci/run): a skip there is a failure.
const skip = !hasStrace && Deno.env.get("CI") !== "true";

/** The calls of `trace` that matter, in order: log writes, log syncs, and the answers. */
type Event =
  | { kind: "write" }
  | { kind: "sync-start"; thread: string }
  | { kind: "sync-end"; thread: string; ok: boolean }
  | { kind: "answer"; text: string };

/** Reads `strace -f` output: which descriptors are the log, and what was done to them. */
function events(trace: string, log: string): Event[] {
  const logFds = new Set<string>();
  // A call another thread interrupted is split in two lines: its first part, by thread.
  const unfinished = new Map<string, string>();
  const out: Event[] = [];
  for (const line of trace.split("\n")) {
    const m = line.match(/^(\d+)\s+(.*)$/);
    if (!m) continue;
    const thread = m[1];
    let call = m[2];
    if (call.endsWith(" <unfinished ...>")) {
      const head = call.slice(0, -" <unfinished ...>".length);
      // A sync covers what was written before it began: its start counts, not its end.
      const sync = head.match(/^f(?:data)?sync\((\d+)/);
      if (sync && logFds.has(sync[1])) out.push({ kind: "sync-start", thread });
      unfinished.set(thread, head);
      continue;
    }
    const resumed = call.match(/^<\.\.\. \w+ resumed>(.*)$/);
    if (resumed) {
      call = (unfinished.get(thread) ?? "") + resumed[1];
      unfinished.delete(thread);
    }
    const result = call.match(/\)\s+=\s+(-?\d+)/)?.[1];
    let c: RegExpMatchArray | null;
    if ((c = call.match(/^openat\(AT_FDCWD, "([^"]+)"/)) && c[1] === log && result) {
      logFds.add(result);
    } else if ((c = call.match(/^fcntl\((\d+), F_DUPFD_CLOEXEC/)) && logFds.has(c[1]) && result) {
      // Deno syncs a duplicate of the file's descriptor, made per call.
      logFds.add(result);
    } else if ((c = call.match(/^close\((\d+)\)/))) {
      logFds.delete(c[1]);
    } else if ((c = call.match(/^pwrite64\((\d+),/)) && logFds.has(c[1])) {
      out.push({ kind: "write" });
    } else if ((c = call.match(/^f(?:data)?sync\((\d+)/)) && logFds.has(c[1])) {
      if (!resumed) out.push({ kind: "sync-start", thread });
      out.push({ kind: "sync-end", thread, ok: result === "0" });
    } else if ((c = call.match(/^write\(1, "(answered \d+)\\n"/))) {
      out.push({ kind: "answer", text: c[1] });
    }
  }
  return out;
}

Deno.test({
  name: "every answer that follows a write to SQLite's log follows a sync of that write" +
    (skip ? " (ignored: needs strace, apt-get install strace)" : ""),
  ignore: skip,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "chat-sqlite-sync-" });
    try {
      const script = join(dir, "writes.ts");
      const db = join(dir, "chat.db");
      const sqlite = new URL("../lib/sql/sqlite.ts", import.meta.url).href;
      await Deno.writeTextFile(
        script,
        `import { SqliteDatabase } from ${JSON.stringify(sqlite)};
const db = await SqliteDatabase.open(${JSON.stringify(db)});
await db.query("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)");
const say = (text) => Deno.stdout.writeSync(new TextEncoder().encode(text + "\\n"));
for (let i = 0; i < 5; i++) {
  await db.query("INSERT INTO t (k, v) VALUES ($1, $2)", [i, "x".repeat(100)]);
  say("answered " + i);
}
await Promise.all([1, 2, 3].map((k) => db.transaction((tx) => tx.query("UPDATE t SET v = $1 WHERE k = $2", ["y", k]))));
say("answered 5");
await db.close();
`,
      );
      const tracePath = join(dir, "trace");
      const { code, stderr } = await new Deno.Command(STRACE, {
        args: [
          "-f",
          "-qq",
          "-e",
          "trace=openat,close,fcntl,pwrite64,fdatasync,fsync,write",
          "-o",
          tracePath,
          Deno.execPath(),
          "run",
          "-A",
          "--no-lock",
          script,
        ],
        stdout: "null",
        stderr: "piped",
      }).output();
      assert.equal(code, 0, new TextDecoder().decode(stderr));
      const seen = events(await Deno.readTextFile(tracePath), `${db}-wal`);
      const answers = seen.filter((e) => e.kind === "answer").map((e) => e.text);
      assert.deepEqual(answers, [0, 1, 2, 3, 4, 5].map((i) => `answered ${i}`));
      // Writes so far, and how many of them a finished sync covers (those before it began).
      let written = 0, synced = 0, syncs = 0;
      const covering = new Map<string, number>();
      for (const e of seen) {
        if (e.kind === "write") written++;
        else if (e.kind === "sync-start") covering.set(e.thread, written);
        else if (e.kind === "sync-end") {
          if (e.ok) synced = Math.max(synced, covering.get(e.thread) ?? 0), syncs++;
          covering.delete(e.thread);
        } else {
          assert.ok(written > 0, `${e.text}: nothing was written to the log before it`);
          assert.equal(synced, written, `${e.text} went before its writes were synced`);
        }
      }
      assert.ok(syncs >= 6, `only ${syncs} syncs of the log`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
