/**
 * One suite, every backend, at the hub level: three {@linkcode ChatHub}s in
 * this process, as three instances would run, and the same cases on each
 * backend, unchanged.
 *
 * - Local: one SQLite file, and the three hubs share its store, accounts,
 *   bus, presence and per-user limits (`localBackend`), as one process
 *   running several hubs would.
 * - PostgreSQL: one throwaway cluster, and each hub has a backend of its own
 *   (`openPgBackend`: its own pool, LISTEN bus and presence renewer), as three
 *   separate instances would.
 *
 * Clients are plain {@linkcode Peer}s that record the frames they are sent;
 * names are claimed through the accounts as the server does before it hands
 * a socket to the hub. Every case asserts what users see, and waits for
 * frames instead of sleeping.
 */

import assert from "node:assert/strict";
import postgres from "npm:postgres@^3.4.9";
import { Accounts } from "../lib/accounts.ts";
import { type Backend, localBackend } from "../lib/backend.ts";
import { ChatHub, type HubLimits, type Peer } from "../lib/hub.ts";
import { openPgBackend } from "../lib/pg_backend.ts";
import { DEFAULT_SETTINGS } from "../lib/settings.ts";
import { openStore } from "../lib/sql/open.ts";
import type { Frame } from "./_client.ts";
import { ignoreWithoutPostgres, startPostgres, type TestPostgres } from "./_pg.ts";

/** How long a client waits for a frame before the case fails. */
const TIMEOUT_MS = 5000;

const LIMITS: HubLimits = {
  maxFrameBytes: DEFAULT_SETTINGS.maxFrameBytes,
  maxTextLength: DEFAULT_SETTINGS.maxTextLength,
  maxBufferedBytes: DEFAULT_SETTINGS.maxBufferedBytes,
  replayLimit: DEFAULT_SETTINGS.replayLimit,
  maxRoomsPerUser: DEFAULT_SETTINGS.maxRoomsPerUser,
  // The cases send in bursts; pacing is not what they test.
  sendRate: 10_000,
  sendBurst: 10_000,
  // Presence changes of one user go out at most once an interval: keep the wait short.
  fanoutIntervalMs: 50,
  maxQueuedBytes: DEFAULT_SETTINGS.maxQueuedBytes,
  maxInvitesPerUser: DEFAULT_SETTINGS.maxInvitesPerUser,
};
const USER_LIMITS = { ...LIMITS, maxConnectionsPerUser: 100 };

/** What the test holds of a connection: the hub's public API, nothing else. */
type Conn = ReturnType<ChatHub["connect"]>;

/**
 * The `(user, online)` pairs a presence frame announces, in the shape of
 * today (`{type:"presence",user,online}`) or a batched one (`changes` of
 * such pairs, or `online`/`offline` lists of names).
 */
function presenceChanges(frame: Frame): Array<[string, boolean]> {
  if (frame.type !== "presence") return [];
  const out: Array<[string, boolean]> = [];
  if (typeof frame.user === "string" && typeof frame.online === "boolean") {
    out.push([frame.user, frame.online]);
  }
  for (const change of Array.isArray(frame.changes) ? frame.changes : []) {
    if (Array.isArray(change) && typeof change[0] === "string") {
      out.push([change[0], Boolean(change[1])]);
    } else if (typeof change?.user === "string" && typeof change?.online === "boolean") {
      out.push([change.user, change.online]);
    }
  }
  for (const user of Array.isArray(frame.online) ? frame.online : []) {
    if (typeof user === "string") out.push([user, true]);
  }
  for (const user of Array.isArray(frame.offline) ? frame.offline : []) {
    if (typeof user === "string") out.push([user, false]);
  }
  return out;
}

/**
 * A client as the hub sees it: a {@linkcode Peer} that parses and keeps
 * every frame it is sent, and lets the test wait for one.
 */
class Tab implements Peer {
  /** Every frame sent to this tab, in order. */
  readonly frames: Frame[] = [];
  /** Frames not yet taken by {@linkcode Tab.take}. */
  #unread: Frame[] = [];
  #wakers = new Set<() => void>();
  #conn: Conn | undefined;
  /** How the hub closed this tab, if it did. */
  closedWith: { code?: number; reason?: string } | undefined;
  readonly bufferedAmount = 0;

