/**
 * Several instances (real main.ts processes) on one real PostgreSQL, as a
 * user would run them behind a proxy with no sticky sessions: whichever
 * instance a tab lands on, it sees the same chat.
 */

import assert from "node:assert/strict";
import { type Frame, isPresence, TestClient, tokens } from "./_client.ts";
import { ignoreWithoutPostgres, instances } from "./_pg.ts";
import type { SpawnedServer } from "./_server.ts";
import { canonicalName } from "../lib/identity.ts";

const ignore = ignoreWithoutPostgres();

/**
 * Opens a tab of `user` on `origin` and waits for its welcome. The name is
 * claimed by its first tab anywhere in the cluster; tabs on other instances
 * present that token, as a page behind one address would.
 */
async function tab(
  cluster: { servers: SpawnedServer[] },
  origin: string,
  user: string,
  query = "",
): Promise<[TestClient, Frame]> {
  const token = cluster.servers
    .map((s) => tokens.get(`${s.origin} ${canonicalName(user)}`))
    .find((t) => t !== undefined);
  return await TestClient.join(origin, user, {
    token: token ?? null,
    query,
    // A send while PostgreSQL is down is answered store_failed after the store's 5 s of retries.
    timeoutMs: 10_000,
  });
}

const isMessage = (text: string) => (f: Frame) => f.type === "message" && f.text === text;

Deno.test({
  name:
    "three instances: a DM reaches every tab of the recipient on the other two, room messages, typing and presence are the same everywhere",
  ignore,
  async fn() {
    await using cluster = await instances(3);
    const [s1, s2, s3] = cluster.servers;
    const [alice] = await tab(cluster, s1.origin, "alice");
    const [bob2] = await tab(cluster, s2.origin, "bob");
    const [bob3] = await tab(cluster, s3.origin, "bob");
    const [carol, carolWelcome] = await tab(cluster, s3.origin, "carol");
    // Everyone online anywhere is in a new tab's welcome, whichever instance it is on.
    assert.deepEqual([...carolWelcome.online].sort(), ["alice", "bob", "carol"]);
    assert.equal(carolWelcome.onlineCount, 3);
    assert.equal(carolWelcome.onlineMore, false);
    await alice.next(isPresence("carol", true));

    alice.send({ type: "send", to: "bob", text: "你好 bob", cid: "dm-1" });
    const ack = await alice.next(isMessage("你好 bob"));
    for (const b of [bob2, bob3]) {
      const got = await b.next(isMessage("你好 bob"));
      assert.deepEqual(got, ack);
      assert.equal(got.from, "alice");
    }

    carol.send({ type: "send", room: "lobby", text: "hello lobby" });
    const stored = await carol.next(isMessage("hello lobby"));
    for (const c of [alice, bob2, bob3]) {
      assert.deepEqual(await c.next(isMessage("hello lobby")), stored);
    }

    // A room joined on one instance: members elsewhere see the join, the messages and typing.
    const joiners: Array<[TestClient, string]> = [[alice, "alice"], [bob2, "bob"], [
      carol,
      "carol",
    ]];
    for (const [c] of joiners) c.send({ type: "join", room: "den" });
    for (const [c, name] of joiners) {
      await c.next((f) => f.type === "joined" && f.room === "den" && f.user === name);
    }
    // bob's other tab became a member too.
    await bob3.next((f) => f.type === "joined" && f.room === "den" && f.user === "bob");
    alice.send({ type: "typing", room: "den" });
    for (const c of [bob2, bob3, carol]) {
      await c.next((f) => f.type === "typing" && f.room === "den" && f.from === "alice");
    }
    alice.send({ type: "send", room: "den", text: "in the den" });
    const den = await alice.next(isMessage("in the den"));
    for (const c of [bob2, bob3, carol]) {
      assert.deepEqual(await c.next(isMessage("in the den")), den);
    }

    // bob stays online while a tab anywhere is open.
    await bob2.close();
    carol.send({ type: "send", to: "bob", text: "still there?" });
    await bob3.next(isMessage("still there?"));
    assert.equal(
      alice.queued.some(isPresence("bob", false)),
      false,
      "bob went offline while his other tab was open",
    );
    await bob3.close();
    await alice.next(isPresence("bob", false));
    await carol.next(isPresence("bob", false));
    await alice.close();
    await carol.close();
  },
});

