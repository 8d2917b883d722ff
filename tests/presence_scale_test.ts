/**
 * Presence at scale, as a client sees it: changes arrive batched (one
 * `presence` frame per reader per `--fanout-interval`, each user in the state
 * they ended it in), `welcome` lists a bounded few of who is online with the
 * count, and `{"type":"online"}` pages through the rest in name order, on
 * one process and across instances on PostgreSQL.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type Frame, TestClient } from "./_client.ts";
import { ignoreWithoutPostgres, instances } from "./_pg.ts";
import { startServer } from "./_server.ts";
import { ONLINE_PAGE_DEFAULT, ONLINE_PAGE_MAX } from "../lib/protocol.ts";

const isType = (type: string) => (f: Frame) => f.type === type;

/** Sends `ping` and waits for the `pong`: whatever the server sent before it has arrived. */
async function ping(client: TestClient): Promise<void> {
  client.send({ type: "ping" });
  await client.next(isType("pong"));
}

/** Everyone's presence frames still queued, after a ping proves nothing else is on its way. */
async function presenceQueued(client: TestClient): Promise<Frame[]> {
  await ping(client);
  return client.queued.filter(isType("presence"));
}

/** Opens a chat.v1 connection as each user, all at once, and waits for every welcome. */
async function joinAll(origin: string, users: string[]): Promise<TestClient[]> {
  return await Promise.all(users.map(async (u) => (await TestClient.join(origin, u))[0]));
}

/** Closes every client (for `finally`). */
async function closeAll(clients: TestClient[]): Promise<void> {
  await Promise.all(clients.map((c) => c.close()));
}

/** Names `prefix1` … `prefixN`. */
const names = (prefix: string, n: number) =>
  Array.from({ length: n }, (_, i) => `${prefix}${i + 1}`);

Deno.test("users arriving within one interval reach each reader as ONE presence frame naming them all, never the reader itself", async () => {
  // An interval far longer than five arrivals take, so they surely share one.
  await using srv = await startServer({ settings: { fanoutInterval: 3 } });
  await using alice = (await TestClient.join(srv.origin, "alice"))[0];
  // The first change after a quiet spell goes out at once, and starts the interval.
  await using bob = (await TestClient.join(srv.origin, "bob"))[0];
  assert.deepEqual(await alice.next(isType("presence")), {
    type: "presence",
    online: ["bob"],
    offline: [],
  });

  const crowd = names("c", 5);
  const joined = await Promise.all(crowd.map((u) => TestClient.join(srv.origin, u)));
  const clients = joined.map(([c]) => c);
  try {
    for (const reader of [alice, bob]) {
      const frame = await reader.next(isType("presence"));
      assert.deepEqual([...frame.online].sort(), crowd);
      assert.deepEqual(frame.offline, []);
      assert.deepEqual(await presenceQueued(reader), [], "one frame for the whole batch");
    }
    // Each newcomer knows of the others, from its welcome or from the batch (which it gets
    // only if its welcome missed some of them), and never hears of itself.
    for (const [client, welcome] of joined) {
      const heard = (await presenceQueued(client)).flatMap((f) => f.online);
      const user = welcome.user as string;
      assert.ok(!heard.includes(user), `${user} heard of itself`);
      const known = new Set([...welcome.online, ...heard]);
      for (const other of crowd) assert.ok(known.has(other), `${user} never heard of ${other}`);
      if (heard.length > 0) assert.ok(heard.some((u) => !welcome.online.includes(u)), user);
    }
  } finally {
    await closeAll(clients);
  }
});

Deno.test("within one interval a user's last state wins: an arrival undone before it is sent is never heard of", async () => {
  await using srv = await startServer({ settings: { fanoutInterval: 3 } });
  await using alice = (await TestClient.join(srv.origin, "alice"))[0];
  const [bob] = await TestClient.join(srv.origin, "bob");
  await alice.next(isType("presence")); // bob: sent at once, the interval starts
  // In the interval: carol comes and goes, dave comes, bob goes and comes back. A departure
  // is recorded as the server sees the close, milliseconds after `close` resolves here.
  const [carol] = await TestClient.join(srv.origin, "carol");
  await using dave = (await TestClient.join(srv.origin, "dave"))[0];
  await carol.close();
  await bob.close();
  await using bob2 = (await TestClient.join(srv.origin, "bob"))[0];

  assert.deepEqual(await alice.next(isType("presence")), {
    type: "presence",
    online: ["dave"],
    offline: [],
  });
  assert.deepEqual(await presenceQueued(alice), []);

  // Then dave leaves: the next interval says so.
  await dave.close();
  assert.deepEqual(await alice.next(isType("presence")), {
    type: "presence",
    online: [],
    offline: ["dave"],
  });
  // bob's own return is news to others, never to bob.
  const toBob = await presenceQueued(bob2);
  assert.ok(toBob.length > 0);
  for (const f of toBob) assert.ok(![...f.online, ...f.offline].includes("bob"), JSON.stringify(f));
});