  constructor(readonly name: string) {}

  /** Attaches the hub's connection (right after `hub.connect`). */
  attach(conn: Conn): void {
    this.#conn = conn;
  }

  send(data: string): void {
    const frame = JSON.parse(data);
    this.frames.push(frame);
    this.#unread.push(frame);
    this.#wake();
  }

  close(code?: number, reason?: string): void {
    this.closedWith ??= { code, reason };
    this.#wake();
    // A socket reports its close a moment later, and the adapter tells the hub.
    queueMicrotask(() => this.#conn?.close());
  }

  #wake(): void {
    for (const wake of [...this.#wakers]) wake();
  }

  /** Sends a client frame to the hub. */
  write(frame: Frame): void {
    this.#conn!.receive(JSON.stringify(frame));
  }

  /** Closes the connection from the client's side (the socket closed). */
  leave(): void {
    this.#conn?.close();
  }

  /** Resolves once the hub has welcomed (or closed) the connection. */
  get ready(): Promise<void> {
    return this.#conn!.ready;
  }

  /** Every presence change this tab was told of, in order. */
  get presence(): Array<[string, boolean]> {
    return this.frames.flatMap(presenceChanges);
  }

  /** Waits until `check` returns something; fails the case after {@linkcode TIMEOUT_MS}. */
  async until<T>(check: () => T | undefined, what: string): Promise<T> {
    const deadline = Date.now() + TIMEOUT_MS;
    for (;;) {
      const found = check();
      if (found !== undefined) return found;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `${this.name} expected ${what} within ${TIMEOUT_MS} ms; unread: ${
            JSON.stringify(this.#unread).slice(0, 1500)
          }${this.closedWith ? `; closed with ${JSON.stringify(this.closedWith)}` : ""}`,
        );
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      let wake!: () => void;
      await new Promise<void>((resolve) => {
        wake = resolve;
        this.#wakers.add(wake);
        timer = setTimeout(resolve, left);
      });
      this.#wakers.delete(wake);
      clearTimeout(timer);
    }
  }

  /** Takes the first unread frame that matches, waiting for it. */
  take(match: (frame: Frame) => boolean, what: string): Promise<Frame> {
    return this.until(() => {
      const i = this.#unread.findIndex(match);
      return i === -1 ? undefined : this.#unread.splice(i, 1)[0];
    }, what);
  }

  /** Waits until the hub closes this tab. */
  closed(): Promise<{ code?: number; reason?: string }> {
    return this.until(() => this.closedWith, "to be closed");
  }

  /** Waits until this tab was told `user` is online (or offline). */
  sees(user: string, online: boolean): Promise<true> {
    return this.until(
      () => this.presence.some(([u, o]) => u === user && o === online) || undefined,
      `presence ${user} ${online ? "online" : "offline"}`,
    );
  }
}

/** One of the hubs, with the accounts the server in front of it would use. */
interface Instance {
  hub: ChatHub;
  accounts: Accounts;
}

/** A refused sign-in: the code and words a client would read in the 4003 close. */
type Refusal = { ok: false; code: string; reason: string };

/** Hubs on one backend, and clients on them; closes everything when disposed. */
class Cluster implements AsyncDisposable {
  /** Tokens issued to users, as the page keeps them. */
  readonly tokens = new Map<string, string>();
  #tabs: Tab[] = [];

  constructor(readonly instances: Instance[], readonly close: () => Promise<void>) {}

  /**
   * What the server does before handing a `chat.v1` socket to the hub:
   * resolve the name, authenticate it (a free name is claimed and gets a
   * token), register it.
   */
  async signIn(
    at: number,
    name: string,
    token: string | undefined,
  ): Promise<{ ok: true; user: string; session?: string; token?: string } | Refusal> {
    const { accounts } = this.instances[at];
    const resolved = await accounts.resolve(name);
    if (!resolved.ok) return resolved;
    const auth = await accounts.authenticate(resolved.user, { token, legacy: false });
    if (!auth.ok) return auth;
    const registered = await accounts.register(resolved.user);
    if (!registered.ok) return registered;
    return { ok: true, user: resolved.user, session: auth.session, token: auth.token };
  }

