/**
 * The counters behind the connection limits. A socket may report its end
 * twice (`error`, then `close`), so giving a place back must count once, and
 * one socket ending must not give back the places of others still open.
 */

import assert from "node:assert/strict";
import { MinuteCounter, OpenCounter } from "../lib/limiter.ts";

Deno.test("OpenCounter counts each place given back once, however often its release is called", () => {
  const open = new OpenCounter();
  const first = open.open("alice");
  const second = open.open("alice");
  open.open("bob");
  assert.equal(open.count("alice"), 2);
  first();
  first();
  first();
  assert.equal(open.count("alice"), 1, "a repeated release gave back someone else's place");
  assert.equal(open.count("bob"), 1);
  second();
  assert.equal(open.count("alice"), 0);
  // A key with nothing open starts again from zero.
  const third = open.open("alice");
  assert.equal(open.count("alice"), 1);
  third();
  assert.equal(open.count("alice"), 0);
});

Deno.test("MinuteCounter allows `limit` events per key in a minute, then again in the next", () => {
  const counter = new MinuteCounter(2);
  const t = 1_000_000;
  assert.deepEqual([counter.take("a", t), counter.take("a", t + 1), counter.take("a", t + 2)], [
    true,
    true,
    false,
  ]);
  assert.equal(counter.take("b", t + 2), true, "another key has its own budget");
  assert.equal(counter.take("a", t + 59_999), false);
  assert.equal(counter.take("a", t + 60_000), true, "a new minute");
});
