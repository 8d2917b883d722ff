/**
 * Known bugs, kept as mutants: each breaks one promise of the README in one
 * place of `lib/`, and names the test files that must notice. `deno task
 * mutate --quick` applies each in a copy of the repository and runs those
 * files; a mutant they pass "survives". A quick, stable measure beside the
 * StrykerJS run (which takes hours for all of `lib/`): the score must not
 * fall as code lands. A mutant whose `search` text is no longer in its file
 * is reported as stale: update it with the code it guards. Left out on
 * purpose: equivalent mutants (no behaviour changes), such as dropping the
 * "already sent" check of a replay, which the cursor set before the replay
 * already ensures.
 *
 * @module
 */

/** One deliberate bug. */
export interface KnownBug {
  /** What breaks, as a user would see it. */
  name: string;
  /** The file it is put into. */
  file: string;
  /** Text that occurs exactly once in `file` ... */
  search: string;
  /** ... and what it becomes. */
  replace: string;
  /** The test files that must fail with it (paths from the repository's root). */
  tests: string[];
}

/**
 * Why `bug` cannot be applied to `source` (its file's text): its search text
 * is gone or not unique; undefined when it applies.
 */
export function staleness(bug: KnownBug, source: string): string | undefined {
  const at = source.indexOf(bug.search);
  if (at === -1) return "its search text is gone";
  if (source.indexOf(bug.search, at + 1) !== -1) return "its search text is not unique";
  return undefined;
}