  /**
   * Opens a `chat.v1` tab for `name` on hub `at` (with the user's token if one
   * was issued, unless `token` says otherwise) and waits for its welcome.
   */
  async open(
    at: number,
    name: string,
    options: { resume?: boolean; token?: string | null } = {},
  ): Promise<[Tab, Frame]> {
    const token = options.token === null ? undefined : options.token ?? this.tokens.get(name);
    const signed = await this.signIn(at, name, token);
    if (!signed.ok) {
      throw new Error(`${name} refused on hub ${at}: ${signed.code} ${signed.reason}`);
    }
    const tab = this.#connect(at, `${name}@${at}`, {
      user: signed.user,
      resume: options.resume,
      session: signed.session,
      token: signed.token,
    });
    await tab.ready;
    const welcome = await tab.take((f) => f.type === "welcome", "a welcome");
    if (typeof welcome.token === "string") this.tokens.set(name, welcome.token);
    return [tab, welcome];
  }

  /** Opens a tab of the original page (no subprotocol, no token) for a free name. */
  async openLegacy(at: number, name: string): Promise<Tab> {
    const { accounts } = this.instances[at];
    const resolved = await accounts.resolve(name);
    assert.ok(resolved.ok, `legacy ${name} resolves`);
    const auth = await accounts.authenticate(resolved.user, { legacy: true });
    assert.ok(auth.ok, `legacy ${name} is let in on a free name`);
    await accounts.register(resolved.user);
    const tab = this.#connect(at, `${name}@${at} (legacy)`, { user: resolved.user, legacy: true });
    await tab.ready;
    return tab;
  }

  #connect(at: number, label: string, options: Parameters<ChatHub["connect"]>[1]): Tab {
    const tab = new Tab(label);
    tab.attach(this.instances[at].hub.connect(tab, options));
    this.#tabs.push(tab);
    return tab;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      await Promise.all(this.instances.map((i) => i.hub.shutdown()));
    } finally {
      for (const tab of this.#tabs) tab.leave();
      await this.close();
    }
  }
}

/** A hub on a backend, with the backend's accounts (as `main.ts` makes one). */
function hubOn(backend: Backend): { accounts: Accounts; hub: ChatHub } {
  return {
    accounts: backend.accounts,
    hub: new ChatHub({
      store: backend.store,
      accounts: backend.accounts,
      bus: backend.bus,
      presence: backend.presence,
      userLimits: backend.userLimits,
      limits: LIMITS,
    }),
  };
}

/** A backend the suite runs on: `cluster()` brings up hubs on an empty database. */
interface BackendUnderTest {
  name: string;
  ignore: boolean;
  setup(): Promise<{ cluster(hubs: number): Promise<Cluster> } & AsyncDisposable>;
}

