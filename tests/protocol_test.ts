/** The frame parser, names and settings: the places where outside input becomes typed. */

import assert from "node:assert/strict";
import fc from "npm:fast-check@4";
import { parseName } from "../lib/names.ts";
import { parseClientFrame, parseLegacyFrame, toLegacy } from "../lib/protocol.ts";
import { DEFAULT_SETTINGS, parseSettings } from "../lib/settings.ts";

const LIMITS = { maxTextLength: 4000 };
const parse = (frame: unknown) => parseClientFrame(JSON.stringify(frame), LIMITS);

Deno.test("parseName accepts letters of any script, digits and _ - .", () => {
  for (const name of ["alice", "小明", "Zoë", "a_b-c.d", "Ünïcödé", "x".repeat(32), "عمر"]) {
    assert.deepEqual(parseName(name), { ok: true, name: name.normalize("NFC") }, name);
  }
});

Deno.test("parseName refuses empty, long, spaced, slashed, markup and dot names", () => {
  for (
    const name of [
      "",
      "x".repeat(33),
      "a b",
      "a/b",
      "<script>",
      ".",
      "..",
      "a\u0000",
      "a\u202eb",
      7,
      null,
    ]
  ) {
    assert.equal(parseName(name).ok, false, String(name));
  }
});

Deno.test("parseName normalises to NFC so one name has one spelling", () => {
  const decomposed = "Zoe\u0308";
  assert.deepEqual(parseName(decomposed), { ok: true, name: "Zoë" });
});

Deno.test("parseClientFrame reads every chat.v1 frame", () => {
  assert.deepEqual(parse({ type: "ping" }), { ok: true, frame: { type: "ping" } });
  assert.deepEqual(parse({ type: "join", room: "rust" }), {
    ok: true,
    frame: { type: "join", room: "rust" },
  });
  assert.deepEqual(parse({ type: "send", room: "lobby", text: "hi", cid: "c" }), {
    ok: true,
    frame: { type: "send", room: "lobby", text: "hi", cid: "c" },
  });
  assert.deepEqual(parse({ type: "send", to: "小明", text: "你好" }), {
    ok: true,
    frame: { type: "send", to: "小明", text: "你好" },
  });
  assert.deepEqual(parse({ type: "history", with: "bob", before: 10, limit: 500 }), {
    ok: true,
    frame: { type: "history", with: "bob", before: 10, limit: 200 },
  });
  assert.deepEqual(parse({ type: "history", room: "lobby" }), {
    ok: true,
    frame: { type: "history", room: "lobby", limit: 50 },
  });
  assert.deepEqual(parse({ type: "read", room: "lobby", id: 3 }), {
    ok: true,
    frame: { type: "read", room: "lobby", id: 3 },
  });
  assert.deepEqual(
    parse({
      type: "resume",
      conversations: [{ room: "lobby", after: 0 }, { with: "bob", after: 4 }],
    }),
    {
      ok: true,
      frame: {
        type: "resume",
        conversations: [{ room: "lobby", after: 0 }, { with: "bob", after: 4 }],
      },
    },
  );
});

Deno.test("parseClientFrame refuses bad frames with the documented codes", () => {
  const cases: Array<[string, string]> = [
    ["", "bad_frame"],
    ["{", "bad_frame"],
    ["null", "bad_frame"],
    ["[]", "bad_frame"],
    ['"send"', "bad_frame"],
    ["{}", "bad_frame"],
    ['{"type":7}', "bad_frame"],
    ['{"type":"nope"}', "unknown_type"],
    ['{"type":"send","room":"lobby","to":"bob","text":"x"}', "bad_frame"],
    ['{"type":"send","text":"x"}', "bad_frame"],
    ['{"type":"send","room":"lobby","text":5}', "bad_frame"],
    ['{"type":"send","room":"lobby","text":"   "}', "bad_frame"],
    ['{"type":"send","room":"a b","text":"x"}', "bad_name"],
    [`{"type":"send","room":"lobby","text":"${"x".repeat(4001)}"}`, "too_large"],
    [`{"type":"send","room":"lobby","text":"x","cid":"${"c".repeat(65)}"}`, "bad_frame"],
    ['{"type":"history","room":"lobby","limit":0}', "bad_frame"],
    ['{"type":"history","room":"lobby","before":-1}', "bad_frame"],
    ['{"type":"read","room":"lobby","id":1.5}', "bad_frame"],
    ['{"type":"resume","conversations":{}}', "bad_frame"],
    ['{"type":"resume","conversations":[{"room":"lobby"}]}', "bad_frame"],
  ];
  for (const [raw, code] of cases) {
    const result = parseClientFrame(raw, LIMITS);
    assert.equal(result.ok, false, raw.slice(0, 60));
    if (!result.ok) assert.equal(result.error.code, code, raw.slice(0, 60));
  }
});

