/**
 * One suite, every backend: a SQLite file, SQLite `:memory:`, and PostgreSQL
 * (a throwaway cluster from `_pg.ts`). Where the backend can be shared, each
 * case runs three stores (or three servers) on it at once, as three instances
 * would: ids, claims, read state and resume must hold across them.
 *
 * Live delivery between servers is the fan-out's business (not here): these
 * cases cross servers through what is stored.
 */

import assert from "node:assert/strict";
import postgres from "npm:postgres@^3.4.9";
import { Accounts } from "../lib/accounts.ts";
import { openStore } from "../lib/sql/open.ts";
import { DM_SUMMARY_PAGE, type SqlStore } from "../lib/sql/store.ts";
import { dmKey, roomKey } from "../lib/store.ts";
import { type Frame, TestClient } from "./_client.ts";
import { ignoreWithoutPostgres, startPostgres, type TestPostgres } from "./_pg.ts";
import { type InProcessServer, startServer } from "./_server.ts";

/** A place to keep data: `fresh()` hands out an empty database on it. */
interface Backend {
  name: string;
  /** Whether several stores can open one database (not so for `:memory:`). */
  shared: boolean;
  ignore: boolean;
  setup(): Promise<{ fresh(): Promise<string> } & AsyncDisposable>;
}