Deno.test({
  name: "a user who reconnects to another instance with resume gets exactly what they missed",
  ignore,
  async fn() {
    await using cluster = await instances(2);
    const [s1, s2] = cluster.servers;
    const [alice] = await tab(cluster, s1.origin, "alice");
    const [bob, welcome] = await tab(cluster, s1.origin, "bob", "?resume");
    bob.send({
      type: "resume",
      conversations: welcome.conversations.map((c: Frame) => ({ ...c, after: c.last })),
    });
    for (let i = 1; i <= 3; i++) {
      alice.send({ type: "send", to: "bob", text: `seen ${i}` });
      await bob.next(isMessage(`seen ${i}`));
    }
    const last = (await alice.next(isMessage("seen 3"))).id;
    await bob.close();
    for (let i = 1; i <= 4; i++) {
      alice.send({ type: "send", to: "bob", text: `missed ${i}` });
      await alice.next(isMessage(`missed ${i}`));
    }
    // Back on the other instance, from where its view ended.
    const [again] = await tab(cluster, s2.origin, "bob", "?resume");
    again.send({ type: "resume", conversations: [{ with: "alice", after: last }] });
    const resumed = await again.next((f) => f.type === "resumed");
    assert.deepEqual(
      again.queued.filter((f) => f.type === "message").map((f) => f.text),
      ["missed 1", "missed 2", "missed 3", "missed 4"],
    );
    assert.equal(resumed.more, false);
    // Live traffic carries on from there, once.
    alice.send({ type: "send", to: "bob", text: "live" });
    const live = await again.next(isMessage("live"));
    assert.equal(live.id, resumed.to + 1);
    for (let i = 1; i <= 4; i++) await again.next(isMessage(`missed ${i}`));
    await alice.send({ type: "ping" });
    await alice.next((f) => f.type === "pong");
    assert.equal(again.queued.filter((f) => f.type === "message").length, 0);
    await alice.close();
    await again.close();
  },
});

Deno.test({
  name:
    "a SIGKILLed instance loses nothing acknowledged, and its users show offline elsewhere within the presence TTL",
  ignore,
  async fn() {
    const TTL = 2;
    await using cluster = await instances(2, ["--presence-ttl", String(TTL)]);
    const [s1, s2] = cluster.servers;
    const [alice] = await tab(cluster, s1.origin, "alice");
    const [carol] = await tab(cluster, s2.origin, "carol");
    await alice.next(isPresence("carol", true));
    const acked: number[] = [];
    for (let i = 0; i < 20; i++) carol.send({ type: "send", room: "lobby", text: `c${i}` });
    for (let i = 0; i < 20; i++) acked.push((await carol.next(isMessage(`c${i}`))).id);
    await s2.kill("SIGKILL");
    const killed = Date.now();
    const offline = await alice.next(isPresence("carol", false));
    const took = Date.now() - killed;
    assert.ok(offline && took <= TTL * 1000, `carol went offline after ${took} ms (TTL ${TTL} s)`);
    alice.send({ type: "history", room: "lobby", limit: 100 });
    const page = await alice.next((f) => f.type === "history");
    const stored = page.messages.filter((m: Frame) => m.from === "carol").map((m: Frame) => m.id);
    assert.deepEqual(stored, acked);
    await alice.close();
    await carol.closed;
  },
});

Deno.test({
  name:
    "PostgreSQL SIGKILLed mid-traffic: sends fail with store_failed, sockets stay open, and chat across instances resumes by itself once it is back",
  ignore,
  async fn() {
    await using cluster = await instances(2);
    const [s1, s2] = cluster.servers;
    const [alice] = await tab(cluster, s1.origin, "alice");
    const [bob] = await tab(cluster, s2.origin, "bob");
    alice.send({ type: "send", to: "bob", text: "before" });
    await bob.next(isMessage("before"));

    await cluster.pg.crash();
    alice.send({ type: "send", to: "bob", text: "while down", cid: "down-1" });
    const failed = await alice.next((f) => f.type === "error");
    assert.equal(failed.code, "store_failed");
    assert.equal(failed.ref, "down-1");

    await cluster.pg.restart();
    const back = Date.now();
    // The page re-sends with the same cid until it is acknowledged; so does this.
    let ack: Frame | undefined;
    while (!ack) {
      alice.send({ type: "send", to: "bob", text: "after", cid: "after-1" });
      const answer = await alice.next((f) =>
        (f.type === "message" && f.cid === "after-1") || (f.type === "error" && f.ref === "after-1")
      );
      if (answer.type === "message") ack = answer;
      else await new Promise((r) => setTimeout(r, 100));
      assert.ok(Date.now() - back < 10_000, "sends still fail 10 s after PostgreSQL came back");
    }
    assert.deepEqual(await bob.next(isMessage("after")), ack);
    // The LISTEN is back too: typing (which travels only as a notification) arrives. Typing is
    // ephemeral, one sent while a notification connection is still reconnecting is gone, so
    // bob keeps typing as the page does (every 250 ms here) until alice sees it.
    const typed = (f: Frame) => f.type === "typing" && f.from === "bob";
    const seen = alice.seen(typed);
    bob.send({ type: "typing", to: "alice" });
    const typing = setInterval(() => bob.send({ type: "typing", to: "alice" }), 250);
    try {
      await seen;
    } finally {
      clearInterval(typing);
    }
    const took = Date.now() - back;
    // Reconnects are retried at most a second apart (the store's pool, the LISTEN connection).
    assert.ok(took < 5000, `chat resumed ${took} ms after PostgreSQL was back`);
    // Nobody was disconnected.
    assert.equal(alice.socket.readyState, WebSocket.OPEN);
    assert.equal(bob.socket.readyState, WebSocket.OPEN);
    await alice.close();
    await bob.close();
  },
});

