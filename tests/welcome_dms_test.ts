/**
 * A welcome's DMs, as a client sees them: at most `--welcome-dms` of them,
 * in partner order with their read state, and `{"type":"dms"}` pages through
 * the rest, so a user whom thousands have written to still gets a welcome
 * that fits their socket's buffer.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type Frame, TestClient } from "./_client.ts";
import { startServer } from "./_server.ts";
import { DMS_PAGE_DEFAULT, DMS_PAGE_MAX } from "../lib/protocol.ts";
import { openStore } from "../lib/sql/open.ts";
import { dmKey } from "../lib/store.ts";

const isType = (type: string) => (f: Frame) => f.type === type;

/** The DMs of a welcome or a `dms` page, as `partner:last/read/unread`. */
const dmsOf = (conversations: Frame[]) =>
  conversations.filter((c) => c.with !== undefined).map((c) =>
    `${c.with}:${c.last}/${c.read}/${c.unread}`
  );

/** Pages with `{"type":"dms"}` from `after` until `more` is false; every page, in order. */
async function pageAll(client: TestClient, after: string | undefined, limit?: number) {
  const pages: Frame[] = [];
  for (let i = 0; i < 100; i++) {
    client.send({ type: "dms", ...(after === undefined ? {} : { after }), limit });
    const page = await client.next(isType("dms"));
    pages.push(page);
    if (!page.more) return pages;
    after = page.conversations.at(-1).with;
  }
  throw new Error("more than 100 pages");
}

Deno.test("a welcome lists at most --welcome-dms DMs in partner order with their read state; dms pages the rest", async () => {
  await using store = await openStore(":memory:");
  await using srv = await startServer({ store, settings: { welcomeDms: 3 } });
  // Seven partners write to zed (p2 twice); zed has read p4's.
  for (const p of ["p5", "p1", "p7", "p3", "p2", "p6", "p4", "p2"]) {
    await store.append({ to: "zed", from: p, text: `from ${p}` });
  }
  await store.markRead("zed", dmKey("zed", "p4"), 1);

  const [zed, welcome] = await TestClient.join(srv.origin, "zed");
  await using _zed = zed;
  assert.deepEqual(dmsOf(welcome.conversations), ["p1:1/0/1", "p2:2/0/2", "p3:1/0/1"]);
  assert.equal(welcome.dmsMore, true);
  assert.equal(welcome.dmsAfter, "p3");

  assert.deepEqual(
    (await pageAll(zed, welcome.dmsAfter, 2)).map((p) => [dmsOf(p.conversations), p.more]),
    [
      [["p4:1/1/0", "p5:1/0/1"], true],
      [["p6:1/0/1", "p7:1/0/1"], false],
    ],
  );
  // From the first, with the default page size.
  zed.send({ type: "dms" });
  assert.equal((await zed.next(isType("dms"))).conversations.length, 7);

  // Within the limit, nothing more to page.
  const [p1, own] = await TestClient.join(srv.origin, "p1");
  await using _p1 = p1;
  assert.deepEqual(dmsOf(own.conversations), ["zed:1/1/0"]);
  assert.equal(own.dmsMore, false);
  assert.equal(own.dmsAfter, undefined);
});

Deno.test("a user written to by thousands gets a welcome of the same small size, and pages every DM", async () => {
  // 3,000 DM summaries are ~130 KB of welcome, read and encoded on every connect, and a
  // spammer could make it as large as they liked; a page of 200 is ~9 KB.
  await using store = await openStore(":memory:");
  await using srv = await startServer({ store });
  const partners = Array.from({ length: 3000 }, (_, i) => `fan${String(i).padStart(4, "0")}`);
  await Promise.all(partners.map((from) => store.append({ to: "star", from, text: "hi!" })));

  const [star, welcome] = await TestClient.join(srv.origin, "star");
  await using _star = star;
  assert.ok(JSON.stringify(welcome).length < 16 * 1024, `${JSON.stringify(welcome).length} bytes`);
  assert.deepEqual(
    dmsOf(welcome.conversations),
    partners.slice(0, DMS_PAGE_DEFAULT).map((p) => `${p}:1/0/1`),
  );
  assert.equal(welcome.dmsMore, true);
  const pages = await pageAll(star, welcome.dmsAfter, DMS_PAGE_MAX);
  assert.deepEqual(pages.map((p) => p.conversations.length), [500, 500, 500, 500, 500, 300]);
  assert.deepEqual(
    pages.flatMap((p) => dmsOf(p.conversations)),
    partners.slice(DMS_PAGE_DEFAULT).map((p) => `${p}:1/0/1`),
  );
});

Deno.test("a dms request out of bounds is a bad_frame error, and a huge limit is capped", async () => {
  await using store = await openStore(":memory:");
  await using srv = await startServer({ store });
  const partners = Array.from({ length: DMS_PAGE_MAX + 1 }, (_, i) => `q${i}`);
  await Promise.all(partners.map((from) => store.append({ to: "alice", from, text: "hi" })));
  await using alice = (await TestClient.join(srv.origin, "alice"))[0];
  for (
    const frame of [
      { type: "dms", limit: 0 },
      { type: "dms", limit: -3 },
      { type: "dms", limit: 1.5 },
      { type: "dms", limit: "10" },
      { type: "dms", after: 7 },
      { type: "dms", after: "x".repeat(65) },
    ]
  ) {
    alice.send(frame);
    const error = await alice.next(isType("error"));
    assert.equal(error.code, "bad_frame", JSON.stringify(frame));
  }
  alice.send({ type: "dms", limit: 10 ** 9 });
  const page = await alice.next(isType("dms"));
  assert.equal(page.conversations.length, DMS_PAGE_MAX);
  assert.equal(page.more, true);
});