Deno.test("parseClientFrame ignores __proto__ and inherited keys", () => {
  const result = parseClientFrame('{"__proto__":{"type":"ping"},"constructor":{"x":1}}', LIMITS);
  assert.equal(result.ok, false);
  const polluted = parseClientFrame('{"type":"ping","__proto__":{"polluted":true}}', LIMITS);
  assert.deepEqual(polluted, { ok: true, frame: { type: "ping" } });
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
});

Deno.test("parseLegacyFrame reads the original page's frames", () => {
  assert.deepEqual(parseLegacyFrame('{"to_user":"bob","msg":"hi"}', LIMITS), {
    ok: true,
    frame: { to_user: "bob", msg: "hi" },
  });
  assert.deepEqual(parseLegacyFrame('{"to_user":"","msg":"all"}', LIMITS), {
    ok: true,
    frame: { msg: "all" },
  });
  assert.deepEqual(parseLegacyFrame('{"msg":"all"}', LIMITS), { ok: true, frame: { msg: "all" } });
  assert.equal(parseLegacyFrame('{"to_user":"bob"}', LIMITS).ok, false);
  assert.deepEqual(
    toLegacy({ id: 1, to: "bob", from: "alice", text: "hi", ts: 5 }),
    { from_user: "alice", to_user: "bob", msg: "hi", id: 1, ts: 5 },
  );
});

Deno.test("parseClientFrame never throws and always answers a frame or an error, over 10,000 generated inputs", () => {
  const frameLike = fc.record({
    type: fc.constantFrom(
      "send",
      "join",
      "leave",
      "history",
      "typing",
      "read",
      "resume",
      "ping",
      "x",
      1,
      null,
    ),
    room: fc.oneof(fc.string(), fc.constant("lobby"), fc.integer(), fc.constant(undefined)),
    to: fc.oneof(fc.string(), fc.constant("bob"), fc.constant(undefined)),
    with: fc.oneof(fc.string(), fc.constant(undefined)),
    text: fc.oneof(
      fc.string(),
      fc.string({ minLength: 3990, maxLength: 4010 }),
      fc.integer(),
      fc.constant(undefined),
    ),
    cid: fc.oneof(fc.string(), fc.integer(), fc.constant(undefined)),
    id: fc.oneof(fc.integer(), fc.double(), fc.constant(undefined)),
    before: fc.oneof(fc.integer(), fc.string(), fc.constant(undefined)),
    limit: fc.oneof(fc.integer(), fc.constant(undefined)),
    conversations: fc.oneof(fc.array(fc.anything(), { maxLength: 5 }), fc.anything()),
  }, { requiredKeys: ["type"] });
  const input = fc.oneof(
    fc.string(),
    fc.json(),
    frameLike.map((f) => JSON.stringify(f)),
    fc.anything().map((v) => JSON.stringify(v) ?? "undefined"),
  );
  fc.assert(
    fc.property(input, (raw) => {
      for (const result of [parseClientFrame(raw, LIMITS), parseLegacyFrame(raw, LIMITS)]) {
        if (result.ok) {
          assert.equal(typeof result.frame, "object");
        } else {
          assert.equal(result.error.type, "error");
          assert.equal(typeof result.error.code, "string");
          assert.equal(typeof result.error.message, "string");
        }
      }
    }),
    { numRuns: 10_000 },
  );
});

Deno.test("parseSettings takes flags first, then the environment, then defaults", () => {
  const env = (name: string) =>
    ({ PORT: "9000", CHAT_DATA: "/env.kv", CHAT_MAX_TEXT_LENGTH: "100" })[name];
  const result = parseSettings(["--port", "8123", "--data=./x.kv", "--send-rate", "0.5"], env);
  assert.deepEqual(result, {
    ok: true,
    settings: {
      ...DEFAULT_SETTINGS,
      port: 8123,
      data: "./x.kv",
      maxTextLength: 100,
      sendRate: 0.5,
    },
  });
});

Deno.test("parseSettings refuses unknown flags and bad numbers with a reason", () => {
  const none = () => undefined;
  assert.deepEqual(parseSettings(["--help"], none), { ok: false, help: true });
  for (
    const args of [
      ["--nope", "1"],
      ["--port", "abc"],
      ["--port", "70000"],
      ["--port", "1.5"],
      ["--send-rate", "0"],
      ["--send-rate", "fast"],
      ["--port"],
      ["stray"],
    ]
  ) {
    const result = parseSettings(args, none);
    assert.equal(result.ok, false, args.join(" "));
    if (!result.ok && !result.help) assert.match(result.error, /./);
  }
});