/** The known bugs, by promise. */
export const KNOWN_BUGS: KnownBug[] = [
  // Delivery: once, in id order, across hubs, reconnects and resumes.
  {
    name: "a live message is delivered past a hole (no gap fill from the store)",
    file: "lib/connection.ts",
    search: `    if (cursor !== undefined && message.id > cursor + 1) {
      this.#fill(key, { after: cursor, ref: this.#refOf(message), announce: false });
      this.#waiting.get(key)!.push([message, out]);
      return;
    }`,
    replace: "",
    tests: ["tests/delivery_test.ts"],
  },
  {
    name: "a DM a resuming client did not name starts at the first id that reaches it",
    file: "lib/connection.ts",
    search: "(this.#resumable && message.to !== undefined ? 0 : undefined)",
    replace: "undefined",
    tests: ["tests/delivery_test.ts"],
  },
  {
    name: "a ?resume client that never resumes has its live messages held without limit",
    file: "lib/connection.ts",
    search: "if (this.#held.length >= this.#hub.limits.replayLimit) {",
    replace: "if (false) {",
    tests: ["tests/delivery_test.ts"],
  },
  {
    name: "a resume replays one message the client has again",
    file: "lib/connection.ts",
    search: "const after = Math.max(point.after, this.#cursors.get(key) ?? 0);",
    replace: "const after = Math.max(point.after - 1, 0);",
    tests: ["tests/hub_test.ts", "tests/server_test.ts"],
  },
  {
    name: "after a resume with nothing to replay, a hole in live traffic goes unnoticed",
    file: "lib/connection.ts",
    search: "      this.#cursors.set(key, after);\n",
    replace: "",
    tests: ["tests/delivery_test.ts"],
  },
  {
    name: "live messages held for a resume are dropped instead of following it",
    file: "lib/connection.ts",
    search: "for (const [message, out] of held ?? []) this.deliverMessage(message, out);",
    replace: "",
    tests: ["tests/delivery_test.ts"],
  },
  {
    name: "a replay is not capped at --replay-limit",
    file: "lib/hub.ts",
    search: "this.#store.history(key, { after, limit: this.limits.replayLimit })",
    replace: "this.#store.history(key, { after, limit: 1_000_000 })",
    tests: ["tests/hub_test.ts", "tests/delivery_test.ts"],
  },
  {
    name: "a re-sent cid is stored again, not answered with the first message",
    file: "lib/sql/append.ts",
    search: "    if (first) return toMessage(first);\n",
    replace: "",
    tests: ["tests/conformance_test.ts", "tests/delivery_test.ts"],
  },
  {
    name: "a re-sent cid refused by SQLite's unique index fails its whole batch, instead of " +
      "the batch being run again and the re-send answered with the first message",
    file: "lib/sql/sqlite_engine.ts",
    search: "      if (!isStoredCid(error)) throw error;\n",
    replace: "      throw error;\n",
    tests: ["tests/conformance_test.ts", "tests/delivery_test.ts"],
  },
  {
    name: "a batch's ids start past its own messages, where the head it moved at once stands, " +
      "leaving a gap in the conversation before them",
    file: "lib/sql/append.ts",
    search: "Number(row.last_id) - moveBy(row.conv)",
    replace: "Number(row.last_id)",
    tests: ["tests/conformance_test.ts"],
  },
  {
    name: "an append that fails in SQLite is left open, and its first writes join the " +
      "next append's transaction",
    file: "lib/sql/sqlite_engine.ts",
    search: `    } catch (error) {
      if (db.isTransaction) db.exec("ROLLBACK");
      throw error;
    }`,
    replace: `    } catch (error) {
      throw error;
    }`,
    tests: ["tests/sqlite_test.ts"],
  },
  {
    name:
      "SQLite's log is checkpointed beside the writes but never caught up with, so it only grows",
    file: "lib/sql/sqlite.ts",
    search: "} else if (log !== undefined && log >= this.#walRestartPages && !this.#closing) {",
    replace: "} else if (log !== undefined && log < 0) {",
    tests: ["tests/sqlite_test.ts"],
  },
  {
    name: "SQLite's answers go before the log is synced",
    file: "lib/sql/sqlite.ts",
    search: "    if (this.#log === undefined || !wrote) {",
    replace: "    if (this.#log === undefined || wrote || !wrote) {",
    tests: ["tests/sqlite_sync_test.ts"],
  },
  {
    name: "a user welcomed while arrivals wait for the interval is told of them again",
    file: "lib/hub.ts",
    search: "if (c.legacy || batch.lastSeq <= (this.#presenceSeen.get(c) ?? 0)) return;",
    replace: "if (c.legacy) return;",
    tests: ["tests/presence_scale_test.ts"],
  },
  // Shutdown: what was stored was acknowledged first.
  {
    name: "shutdown closes sockets before the appends it took are stored and acknowledged",
    file: "lib/hub.ts",
    search: "    while (this.#inflight.size > 0 || this.#storing > 0) {\n",
    replace: "    while (this.#inflight.size > 0) {\n",
    tests: ["tests/restart_test.ts"],
  },
  // Identity and privacy.
  {
    name: "a claimed name is let in without its token",
    file: "lib/server.ts",
    search: "        ? await accounts.authenticate(resolved.user, { token, legacy })",
    replace: "        ? { ok: true } as Authenticated",
    tests: ["tests/identity_test.ts"],
  },
  {
    name: "any valid token opens any name",
    file: "lib/accounts.ts",
    search: "if (row?.name === user) return { ok: true, session };",
    replace: "if (row) return { ok: true, session };",
    tests: ["tests/identity_test.ts"],
  },
  {
    name: "a foreign origin may open a socket (cross-site WebSocket hijacking)",
    file: "lib/server.ts",
    search: "if (!legacy && !originAllowed(req, at.url)) {",
    replace: "if (false) {",
    tests: ["tests/identity_test.ts"],
  },
  {
    name: "a private room is joined without an invitation",
    file: "lib/sql/store.ts",
    search: 'if (isPrivate && invited.length === 0) return { result: "forbidden", private: true };',
    replace: "",
    tests: ["tests/identity_test.ts"],
  },
  {
    name: "a non-member sends into a room",
    file: "lib/hub.ts",
    search: "if (!this.#isMember(conn.user, message.room)) {",
    replace: "if (false) {",
    tests: ["tests/server_test.ts", "tests/identity_test.ts"],
  },
  // Limits: what a client can make the server hold or compute is bounded.
  {
    name: "the send rate is not limited",
    file: "lib/user_limits.ts",
    search: "if (bucket.tokens >= 1) {",
    replace: "if (true) {",
    tests: ["tests/identity_test.ts"],
  },
  {
    name:
      "a text frame above --max-frame-bytes is taken (with Deno.upgradeWebSocket, as on Deno Deploy)",
    file: "lib/connection.ts",
    search: "if (exceedsBytes(data, limits.maxFrameBytes)) return this.#tooBig();",
    replace: "",
    tests: ["tests/server_test.ts", "tests/hostile_test.ts"],
  },
  {
    name: "a fragmented message is assembled past --max-frame-bytes before it is refused",
    file: "lib/websocket.ts",
    search: "      if (this.#fragBytes + length > this.#options.maxMessageBytes) {",
    replace: "      if (false) {",
    tests: ["tests/hostile_transport_test.ts", "tests/websocket_test.ts"],
  },
  {
    name: "a handshake's header field with a NUL in it is taken",
    file: "lib/guard.ts",
    search: "      if (!FIELD_VALUE.test(value)) return undefined;\n",
    replace: "",
    tests: ["tests/server_test.ts"],
  },
  {
    name: "the first page of who is online is kept after a name within it came or went",
    file: "lib/presence.ts",
    search: "    if (this.#first && i < this.#first.limit) this.#first = undefined;\n",
    replace: "",
    tests: ["tests/presence_scale_test.ts"],
  },
  {
    name: "a text frame is sent in place when only part of the text was encoded",
    file: "lib/websocket.ts",
    search: "  if (read !== length) return -1;",
    replace: "",
    tests: ["tests/websocket_test.ts"],
  },
  {
    name: "a text frame whose UTF-8 outgrows its header's length form overwrites its own start",
    file: "lib/websocket.ts",
    search: "    out.copyWithin(at + size, at + head, at + head + written);\n",
    replace: "",
    tests: ["tests/websocket_test.ts"],
  },
  {
    name: "every listener postgres.js was given on the channel is heard",
    file: "lib/pg_bus.ts",
    search: "if (generation === this.#generation) this.#onNotify(payload);",
    replace: "this.#onNotify(payload);",
    tests: ["tests/pg_bus_test.ts"],
  },
  {
    name: "a closed instance keeps retrying its failed catch-up against a pool being ended",
    file: "lib/pg_bus.ts",
    search: "    for (const timer of this.#retries) clearTimeout(timer);\n",
    replace: "",
    tests: ["tests/pg_bus_test.ts"],
  },
  {
    name: "a text above --max-text-length is stored",
    file: "lib/protocol.ts",
    search: 'if (value.length > limits.maxTextLength) return "too_large";',
    replace: "",
    tests: ["tests/protocol_test.ts", "tests/server_test.ts"],
  },
  {
    name: "a client that stops reading is never dropped",
    file: "lib/connection.ts",
    search: "        if (this.#buffered > max) {",
    replace: "if (false) {",
    tests: ["tests/peers_test.ts"],
  },
  {
    name: "--max-connections-per-ip is not enforced",
    file: "lib/server.ts",
    search: "if (perIp.count(at.ip) >= settings.maxConnectionsPerIp) {",
    replace: "if (false) {",
    tests: ["tests/identity_test.ts", "tests/slots_test.ts"],
  },
  {
    name: "a closed socket keeps its connection slots",
    file: "lib/server.ts",
    search: '    socket.addEventListener("close", release);\n',
    replace: "",
    tests: ["tests/slots_test.ts"],
  },
  // Presence.
  {
    name: "a user who leaves is never shown offline",
    file: "lib/hub.ts",
    search: 'this.#bus.publish({ kind: "presence", user, online: false });',
    replace: "",
    tests: ["tests/server_test.ts", "tests/peers_test.ts"],
  },
  {
    name: "a reader is told of its own arrival or departure",
    file: "lib/presence_fanout.ts",
    search: "    if (!this.#changed.has(user)) {",
    replace: "    if (true) {",
    tests: ["tests/presence_fanout_test.ts"],
  },
  {
    name: "a welcome shares a read of who is online that began before it asked (stale: misses " +
      "those who arrived just before)",
    file: "lib/shared_read.ts",
    search: "    if (this.#queued) return this.#queued;\n",
    replace:
      "    if (this.#queued) return this.#queued;\n    if (this.#running) return this.#running;\n",
    tests: ["tests/shared_read_test.ts"],
  },
  // Several instances on PostgreSQL.
  {
    name: "on a new PostgreSQL database, every append scans all the stored messages (a lookup " +
      "planned as a sequential scan on the empty table and kept)",
    file: "lib/sql/postgres.ts",
    search: `enable_seqscan: "off"`,
    replace: `enable_seqscan: "on"`,
    tests: ["tests/pg_plans_test.ts"],
  },
  {
    name: "transactions take turns on the connections other queries use (postgres.js can then " +
      "run a query inside another caller's transaction)",
    file: "lib/sql/postgres.ts",
    search: "    begin: transactions.begin,\n",
    replace: "",
    tests: ["tests/pg_transactions_test.ts"],
  },
  {
    name: "the heartbeat's sweep of send budgets deadlocks with a budget being taken",
    file: "lib/pg_instance.ts",
    search: `      DELETE FROM chat_send_budget WHERE "user" IN (
        SELECT "user" FROM chat_send_budget
        WHERE tat < extract(epoch from clock_timestamp()) * 1000
        FOR UPDATE SKIP LOCKED)\`;`,
    replace:
      "      DELETE FROM chat_send_budget WHERE tat < extract(epoch from clock_timestamp()) * 1000`;",
    tests: ["tests/pg_sweep_test.ts"],
  },
  {
    name: "a page of a user's DM partners ends at one statement's rows, and says no more follow",
    file: "lib/sql/store.ts",
    search: "      after = rows[rows.length - 1].peer;",
    replace: "      return { conversations: out, more: false };",
    tests: ["tests/conformance_test.ts"],
  },
  {
    name: "a welcome lists every DM, however many (no --welcome-dms bound)",
    file: "lib/sql/store.ts",
    search: "        if (out.length === want) return { conversations: out, more: true };\n",
    replace: "",
    tests: ["tests/welcome_dms_test.ts"],
  },
  {
    name: "an instance announces what it stored after the commit, so one that dies in between " +
      "leaves the message undelivered on the others",
    file: "lib/pg_backend.ts",
    search: "    options.store.announceWith(bus.announceAtCommit());\n",
    replace: "",
    tests: ["tests/pg_announce_test.ts"],
  },
];