Deno.test("welcome lists at most --welcome-online users, DM partners first, with the count; online pages the rest in name order", async () => {
  await using srv = await startServer({ settings: { welcomeOnline: 3, fanoutInterval: 0.05 } });
  const crowd = names("u", 6);
  const clients = await joinAll(srv.origin, crowd);
  try {
    // zed has a DM with u6, the last by name: it is listed first all the same.
    const [zed0] = await TestClient.join(srv.origin, "zed");
    zed0.send({ type: "send", to: "u6", text: "hi u6", cid: "1" });
    await zed0.next(isType("message"));
    await zed0.close();

    const joined = await TestClient.join(srv.origin, "zed");
    await using zed = joined[0];
    const welcome = joined[1];
    assert.deepEqual(welcome.online, ["u6", "u1", "u2"]);
    assert.equal(welcome.onlineCount, 7);
    assert.equal(welcome.onlineMore, true);
    assert.equal(welcome.onlineAfter, "u2");

    const pages: Frame[] = [];
    let after = welcome.onlineAfter;
    for (let i = 0; i < 10; i++) {
      zed.send({ type: "online", after, limit: 2 });
      const page = await zed.next(isType("online"));
      pages.push(page);
      if (!page.more) break;
      after = page.users.at(-1);
    }
    assert.deepEqual(pages, [
      { type: "online", users: ["u3", "u4"], more: true },
      { type: "online", users: ["u5", "u6"], more: true },
      { type: "online", users: ["zed"], more: false },
    ]);
    // From the first, with the default page size.
    zed.send({ type: "online" });
    assert.deepEqual((await zed.next(isType("online"))).users, [...crowd, "zed"]);
  } finally {
    await closeAll(clients);
  }
});

Deno.test("each welcome's list of who is online shows the arrivals and departures among the first names before it", async () => {
  await using srv = await startServer({ settings: { welcomeOnline: 3, fanoutInterval: 0.05 } });
  const clients = await joinAll(srv.origin, ["m1", "m2", "m3", "m4"]);
  const welcomeOf = async (user: string) => {
    const [client, welcome] = await TestClient.join(srv.origin, user);
    clients.push(client);
    return { online: welcome.online, onlineCount: welcome.onlineCount };
  };
  try {
    assert.deepEqual(await welcomeOf("x1"), { online: ["m1", "m2", "m3"], onlineCount: 5 });
    // Before the first three by name: every later welcome lists it.
    const [a] = await TestClient.join(srv.origin, "a");
    clients.push(a);
    assert.deepEqual(await welcomeOf("x2"), { online: ["a", "m1", "m2"], onlineCount: 7 });
    await clients[0].close(); // m1
    await a.next((f) => f.type === "presence" && (f.offline ?? []).includes("m1"));
    assert.deepEqual(await welcomeOf("x3"), { online: ["a", "m2", "m3"], onlineCount: 7 });
  } finally {
    await closeAll(clients);
  }
});

Deno.test("an online request out of bounds is a bad_frame error, and a huge limit is capped", async () => {
  await using srv = await startServer();
  await using alice = (await TestClient.join(srv.origin, "alice"))[0];
  for (
    const frame of [
      { type: "online", limit: 0 },
      { type: "online", limit: 1.5 },
      { type: "online", after: 7 },
      { type: "online", after: "x".repeat(65) },
    ]
  ) {
    alice.send(frame);
    const error = await alice.next(isType("error"));
    assert.equal(error.code, "bad_frame", JSON.stringify(frame));
  }
  alice.send({ type: "online", limit: 10 ** 9 });
  assert.deepEqual(await alice.next(isType("online")), {
    type: "online",
    users: ["alice"],
    more: false,
  });
  assert.ok(ONLINE_PAGE_MAX >= ONLINE_PAGE_DEFAULT);
});