const BACKENDS: BackendUnderTest[] = [
  {
    name: "the local backend (one SQLite file, hubs sharing one backend)",
    ignore: false,
    async setup() {
      const dir = await Deno.makeTempDir({ prefix: "chat-hub-conformance-" });
      let n = 0;
      return {
        async cluster(hubs) {
          const store = await openStore(`${dir}/case${n++}/chat.db`);
          const accounts = new Accounts(store.db);
          const backend: Backend = localBackend({
            where: "test",
            store,
            accounts,
            limits: USER_LIMITS,
          });
          const instances = Array.from({ length: hubs }, () => hubOn(backend));
          return new Cluster(instances, () => backend.close());
        },
        [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
      };
    },
  },
  {
    name: "PostgreSQL (one cluster, a backend per hub)",
    ignore: ignoreWithoutPostgres(),
    async setup() {
      const pg: TestPostgres = await startPostgres();
      const admin = postgres(pg.url, { max: 1, onnotice: () => {} });
      let n = 0;
      return {
        async cluster(hubs) {
          const name = `case${n++}`;
          await admin.unsafe(`CREATE DATABASE ${name}`);
          const url = pg.url.replace(/\/chat$/, `/${name}`);
          const backends: Backend[] = [];
          const close = async () => {
            for (const b of backends) await b.close();
          };
          try {
            for (let i = 0; i < hubs; i++) {
              const store = await openStore(url);
              const accounts = new Accounts(store.db);
              backends.push(
                await openPgBackend({
                  url,
                  where: name,
                  store,
                  accounts,
                  limits: USER_LIMITS,
                  presenceTtlMs: 10_000,
                  pollMs: 0,
                }).catch(async (error) => {
                  await store.close();
                  throw error;
                }),
              );
            }
          } catch (error) {
            await close();
            throw error;
          }
          const instances = backends.map(hubOn);
          return new Cluster(instances, close);
        },
        async [Symbol.asyncDispose]() {
          await admin.end();
          await pg[Symbol.asyncDispose]();
        },
      };
    },
  },
];

const A = 0, B = 1, C = 2;

/** A message frame in a DM between two users, in either direction. */
const dmBetween = (x: string, y: string) => (f: Frame) =>
  f.type === "message" && f.room === undefined &&
  ((f.from === x && f.to === y) || (f.from === y && f.to === x));
const inRoom = (room: string) => (f: Frame) => f.type === "message" && f.room === room;
const errorOf = (code: string) => (f: Frame) => f.type === "error" && f.code === code;

/** The ids and texts of the message frames a tab got that match. */
function messages(tab: Tab, match: (f: Frame) => boolean): Array<[number, string]> {
  return tab.frames.filter(match).map((f) => [f.id, f.text]);
}

/** The cases, each on fresh hubs over an empty database. */
const CASES: Record<string, (cluster: Cluster) => Promise<void>> = {
  "a DM sent on one hub reaches every tab of the recipient on the others, and the sender's ack, with ids 1, 2, 3":
    async (cluster) => {
      const [bobB] = await cluster.open(B, "bob");
      const [bobC] = await cluster.open(C, "bob");
      const [alice] = await cluster.open(A, "alice");
      for (let i = 1; i <= 3; i++) {
        alice.write({ type: "send", to: "bob", text: `d${i}`, cid: `c${i}` });
      }
      for (const tab of [alice, bobB, bobC]) {
        for (let i = 1; i <= 3; i++) {
          const m = await tab.take(dmBetween("alice", "bob"), `DM d${i}`);
          assert.deepEqual([m.id, m.from, m.to, m.text], [i, "alice", "bob", `d${i}`], tab.name);
          // The sender's own copy is its acknowledgement: it carries its cid.
          assert.equal(m.cid, `c${i}`);
        }
      }
      // A reply from the recipient's other hub continues the same conversation's ids.
      bobC.write({ type: "send", to: "alice", text: "back", cid: "r1" });
      for (const tab of [alice, bobB, bobC]) {
        const m = await tab.take(dmBetween("alice", "bob"), "the reply");
        assert.deepEqual([m.id, m.from, m.text], [4, "bob", "back"], tab.name);
      }
      for (const tab of [alice, bobB, bobC]) {
        assert.deepEqual(messages(tab, dmBetween("alice", "bob")).map(([id]) => id), [1, 2, 3, 4]);
      }
    },

  "a room message reaches its members on every hub once and in order; a non-member is refused not_member":
    async (cluster) => {
      const joinedBy = (name: string) => (f: Frame) =>
        f.type === "joined" && f.room === "dev" && f.user === name;
      // A tab of cy's open before cy joins (on another hub) is a member once cy joins.
      const [cyElsewhere] = await cluster.open(B, "cy");
      const members: Tab[] = [];
      for (const [at, name] of [[A, "ann"], [B, "ben"], [C, "cy"], [A, "ben"]] as const) {
        const [tab] = await cluster.open(at, name);
        tab.write({ type: "join", room: "dev" });
        await tab.take(joinedBy(name), "joined");
        members.push(tab);
      }
      await cyElsewhere.take(joinedBy("cy"), "its user joined, on another hub");
      members.push(cyElsewhere);
      const [outsider] = await cluster.open(B, "olga");
      const [ann, ben, cy] = members;
      ann.write({ type: "send", room: "dev", text: "r1", cid: "a1" });
      ben.write({ type: "send", room: "dev", text: "r2", cid: "b1" });
      cy.write({ type: "send", room: "dev", text: "r3", cid: "c1" });
      // Each sender's ack is the sign its message is stored; ids follow in storage order.
      await ann.take((f) => inRoom("dev")(f) && f.cid === "a1", "ack a1");
      await ben.take((f) => inRoom("dev")(f) && f.cid === "b1", "ack b1");
      await cy.take((f) => inRoom("dev")(f) && f.cid === "c1", "ack c1");
      ann.write({ type: "send", room: "dev", text: "last", cid: "a2" });
      for (const tab of members) {
        await tab.until(
          () => tab.frames.some((f) => inRoom("dev")(f) && f.text === "last") || undefined,
          "the last room message",
        );
        const got = messages(tab, inRoom("dev"));
        assert.deepEqual(got.map(([id]) => id), [1, 2, 3, 4], `${tab.name}: once each, in order`);
        assert.deepEqual(got.map(([, t]) => t).sort(), ["last", "r1", "r2", "r3"]);
      }
      outsider.write({ type: "send", room: "dev", text: "let me in", cid: "o1" });
      const refused = await outsider.take(errorOf("not_member"), "not_member");
      assert.equal(refused.ref, "o1");
      ann.write({ type: "send", room: "dev", text: "after", cid: "a3" });
      const after = await ann.take((f) => inRoom("dev")(f) && f.cid === "a3", "ack a3");
      assert.equal(after.id, 5, "the refused message took no id");
      await ben.take((f) => inRoom("dev")(f) && f.text === "after", "the message after it");
      assert.deepEqual(messages(outsider, inRoom("dev")), [], "a non-member sees none");
    },

  "a user arriving on one hub is seen online on another, and stays online until their last tab anywhere closes":
    async (cluster) => {
      const [reader] = await cluster.open(A, "rita");
      const [first] = await cluster.open(B, "uma");
      await reader.sees("uma", true);
      const [second] = await cluster.open(C, "uma");
      first.leave();
      // A witness leaves the same hub after uma's first tab: once rita is told the witness is
      // gone, she would have been told of uma too if that tab's closing had taken her offline.
      const [witness] = await cluster.open(B, "walt");
      await reader.sees("walt", true);
      witness.leave();
      await reader.sees("walt", false);
      assert.ok(
        !reader.presence.some(([u, o]) => u === "uma" && !o),
        `uma still has a tab on C; rita saw ${JSON.stringify(reader.presence)}`,
      );
      // And a newcomer anywhere is told so in its welcome.
      const [, welcome] = await cluster.open(B, "lena");
      assert.ok(welcome.online.includes("uma"), `welcome.online: ${welcome.online}`);
      second.leave();
      await reader.sees("uma", false);
      // Last tabs on two hubs closing at once: one of them takes the user offline.
      const [zedB] = await cluster.open(B, "zed");
      const [zedC] = await cluster.open(C, "zed");
      await reader.sees("zed", true);
      zedB.leave();
      zedC.leave();
      await reader.sees("zed", false);
    },

  "a name claimed on one hub refuses a claim without its token on another; the token works on a third":
    async (cluster) => {
      // The original page, on a name still free, on hub B.
      const legacy = await cluster.openLegacy(B, "dana");
      const [owner, welcome] = await cluster.open(A, "dana");
      assert.equal(typeof welcome.token, "string", "the claim issues a token");
      // Claiming closes the connections that never proved they own the name, wherever they are.
      const closed = await legacy.closed();
      assert.equal(closed.code, 4003);
      const refused = await cluster.signIn(B, "dana", undefined);
      assert.equal(refused.ok, false);
      assert.equal(!refused.ok && refused.code, "taken_no_password");
      const wrong = await cluster.signIn(B, "dana", "x".repeat(43));
      assert.equal(!wrong.ok && wrong.code, "bad_token");
      const [other, again] = await cluster.open(C, "dana");
      assert.equal(again.user, "dana");
      assert.equal(again.token, undefined, "a token is issued once, to the claim");
      // Both tabs are the same user: a DM to dana reaches both.
      const [sam] = await cluster.open(B, "sam");
      sam.write({ type: "send", to: "dana", text: "hi", cid: "s1" });
      for (const tab of [owner, other]) {
        const m = await tab.take(dmBetween("sam", "dana"), "the DM");
        assert.equal(m.text, "hi");
      }
    },

  "a client that resumes on another hub gets exactly what it missed, then live traffic, with no gap and no repeat":
    async (cluster) => {
      const [kim, welcome] = await cluster.open(A, "kim", { resume: true });
      kim.write({
        type: "resume",
        conversations: welcome.conversations.map((c: Frame) => ({ ...c, after: c.last })),
      });
      const [lee] = await cluster.open(C, "lee");
      for (let i = 1; i <= 2; i++) {
        lee.write({ type: "send", to: "kim", text: `m${i}`, cid: `l${i}` });
      }
      lee.write({ type: "send", room: "lobby", text: "lobby1", cid: "L1" });
      await kim.until(
        () =>
          (messages(kim, dmBetween("kim", "lee")).length === 2 &&
            messages(kim, inRoom("lobby")).length === 1) || undefined,
        "the first two DMs and the lobby message",
      );
      const dmSeen = messages(kim, dmBetween("kim", "lee")).at(-1)![0];
      const lobbySeen = messages(kim, inRoom("lobby")).at(-1)![0];
      kim.leave();
      // While kim is away: acknowledged to lee, so stored.
      for (let i = 3; i <= 5; i++) {
        lee.write({ type: "send", to: "kim", text: `m${i}`, cid: `l${i}` });
      }
      lee.write({ type: "send", room: "lobby", text: "lobby2", cid: "L2" });
      for (const cid of ["l3", "l4", "l5", "L2"]) {
        await lee.take((f) => f.type === "message" && f.cid === cid, `ack ${cid}`);
      }
      const [back, again] = await cluster.open(B, "kim", { resume: true });
      const dm = again.conversations.find((c: Frame) => c.with === "lee");
      assert.deepEqual([dm.last, dm.unread], [5, 5], "the welcome counts what kim missed");
      back.write({
        type: "resume",
        conversations: [{ with: "lee", after: dmSeen }, { room: "lobby", after: lobbySeen }],
      });
      // Live traffic while the replay runs meets it with no gap and no repeat.
      lee.write({ type: "send", to: "kim", text: "m6", cid: "l6" });
      const resumed = await back.take((f) => f.type === "resumed" && f.with === "lee", "resumed");
      // (m6 may be stored before the replay is read: then the replay carries it.)
      assert.deepEqual([resumed.after, resumed.from, resumed.more], [2, 3, false]);
      assert.ok(resumed.to === 5 || resumed.to === 6, `resumed up to ${resumed.to}`);
      await back.until(
        () => back.frames.some((f) => dmBetween("kim", "lee")(f) && f.text === "m6") || undefined,
        "the live DM after the replay",
      );
      await back.take((f) => f.type === "resumed" && f.room === "lobby", "resumed lobby");
      assert.deepEqual(messages(back, dmBetween("kim", "lee")), [
        [3, "m3"],
        [4, "m4"],
        [5, "m5"],
        [6, "m6"],
      ]);
      assert.deepEqual(messages(back, inRoom("lobby")), [[lobbySeen + 1, "lobby2"]]);
    },

  "a cid re-sent through another hub is stored once and acknowledged with the first id": async (
    cluster,
  ) => {
    const [vic] = await cluster.open(C, "vic");
    const [pat] = await cluster.open(A, "pat");
    pat.write({ type: "send", to: "vic", text: "once", cid: "same" });
    const first = await pat.take(dmBetween("pat", "vic"), "the ack");
    pat.leave();
    // The client never saw that ack (say), reconnects elsewhere and sends again.
    const [retry] = await cluster.open(B, "pat");
    retry.write({ type: "send", to: "vic", text: "once", cid: "same" });
    const again = await retry.take(dmBetween("pat", "vic"), "the ack of the re-send");
    assert.deepEqual([again.id, again.cid, again.text, again.ts], [
      first.id,
      "same",
      "once",
      first.ts,
    ]);
    retry.write({ type: "send", to: "vic", text: "next", cid: "other" });
    const next = await retry.take((f) => dmBetween("pat", "vic")(f) && f.cid === "other", "next");
    assert.equal(next.id, first.id + 1, "the re-send took no id");
    await vic.take((f) => dmBetween("pat", "vic")(f) && f.text === "next", "the next DM");
    assert.deepEqual(messages(vic, dmBetween("pat", "vic")), [[1, "once"], [2, "next"]]);
    retry.write({ type: "history", with: "vic" });
    const history = await retry.take((f) => f.type === "history", "history");
    assert.deepEqual(history.messages.map((m: Frame) => [m.id, m.cid]), [[1, "same"], [
      2,
      "other",
    ]]);
  },

  "read on one hub is seen by the reader's tab on another, and in their next welcome": async (
    cluster,
  ) => {
    const [readerA] = await cluster.open(A, "rob");
    const [readerB] = await cluster.open(B, "rob");
    const [sue] = await cluster.open(C, "sue");
    for (let i = 1; i <= 3; i++) {
      sue.write({ type: "send", to: "rob", text: `s${i}`, cid: `s${i}` });
    }
    await readerA.until(
      () => messages(readerA, dmBetween("rob", "sue")).length === 3 || undefined,
      "three DMs",
    );
    readerA.write({ type: "read", with: "sue", id: 2 });
    const seen = await readerB.take((f) => f.type === "read", "the read mark");
    assert.deepEqual([seen.with, seen.id], ["sue", 2]);
    // Sue's tabs are not told what rob read.
    const [, welcome] = await cluster.open(C, "rob");
    const dm = welcome.conversations.find((c: Frame) => c.with === "sue");
    assert.deepEqual([dm.last, dm.read, dm.unread], [3, 2, 1]);
    assert.ok(!sue.frames.some((f) => f.type === "read"), "only the reader's tabs get read");
  },

  "a private room made on one hub refuses the uninvited on another, and takes the invited on a third":
    async (cluster) => {
      const [olive] = await cluster.open(A, "olive");
      const [nosy] = await cluster.open(B, "nosy");
      const [ivy] = await cluster.open(C, "ivy");
      olive.write({ type: "create", room: "staff", private: true });
      await olive.take((f) => f.type === "joined" && f.room === "staff", "joined staff");
      nosy.write({ type: "join", room: "staff" });
      const refused = await nosy.take(errorOf("forbidden"), "forbidden");
      assert.deepEqual(refused.request, { type: "join", room: "staff" });
      olive.write({ type: "invite", room: "staff", user: "ivy" });
      const invited = await ivy.take((f) => f.type === "invited", "the invitation");
      assert.deepEqual([invited.room, invited.by], ["staff", "olive"]);
      ivy.write({ type: "join", room: "staff" });
      await ivy.take((f) => f.type === "joined" && f.user === "ivy", "joined staff");
      await olive.take((f) => f.type === "joined" && f.user === "ivy", "ivy joins, olive sees");
      olive.write({ type: "send", room: "staff", text: "secret", cid: "p1" });
      const m = await ivy.take(inRoom("staff"), "the room's message");
      assert.deepEqual([m.id, m.from, m.text], [1, "olive", "secret"]);
      nosy.write({ type: "join", room: "staff" });
      await nosy.take(errorOf("forbidden"), "forbidden again");
      nosy.write({ type: "history", room: "staff" });
      await nosy.take(errorOf("not_member"), "no history for the uninvited");
      assert.deepEqual(messages(nosy, inRoom("staff")), [], "the uninvited see nothing");
      // Ivy's next welcome lists the room as hers, and private.
      const [, welcome] = await cluster.open(B, "ivy");
      assert.ok(welcome.rooms.includes("staff") && welcome.privateRooms.includes("staff"));
    },
};

for (const backend of BACKENDS) {
  Deno.test({
    name: `hub conformance on ${backend.name}`,
    ignore: backend.ignore,
    fn: async (t) => {
      await using place = await backend.setup();
      for (const [name, run] of Object.entries(CASES)) {
        await t.step(name, async () => {
          await using cluster = await place.cluster(3);
          await run(cluster);
        });
      }
    },
  });
}