Deno.test({
  name:
    "tabs opened all at once on three instances get no more places than --max-connections-per-user",
  ignore,
  async fn() {
    await using cluster = await instances(3, ["--max-connections-per-user", "3"]);
    const [first] = await tab(cluster, cluster.servers[0].origin, "eve");
    const tries = await Promise.allSettled(
      Array.from({ length: 30 }, (_, i) => tab(cluster, cluster.servers[i % 3].origin, "eve")),
    );
    const opened = tries.flatMap((t) => t.status === "fulfilled" ? [t.value[0]] : []);
    try {
      assert.equal(opened.length, 2, "two places were left");
      for (const t of tries) {
        if (t.status === "rejected") assert.match(String(t.reason), /could not connect/);
      }
    } finally {
      await Promise.all([first, ...opened].map((c) => c.close()));
    }
  },
});

Deno.test({
  name: "per-user limits hold across instances: connections per user and the send budget",
  ignore,
  async fn() {
    await using cluster = await instances(3, [
      "--max-connections-per-user",
      "2",
      "--send-rate",
      "0.01",
      "--send-burst",
      "2",
    ]);
    const [s1, s2, s3] = cluster.servers;
    const [one] = await tab(cluster, s1.origin, "dan");
    const [two] = await tab(cluster, s2.origin, "dan");
    await assert.rejects(tab(cluster, s3.origin, "dan"), /could not connect/);
    one.send({ type: "send", room: "lobby", text: "one" });
    await one.next(isMessage("one"));
    two.send({ type: "send", room: "lobby", text: "two" });
    await two.next(isMessage("two"));
    // The third message, on yet another instance, is over the budget the other two used.
    await one.close();
    // The closed tab's slot is given back when its instance sees the close, a database write
    // after the client's close event: a tab opened at that moment may still find two.
    let three: TestClient | undefined;
    for (const deadline = Date.now() + 5000; !three;) {
      three = (await tab(cluster, s3.origin, "dan").catch((error) => {
        if (Date.now() > deadline) throw error;
        return [undefined];
      }))[0];
    }
    three.send({ type: "send", room: "lobby", text: "three", cid: "x" });
    const refused = await three.next((f) => f.type === "error");
    assert.equal(refused.code, "rate_limited");
    assert.ok(refused.retry_after > 0);
    await two.close();
    await three.close();
  },
});

Deno.test({
  name:
    "a burst of sends from one user on two instances at once gets exactly the send budget, in each tab's order",
  ignore,
  async fn() {
    // The sends of one moment are taken from the budget together, in one statement per
    // instance: together they still get exactly the burst, and each tab's accepted messages
    // are the first it sent.
    await using cluster = await instances(2, ["--send-rate", "0.01", "--send-burst", "5"]);
    const [s1, s2] = cluster.servers;
    const [one] = await tab(cluster, s1.origin, "erin");
    const [two] = await tab(cluster, s2.origin, "erin");
    const answers = async (client: TestClient, prefix: string) => {
      for (let i = 0; i < 4; i++) {
        client.send({ type: "send", room: "lobby", text: `${prefix}${i}`, cid: `${prefix}${i}` });
      }
      const got: string[] = [];
      while (got.length < 4) {
        const f = await client.next((f) =>
          (f.type === "message" && f.from === "erin" && f.cid?.startsWith(prefix)) ||
          (f.type === "error" && f.ref?.startsWith(prefix))
        );
        got.push(f.type === "message" ? f.cid : `refused ${f.ref} ${f.code}`);
      }
      return got;
    };
    const [a, b] = await Promise.all([answers(one, "a"), answers(two, "b")]);
    const accepted = [...a, ...b].filter((x) => !x.startsWith("refused"));
    assert.equal(accepted.length, 5, `${a} / ${b}`);
    for (const [got, prefix] of [[a, "a"], [b, "b"]] as const) {
      const ok = got.filter((x) => !x.startsWith("refused"));
      // The first n sends of a tab are the accepted ones, acknowledged in the order sent.
      assert.deepEqual(ok, ok.map((_, i) => `${prefix}${i}`), `${got}`);
      for (const x of got.filter((x) => x.startsWith("refused"))) assert.match(x, /rate_limited$/);
    }
    await one.close();
    await two.close();
  },
});