const BACKENDS: Backend[] = [
  {
    name: "SQLite file",
    shared: true,
    ignore: false,
    async setup() {
      const dir = await Deno.makeTempDir({ prefix: "chat-conformance-" });
      let n = 0;
      return {
        fresh: () => Promise.resolve(`${dir}/db${n++}/chat.db`),
        [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
      };
    },
  },
  {
    name: "SQLite :memory:",
    shared: false,
    ignore: false,
    setup() {
      return Promise.resolve({
        fresh: () => Promise.resolve(":memory:"),
        [Symbol.asyncDispose]: () => Promise.resolve(),
      });
    },
  },
  {
    name: "PostgreSQL",
    shared: true,
    ignore: ignoreWithoutPostgres(),
    async setup() {
      const pg: TestPostgres = await startPostgres();
      const admin = postgres(pg.url, { max: 1, onnotice: () => {} });
      let n = 0;
      return {
        async fresh() {
          const name = `case${n++}`;
          await admin.unsafe(`CREATE DATABASE ${name}`);
          return pg.url.replace(/\/chat$/, `/${name}`);
        },
        async [Symbol.asyncDispose]() {
          await admin.end();
          await pg[Symbol.asyncDispose]();
        },
      };
    },
  },
];

const isType = (type: string) => (f: Frame) => f.type === type;

/** `count` stores on one database (one for a backend that cannot share). */
async function stores(backend: Backend, data: string, count = 3): Promise<SqlStore[]> {
  const n = backend.shared ? count : 1;
  const out: SqlStore[] = [];
  for (let i = 0; i < n; i++) out.push(await openStore(data));
  return out;
}

/** A user's conversations, rooms and DMs, as a welcome lists them (at most 100 DMs). */
async function summaries(store: SqlStore, user: string, rooms: string[]) {
  return (await store.conversations(user, rooms, 100)).conversations;
}

async function closeAll(list: SqlStore[]): Promise<void> {
  for (const s of list) await s.close();
}

/** The cases, each given an empty database and the backend it is on. */
const CASES: Record<string, (backend: Backend, data: string) => Promise<void>> = {
  "numbers concurrent appends from every store 1, 2, 3, … per conversation and keeps each (from, cid) once":
    async (backend, data) => {
      const all = await stores(backend, data);
      try {
        const targets = [{ room: "lobby" }, { room: "dev" }, { to: "bob" }, { to: "carol" }];
        const sends = Array.from({ length: 600 }, (_, i) => ({
          ...targets[i % targets.length],
          from: "alice",
          text: `m${i}`,
          // Every fifth message is a re-send of an earlier one, possibly through another store.
          cid: `c${i % 5 === 4 ? i - 4 : i}`,
        }));
        const results = await Promise.all(sends.map((m, i) => all[i % all.length].append(m)));
        const byCid = new Map<string, number>();
        const ids = new Map<string, number[]>();
        for (const r of results) {
          const key = r.message.room !== undefined
            ? roomKey(r.message.room)
            : dmKey("alice", r.message.to!);
          if (!r.duplicate) ids.set(key, [...(ids.get(key) ?? []), r.message.id]);
          const seen = byCid.get(r.message.cid!);
          if (seen !== undefined) {
            assert.equal(r.message.id, seen, `cid ${r.message.cid} got two ids`);
          }
          byCid.set(r.message.cid!, r.message.id);
        }
        assert.equal(results.filter((r) => !r.duplicate).length, 480);
        for (const [key, list] of ids) {
          assert.deepEqual(list.sort((a, b) => a - b), list.map((_, i) => i + 1), key);
          const page = await all[0].history(key, { limit: 1000 });
          assert.deepEqual(page.messages.map((m) => m.id), list.map((_, i) => i + 1));
          assert.equal(page.more, false);
        }
      } finally {
        await closeAll(all);
      }
    },

  "answers a re-sent (from, cid) with the first copy after a reopen, from any store": async (
    backend,
    data,
  ) => {
    // (A reopened :memory: database is a new one: there the same store answers.)
    const first = await openStore(data);
    const stored = await first.append({ to: "bob", from: "alice", text: "hi", cid: "x1" });
    assert.equal(stored.duplicate, false);
    if (backend.shared) await first.close();
    const again = backend.shared ? await stores(backend, data, 2) : [first];
    try {
      const copy = await again[again.length - 1].append({
        to: "bob",
        from: "alice",
        text: "hi?",
        cid: "x1",
      });
      assert.deepEqual(copy, { message: stored.message, duplicate: true });
      // Twice in one batch (appended in the same turn): stored once, the second answered with the first.
      const [one, two] = await Promise.all([
        again[0].append({ room: "lobby", from: "alice", text: "twin", cid: "t1" }),
        again[0].append({ room: "lobby", from: "alice", text: "twin", cid: "t1" }),
      ]);
      assert.equal(one.duplicate, false);
      assert.deepEqual(two, { message: one.message, duplicate: true });
      assert.equal((await again[0].history(roomKey("lobby"), { limit: 10 })).messages.length, 1);
      const other = await again[0].append({ to: "bob", from: "carol", text: "mine", cid: "x1" });
      assert.equal(
        other.duplicate,
        false,
        "a cid is the sender's own: another sender may reuse it",
      );
    } finally {
      await closeAll(again);
    }
  },

  "pages history newest page first between after and before": async (_backend, data) => {
    await using store = await openStore(data);
    for (let i = 1; i <= 25; i++) await store.append({ room: "lobby", from: "a", text: `t${i}` });
    const key = roomKey("lobby");
    const newest = await store.history(key, { limit: 10 });
    assert.deepEqual(newest.messages.map((m) => m.id), [16, 17, 18, 19, 20, 21, 22, 23, 24, 25]);
    assert.equal(newest.more, true);
    const older = await store.history(key, { before: 16, limit: 10 });
    assert.deepEqual(older.messages.map((m) => m.id), [6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    const between = await store.history(key, { after: 3, before: 8, limit: 10 });
    assert.deepEqual(between.messages.map((m) => m.text), ["t4", "t5", "t6", "t7"]);
    assert.equal(between.more, false);
    const after = await store.history(key, { after: 20, limit: 3 });
    assert.deepEqual(after.messages.map((m) => m.id), [23, 24, 25]);
    assert.equal(after.more, true, "older messages than the page remain in the range");
    assert.deepEqual(await store.history(roomKey("empty"), { limit: 5 }), {
      messages: [],
      more: false,
    });
  },

  "pages every message of a conversation in id order from any store, after 2,123 appends at once":
    async (backend, data) => {
      const all = await stores(backend, data);
      try {
        const targets = [{ room: "lobby" }, { room: "dev" }, { room: "ops" }, { to: "bob" }];
        const total = 2123;
        const results = await Promise.all(
          Array.from(
            { length: total },
            (_, i) =>
              all[i % all.length].append({
                ...targets[i % targets.length],
                from: "alice",
                text: `m${i}`,
              }),
          ),
        );
        const texts = new Map<string, string[]>();
        for (const r of results) {
          const key = r.message.room !== undefined
            ? roomKey(r.message.room)
            : dmKey("alice", "bob");
          texts.set(key, [...(texts.get(key) ?? []), r.message.text]);
        }
        for (const [key, sent] of texts) {
          // Newest page first, from another store than most of them came through.
          const got: string[] = [];
          let before: number | undefined;
          for (let pages = 0; pages < 100; pages++) {
            const page = await all[1 % all.length].history(key, { before, limit: 200 });
            got.unshift(...page.messages.map((m) => m.text));
            if (!page.more) break;
            before = page.messages[0].id;
          }
          // Ids 1, 2, 3, … in the order they were numbered: the texts in that order.
          const byId = results.filter((r) =>
            (r.message.room !== undefined ? roomKey(r.message.room) : dmKey("alice", "bob")) === key
          ).sort((a, b) => a.message.id - b.message.id).map((r) => r.message.text);
          assert.deepEqual(got, byId, key);
          assert.equal(got.length, sent.length, key);
          // Short windows all through it.
          for (let id = 2; id < sent.length; id += 37) {
            const page = await all[0].history(key, { after: id - 2, before: id + 2, limit: 10 });
            assert.deepEqual(page.messages.map((m) => m.id), [id - 1, id, id + 1], `${key} ${id}`);
          }
        }
      } finally {
        await closeAll(all);
      }
    },

  "keeps read state monotonic and below the newest id; new members and new users start at the newest":
    async (backend, data) => {
      const [a, b = a] = await stores(backend, data, 2);
      try {
        for (let i = 0; i < 5; i++) await a.append({ room: "lobby", from: "alice", text: `l${i}` });
        for (let i = 0; i < 3; i++) await a.append({ room: "dev", from: "alice", text: `d${i}` });
        const lobby = roomKey("lobby");
        assert.equal(await b.markRead("bob", lobby, 3), 3);
        assert.equal(await a.markRead("bob", lobby, 2), 3, "never backwards");
        assert.equal(await b.markRead("bob", lobby, 99), 5, "never past the newest");
        // A user registered now has read the lobby so far; a member joining now has read the room.
        const accounts = new Accounts(b.db, { iterations: 1000 });
        assert.deepEqual(await accounts.register("dora"), { ok: true, user: "dora", known: true });
        await b.join("dora", "dev");
        assert.deepEqual(await summaries(a, "dora", ["lobby", "dev"]), [
          { room: "lobby", last: 5, read: 5, unread: 0 },
          { room: "dev", last: 3, read: 3, unread: 0 },
        ]);
        await a.append({ room: "dev", from: "alice", text: "after" });
        await b.append({ to: "dora", from: "alice", text: "psst" });
        assert.deepEqual(await summaries(b, "dora", ["lobby", "dev"]), [
          { room: "lobby", last: 5, read: 5, unread: 0 },
          { room: "dev", last: 4, read: 3, unread: 1 },
          { with: "alice", last: 1, read: 0, unread: 1 },
        ]);
        // The sender has read what it sent.
        assert.deepEqual((await summaries(a, "alice", ["dev"]))[0], {
          room: "dev",
          last: 4,
          read: 4,
          unread: 0,
        });
      } finally {
        await closeAll(a === b ? [a] : [a, b]);
      }
    },

  "creates a room once, keeps private rooms out of the list, and lets an invitation be used once":
    async (backend, data) => {
      const [a, b = a] = await stores(backend, data, 2);
      try {
        assert.equal(await a.createRoom("team", { private: true, owner: "alice" }), true);
        assert.equal(await b.createRoom("team", { private: false, owner: "mallory" }), false);
        assert.deepEqual(await b.room("team"), { private: true, owner: "alice" });
        assert.equal(await a.room("nowhere"), undefined);
        await a.join("alice", "team");
        await b.invite("bob", "team", "alice");
        assert.deepEqual(await a.invites("bob"), [{ room: "team", by: "alice" }]);
        await a.join("bob", "team");
        assert.deepEqual(await b.invites("bob"), [], "joining uses the invitation up");
        await b.join("carol", "open");
        await a.join("dave", "open");
        await a.join("dave", "open");
        await b.join("erin", "small");
        assert.deepEqual(await a.publicRooms(10), [
          { room: "open", members: 2 },
          { room: "small", members: 1 },
        ]);
        assert.deepEqual((await b.rooms("bob")).sort(), ["team"]);
        await b.leave("dave", "open");
        await b.leave("dave", "open");
        assert.deepEqual(await a.publicRooms(1), [{ room: "open", members: 1 }]);
        assert.deepEqual(await a.rooms("dave"), []);
        assert.deepEqual(await a.room("open"), { private: false, owner: "carol" });
      } finally {
        await closeAll(a === b ? [a] : [a, b]);
      }
    },

  "decides a join and writes it in one step: a private room needs an invitation, even racing its creation":
    async (backend, data) => {
      const [a, b = a] = await stores(backend, data, 2);
      try {
        assert.deepEqual(await a.joinIfAllowed("bob", "fresh"), {
          result: "joined",
          private: false,
        });
        assert.deepEqual(await b.joinIfAllowed("bob", "fresh"), {
          result: "member",
          private: false,
        });
        assert.deepEqual(await a.room("fresh"), { private: false, owner: "bob" });
        assert.equal(await a.createRoom("vault", { private: true, owner: "alice" }), true);
        await a.join("alice", "vault");
        assert.deepEqual(await b.joinIfAllowed("bob", "vault"), {
          result: "forbidden",
          private: true,
        });
        assert.deepEqual(await a.rooms("bob"), ["fresh"]);
        await a.invite("bob", "vault", "alice");
        assert.deepEqual(await b.joinIfAllowed("bob", "vault"), {
          result: "joined",
          private: true,
        });
        assert.deepEqual(await a.invites("bob"), []);
        // Creation of a private room racing a join from another store: never a member of it uninvited.
        const rooms = Array.from({ length: 20 }, (_, i) => `race${i}`);
        const outcomes = await Promise.all(rooms.map((room) =>
          Promise.all([
            a.createRoom(room, { private: true, owner: "alice" }),
            b.joinIfAllowed("mallory", room),
          ])
        ));
        const joined = new Set(await a.rooms("mallory"));
        for (const [i, [created, outcome]] of outcomes.entries()) {
          const info = await a.room(rooms[i]);
          if (created) {
            assert.deepEqual(outcome, { result: "forbidden", private: true }, rooms[i]);
            assert.equal(info?.private, true);
            assert.equal(joined.has(rooms[i]), false, `mallory is in private ${rooms[i]}`);
          } else {
            assert.deepEqual(outcome, { result: "joined", private: false }, rooms[i]);
            assert.deepEqual(info, { private: false, owner: "mallory" });
          }
        }
        // A room a user has no read mark in (the lobby at their first welcome) starts at its newest.
        await a.append({ room: "lobby", from: "alice", text: "before erin" });
        assert.deepEqual(await summaries(b, "erin", ["lobby"]), [
          { room: "lobby", last: 1, read: 1, unread: 0 },
        ]);
        await b.append({ room: "lobby", from: "alice", text: "after erin" });
        assert.deepEqual(await summaries(a, "erin", ["lobby"]), [
          { room: "lobby", last: 2, read: 1, unread: 1 },
        ]);
      } finally {
        await closeAll(a === b ? [a] : [a, b]);
      }
    },

  "pages a user's DM partners in name order with their read state, a welcome's worth first": async (
    backend,
    data,
  ) => {
    const [a, b = a] = await stores(backend, data, 2);
    try {
      // Partners on both sides of a statement's end; names that sort apart from their numbers.
      const partners = Array.from({ length: DM_SUMMARY_PAGE * 2 + 3 }, (_, i) => `p${i}`);
      await Promise.all(partners.map((from) => a.append({ to: "hub", from, text: "hi" })));
      await Promise.all(
        ["p0", "p3"].map((from) => b.append({ to: "hub", from, text: "again" })),
      );
      await b.markRead("hub", dmKey("hub", "p3"), 2);
      await b.append({ to: "p7", from: "hub", text: "back" });
      const sorted = [...partners].sort();
      const first = await b.conversations("hub", ["lobby"], 200);
      assert.equal(first.dmsMore, true);
      assert.deepEqual(first.conversations[0], { room: "lobby", last: 0, read: 0, unread: 0 });
      const dms = first.conversations.slice(1);
      assert.deepEqual(dms.map((c) => c.with), sorted.slice(0, 200));
      // The rest, in pages of every size up to the largest, each from the last one listed.
      for (const limit of [1, 7, 500, 500, 500]) {
        const page = await a.dms("hub", { after: dms.at(-1)!.with, limit });
        dms.push(...page.conversations);
        assert.equal(page.more, dms.length < partners.length, `after ${dms.length}`);
        if (page.more) assert.equal(page.conversations.length, limit);
        if (!page.more) break;
      }
      assert.deepEqual(dms.map((c) => c.with), sorted);
      const of = (peer: string) => dms.find((c) => c.with === peer);
      assert.deepEqual(of("p0"), { with: "p0", last: 2, read: 0, unread: 2 });
      assert.deepEqual(of("p3"), { with: "p3", last: 2, read: 2, unread: 0 });
      assert.deepEqual(of("p7"), { with: "p7", last: 2, read: 2, unread: 0 });
      assert.deepEqual(of(partners.at(-1)!), {
        with: partners.at(-1),
        last: 1,
        read: 0,
        unread: 1,
      });
      // Exactly a page's worth left: no `more` after it; none listed: no DMs, but more.
      assert.deepEqual(await b.dms("hub", { after: sorted.at(-3), limit: 2 }), {
        conversations: [of(sorted.at(-2)!), of(sorted.at(-1)!)],
        more: false,
      });
      assert.deepEqual(await b.conversations("hub", [], 0), { conversations: [], dmsMore: true });
      assert.deepEqual(await b.dms("nobody", { limit: 200 }), { conversations: [], more: false });
    } finally {
      await closeAll(a === b ? [a] : [a, b]);
    }
  },

  "finds messages by any substring, Chinese included, only in the conversations asked for": async (
    _backend,
    data,
  ) => {
    await using store = await openStore(data);
    const texts = [
      "明天发布新版本",
      "Release notes are UP",
      "100% done_ok",
      "nothing here",
      "发布",
    ];
    for (const text of texts) await store.append({ room: "dev", from: "alice", text });
    await store.append({ to: "bob", from: "alice", text: "secret 发布新 plan" });
    const found = async (text: string, convs = [roomKey("dev")]) =>
      (await store.search(convs, text, 10)).map((m) => m.text);
    assert.deepEqual(await found("发布新"), ["明天发布新版本"]);
    assert.deepEqual(await found("发布"), ["发布", "明天发布新版本"], "newest first");
    assert.deepEqual(await found("notes are up"), ["Release notes are UP"]);
    assert.deepEqual(await found("0%"), ["100% done_ok"], "% is a character, not a wildcard");
    assert.deepEqual(await found("e_o"), ["100% done_ok"], "_ is a character too");
    assert.deepEqual(await found("x_y"), []);
    assert.deepEqual(await found("发布新", [roomKey("dev"), dmKey("alice", "bob")]), [
      "secret 发布新 plan",
      "明天发布新版本",
    ]);
    assert.deepEqual(await found("发布新", [roomKey("other")]), []);
  },

  "finds each message once, whether the search index has taken it yet or not": async (
    backend,
    data,
  ) => {
    await using store = await openStore(data);
    for (const n of [1, 2, 3]) {
      await store.append({ room: "dev", from: "alice", text: `发布 ${n}` });
    }
    // SQLite indexes after the appends (these three now); PostgreSQL's index is its own.
    assert.equal(await store.indexSearch(), backend.name.startsWith("PostgreSQL") ? 0 : 3);
    for (const n of [4, 5]) await store.append({ room: "dev", from: "alice", text: `发布 ${n}` });
    const found = async (text: string) =>
      (await store.search([roomKey("dev")], text, 10)).map((m) => m.text);
    const all = ["发布 5", "发布 4", "发布 3", "发布 2", "发布 1"];
    // Three characters go through the trigram index, two scan: both find each message once.
    assert.deepEqual(await found("发布 "), all);
    assert.deepEqual(await found("发布"), all);
    assert.deepEqual(await found("布 4"), ["发布 4"]);
    assert.deepEqual((await store.search([roomKey("dev")], "发布", 2)).map((m) => m.text), [
      "发布 5",
      "发布 4",
    ]);
  },

  "registers a name once across stores, refuses look-alikes, and revokes tokens everywhere": async (
    backend,
    data,
  ) => {
    const all = await stores(backend, data);
    try {
      const accounts = all.map((s) => new Accounts(s.db, { iterations: 1000 }));
      // The same name in two spellings, at once from every store: one spelling wins everywhere.
      const results = await Promise.all(
        accounts.flatMap((a) => [a.register("Alice"), a.register("alice")]),
      );
      const spellings = new Set(results.map((r) => r.ok ? r.user : r.reason));
      assert.equal(spellings.size, 1, [...spellings].join(", "));
      const [winner] = spellings;
      for (const a of accounts) {
        assert.deepEqual(await a.resolve("ALICE"), { ok: true, user: winner, known: true });
      }
      // A look-alike (Cyrillic а) is refused on every store.
      const lookalike = await accounts[accounts.length - 1].register("\u0430lice");
      assert.equal(lookalike.ok, false);
      // Claimed on one store, logged in with a password on another, revoked from a third.
      const claim = await accounts[0].authenticate(winner, { legacy: false });
      assert.equal(claim.ok, true);
      const token = claim.ok ? claim.token! : "";
      await accounts[accounts.length - 1].setPassword(winner, "correct horse");
      const login = await accounts[1 % accounts.length].login("alice", "correct horse");
      assert.equal(login?.user, winner);
      assert.equal((await accounts[0].authenticate(winner, { legacy: false, token })).ok, true);
      assert.equal(
        (await accounts[0].authenticate(winner, { legacy: false, token: login!.token })).ok,
        true,
      );
      const revoked = await accounts[2 % accounts.length].revoke(winner);
      assert.equal(revoked.length, 2);
      for (const t of [token, login!.token]) {
        assert.equal(
          (await accounts[0].authenticate(winner, { legacy: false, token: t })).ok,
          false,
        );
      }
      assert.equal(await accounts[1 % accounts.length].login("alice", "wrong"), undefined);
    } finally {
      await closeAll(all);
    }
  },

  "claims a name on one server for every server, and its token works on each": async (
    backend,
    data,
  ) => {
    const n = backend.shared ? 3 : 1;
    const servers: InProcessServer[] = [];
    for (let i = 0; i < n; i++) servers.push(await startServer({ data }));
    try {
      const first = await TestClient.connect(servers[0].origin, "alice", { token: null });
      const welcome = await first.next(isType("welcome"));
      assert.equal(typeof welcome.token, "string");
      await first.close();
      for (const server of servers) {
        const thief = await TestClient.connect(server.origin, "alice", { token: null });
        assert.equal((await thief.closed).code, 4003, `claimed on ${server.origin} too`);
        const owner = await TestClient.connect(server.origin, "alice", { token: welcome.token });
        const again = await owner.next(isType("welcome"));
        assert.equal(again.user ?? "alice", "alice");
        await owner.close();
      }
    } finally {
      for (const s of servers) await s.close();
    }
  },

  "resumes a user on another server with exactly what they missed, in rooms and DMs": async (
    backend,
    data,
  ) => {
    const n = backend.shared ? 3 : 1;
    const servers: InProcessServer[] = [];
    for (let i = 0; i < n; i++) servers.push(await startServer({ data }));
    try {
      const at = (i: number) => servers[i % servers.length].origin;
      // bob is known, has seen up to lobby 1, then goes away.
      const [bob0, alice] = [
        await TestClient.connect(at(0), "bob"),
        await TestClient.connect(at(1), "alice"),
      ];
      // Tokens are kept per origin (as a browser would): carry bob's to the other server.
      const { token } = await bob0.next(isType("welcome"));
      await alice.next(isType("welcome"));
      alice.send({ type: "send", room: "lobby", text: "one", cid: "a1" });
      await alice.next((f) => f.cid === "a1");
      await bob0.close();
      for (let i = 2; i <= 4; i++) {
        alice.send({ type: "send", room: "lobby", text: `n${i}`, cid: `a${i}` });
        await alice.next((f) => f.cid === `a${i}`);
      }
      alice.send({ type: "send", to: "bob", text: "dm", cid: "d1" });
      const dm = await alice.next((f) => f.cid === "d1");
      await alice.close();
      // bob comes back on the last server, resuming after lobby 1.
      const bob = await TestClient.connect(at(2), "bob", { query: "?resume", token });
      const welcome = await bob.next(isType("welcome"));
      assert.deepEqual(
        welcome.conversations.find((c: Frame) => c.with === "alice"),
        { with: "alice", last: 1, read: 0, unread: 1 },
      );
      bob.send({
        type: "resume",
        conversations: [{ room: "lobby", after: 1 }, { with: "alice", after: 0 }],
      });
      const lobby = [
        await bob.next(isType("message")),
        await bob.next(isType("message")),
        await bob.next(isType("message")),
      ];
      const rest = await bob.next(isType("message"));
      const all = [...lobby, rest];
      assert.deepEqual(
        all.filter((m) => m.room === "lobby").map((m) => [m.id, m.text]),
        [[2, "n2"], [3, "n3"], [4, "n4"]],
      );
      assert.deepEqual(all.find((m) => m.to === "bob"), dm);
      await bob.close();
    } finally {
      for (const s of servers) await s.close();
    }
  },
};

for (const backend of BACKENDS) {
  Deno.test({
    name: `store conformance on ${backend.name}`,
    ignore: backend.ignore,
    fn: async (t) => {
      await using place = await backend.setup();
      for (const [name, run] of Object.entries(CASES)) {
        await t.step(name, async () => await run(backend, await place.fresh()));
      }
    },
  });
}