Deno.test("the page asks for pages of ONLINE_PAGE_DEFAULT users, the server's own default", async () => {
  const js = await Deno.readTextFile(new URL("../static/app.js", import.meta.url));
  assert.match(js, new RegExp(`^const ONLINE_PAGE = ${ONLINE_PAGE_DEFAULT};$`, "m"));
});

Deno.test({
  name: "on PostgreSQL, welcome counts and pages who is online on every instance",
  ignore: ignoreWithoutPostgres(),
  async fn() {
    await using cluster = await instances(2, ["--welcome-online", "2"]);
    const [s1, s2] = cluster.servers;
    const clients = [
      ...await joinAll(s1.origin, ["a1", "a2", "a3"]),
      ...await joinAll(s2.origin, ["b1", "b2"]),
    ];
    try {
      await using zed = await TestClient.connect(s2.origin, "zed");
      const hello = await zed.next(isType("welcome"));
      assert.deepEqual(hello.online, ["a1", "a2"]);
      assert.equal(hello.onlineCount, 6);
      assert.equal(hello.onlineMore, true);
      const seen: string[] = [];
      let after = hello.onlineAfter;
      for (let i = 0; i < 10; i++) {
        zed.send({ type: "online", after, limit: 2 });
        const page = await zed.next(isType("online"));
        seen.push(...page.users);
        if (!page.more) break;
        after = page.users.at(-1);
      }
      assert.deepEqual(seen, ["a3", "b1", "b2", "zed"]);
    } finally {
      await closeAll(clients);
    }
  },
});

Deno.test({
  name:
    "on PostgreSQL, while dozens arrive six at a time on two instances, each welcome lists itself and everyone welcomed before it connected",
  ignore: ignoreWithoutPostgres(),
  async fn() {
    await using cluster = await instances(2, ["--welcome-online", "100"]);
    const [s1, s2] = cluster.servers;
    const arrivals: { user: string; connected: number; welcomed: number; online: string[] }[] = [];
    const clients: TestClient[] = [];
    try {
      // Six at a time without pause: while some wait for their welcome, others connect.
      await Promise.all(Array.from({ length: 6 }, async (_, lane) => {
        for (const user of names(`l${lane}u`, 6)) {
          const connected = performance.now();
          const [client, welcome] = await TestClient.join(lane % 2 ? s1.origin : s2.origin, user);
          clients.push(client);
          arrivals.push({ user, connected, welcomed: performance.now(), online: welcome.online });
          assert.ok(welcome.onlineCount >= welcome.online.length, user);
        }
      }));
      for (const a of arrivals) {
        const before = arrivals.filter((b) => b.welcomed < a.connected).map((b) => b.user);
        const missing = [a.user, ...before].filter((u) => !a.online.includes(u));
        assert.deepEqual(missing, [], `${a.user}'s welcome lacks ${missing.join(", ")}`);
      }
      assert.ok(arrivals.some((a) => arrivals.some((b) => b.welcomed < a.connected)));
    } finally {
      await closeAll(clients);
    }
  },
});

Deno.test("a user welcomed while arrivals wait for the next interval is not told of them again", async () => {
  await using srv = await startServer({ settings: { fanoutInterval: 3 } });
  await using alice = (await TestClient.join(srv.origin, "alice"))[0];
  await using bob = (await TestClient.join(srv.origin, "bob"))[0];
  await alice.next(isType("presence")); // bob: sent at once, the interval starts
  // carol's arrival waits for the interval's end; dave's welcome already lists her.
  await using carol = (await TestClient.join(srv.origin, "carol"))[0];
  const [dave, welcome] = await TestClient.join(srv.origin, "dave");
  await using _dave = dave;
  assert.deepEqual([...welcome.online].sort(), ["alice", "bob", "carol", "dave"]);
  // The interval ends: the others hear of carol and dave, dave of nothing he was not told.
  assert.deepEqual(await alice.next(isType("presence")), {
    type: "presence",
    online: ["carol", "dave"],
    offline: [],
  });
  assert.deepEqual(await carol.next(isType("presence")), {
    type: "presence",
    online: ["dave"],
    offline: [],
  });
  assert.deepEqual(await presenceQueued(dave), []);
  assert.deepEqual(await presenceQueued(bob), [{
    type: "presence",
    online: ["carol", "dave"],
    offline: [],
  }]);
});