Deno.test({
  name:
    "with --pg-poll-ms (for poolers that cannot LISTEN) DMs, room messages, typing and presence still cross instances",
  ignore,
  async fn() {
    await using cluster = await instances(2, ["--pg-poll-ms", "100"]);
    const [s1, s2] = cluster.servers;
    const [alice] = await tab(cluster, s1.origin, "alice");
    const [bob] = await tab(cluster, s2.origin, "bob");
    await alice.next(isPresence("bob", true));
    alice.send({ type: "send", to: "bob", text: "polled" });
    assert.deepEqual(await bob.next(isMessage("polled")), await alice.next(isMessage("polled")));
    bob.send({ type: "typing", to: "alice" });
    await alice.next((f) => f.type === "typing" && f.from === "bob");
    for (let i = 0; i < 5; i++) bob.send({ type: "send", room: "lobby", text: `p${i}` });
    for (let i = 0; i < 5; i++) await alice.next(isMessage(`p${i}`));
    await bob.close();
    await alice.next(isPresence("bob", false));
    await alice.close();
  },
});

Deno.test({
  name:
    "an instance whose LISTEN connection drops reads back from the table what was announced meanwhile",
  ignore,
  async fn() {
    await using cluster = await instances(2);
    const [s1, s2] = cluster.servers;
    const [alice] = await tab(cluster, s1.origin, "alice");
    const [bob] = await tab(cluster, s2.origin, "bob", "?resume");
    bob.send({ type: "resume", conversations: [] });
    alice.send({ type: "send", to: "bob", text: "before" });
    await bob.next(isMessage("before"));
    const { default: postgres } = await import("npm:postgres@^3.4.9");
    const admin = postgres(cluster.pg.url, { max: 1, onnotice: () => {} });
    try {
      // Keep cutting both instances' LISTEN sessions (they come back by themselves) while alice
      // sends: what is announced while a session is down reaches nobody, and must be read back.
      const cut = () =>
        admin`
          SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE query ILIKE 'listen %' AND pid <> pg_backend_pid()`;
      const until = Date.now() + 600;
      const cutting = (async () => {
        while (Date.now() < until) {
          await cut();
          await new Promise((r) => setTimeout(r, 5));
        }
      })();
      for (let i = 0; i < 3; i++) {
        await new Promise((r) => setTimeout(r, 100));
        alice.send({ type: "send", to: "bob", text: `meanwhile ${i}` });
        await alice.next(isMessage(`meanwhile ${i}`));
      }
      await cutting;
      for (let i = 0; i < 3; i++) await bob.next(isMessage(`meanwhile ${i}`));
    } finally {
      await admin.end();
    }
    await alice.close();
    await bob.close();
  },
});

Deno.test({
  name: "a user whose last two tabs, on two instances, close at the same moment goes offline",
  ignore,
  async fn() {
    await using cluster = await instances(2);
    const [s1, s2] = cluster.servers;
    const [alice] = await tab(cluster, s1.origin, "alice");
    for (let round = 0; round < 8; round++) {
      const [one] = await tab(cluster, s1.origin, "bob");
      const [two] = await tab(cluster, s2.origin, "bob");
      await alice.next(isPresence("bob", true));
      await Promise.all([one.close(), two.close()]);
      await alice.next(isPresence("bob", false));
    }
    await alice.close();
  },
});

Deno.test({
  name:
    "across instances: an invitation reaches the invitee's tab elsewhere, and logging out everywhere closes the user's tabs on every instance",
  ignore,
  async fn() {
    await using cluster = await instances(2);
    const [s1, s2] = cluster.servers;
    const [alice] = await tab(cluster, s1.origin, "alice");
    const [bob1] = await tab(cluster, s1.origin, "bob");
    const [bob2] = await tab(cluster, s2.origin, "bob");
    alice.send({ type: "create", room: "attic", private: true });
    await alice.next((f) => f.type === "joined" && f.room === "attic");
    alice.send({ type: "invite", room: "attic", user: "bob" });
    for (const b of [bob1, bob2]) {
      assert.deepEqual(
        await b.next((f) => f.type === "invited"),
        { type: "invited", room: "attic", by: "alice" },
      );
    }
    bob2.send({ type: "join", room: "attic" });
    await alice.next((f) => f.type === "joined" && f.room === "attic" && f.user === "bob");
    bob1.send({ type: "logout", everywhere: true });
    for (const b of [bob1, bob2]) assert.equal((await b.closed).code, 4001);
    await alice.close();
  },
});
