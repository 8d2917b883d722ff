/**
 * Names and origins: look-alikes from any script are one name (Unicode's
 * confusables data, UTS #39), and what a page may connect from.
 */

import assert from "node:assert/strict";
import { TestClient } from "./_client.ts";
import { startServer } from "./_server.ts";
import { within } from "./_hostile.ts";
import { HANDSHAKE, rawGet } from "./_raw.ts";
import { CONFUSABLES_SIZE } from "../lib/confusables.ts";

const LOOK_ALIKES: Array<[string, string, string]> = [
  ["Greek lunate sigma", "carol", "ϲarol"],
  ["Armenian o", "oscar", "օscar"],
  ["Armenian h", "helen", "հelen"],
  ["Cherokee capitals", "alex", "ᎪᏞᎬX"],
  ["Cherokee small letters", "sam", "ꮪam"],
  ["small capitals", "alex", "ᴀʟᴇx"],
  ["IPA script a", "anna", "ɑnnɑ"],
  ["Bengali digit zero", "oscar", "০scar"],
  ["Arabic-Indic digit five", "oscar", "٥scar"],
  ["Devanagari digit zero", "oscar", "०scar"],
];

Deno.test(`look-alikes of claimed names from ${LOOK_ALIKES.length} scripts and forms are refused (4003)`, async (t) => {
  assert.ok(CONFUSABLES_SIZE > 6000, "Unicode's table, not a hand-written one");
  await using srv = await startServer();
  const owners: TestClient[] = [];
  for (const name of new Set(LOOK_ALIKES.map(([, name]) => name))) {
    owners.push((await TestClient.join(srv.origin, name))[0]);
  }
  try {
    for (const [what, name, fake] of LOOK_ALIKES) {
      await t.step(`${what}: ${fake} for ${name}`, async () => {
        const c = await TestClient.connect(srv.origin, fake, { token: null });
        const closed = await within(5000, "a refusal", c.closed);
        assert.equal(closed.code, 4003, `${fake} was let in`);
      });
    }
  } finally {
    await Promise.all(owners.map((o) => o.close()));
  }
});

Deno.test("DNS rebinding: a socket or login under an unknown host name is refused (421), under the server's own it is served", async () => {
  await using srv = await startServer({ settings: { publicHost: "chat.example" } });
  const at = (host: string, target = "/ws/alice") =>
    rawGet(srv.port, target, { ...HANDSHAKE, host, origin: `http://${host}` });
  // The rebinding page: its Origin and the Host agree, both the attacker's name.
  assert.equal((await at(`evil.example:${srv.port}`)).status, 421);
  assert.equal((await at("evil.example")).status, 421);
  const login = await rawGet(srv.port, "/api/login", { host: `evil.example:${srv.port}` });
  assert.equal(login.status, 421);
  // The server's own names get as far as the next check (a GET without the upgrade: 426).
  for (const host of [`127.0.0.1:${srv.port}`, `localhost:${srv.port}`, "chat.example", "[::1]"]) {
    const res = await rawGet(srv.port, "/ws/alice", { host, origin: `http://${host}` });
    assert.equal(res.status, 426, host);
  }
  // And the page itself is served under any name (it holds no one's data).
  assert.equal((await rawGet(srv.port, "/", { host: "evil.example" })).status, 200);
});

Deno.test("room names are canonical like usernames: VAULT and ｖａｕｌｔ are the private vault, vаult (Cyrillic а) is refused", async () => {
  await using srv = await startServer();
  const [alice] = await TestClient.join(srv.origin, "alice");
  const [mallory] = await TestClient.join(srv.origin, "mallory");
  try {
    alice.send({ type: "create", room: "vault", private: true });
    await alice.next((f) => f.type === "joined" && f.room === "vault");
    const answer = async (frame: Record<string, unknown>) => {
      mallory.send(frame);
      const f = await mallory.next((f) => f.type === "joined" || f.type === "error");
      return f.type === "joined" ? `joined ${f.room}` : f.code;
    };
    assert.equal(await answer({ type: "join", room: "VAULT" }), "forbidden");
    assert.equal(await answer({ type: "join", room: "ｖａｕｌｔ" }), "forbidden");
    assert.equal(await answer({ type: "join", room: "vаult" }), "bad_name");
    assert.equal(await answer({ type: "create", room: "vаult", private: false }), "bad_name");
    assert.equal(await answer({ type: "join", room: "1obby" }), "bad_name");
    // Ordinary names still make rooms.
    assert.equal(await answer({ type: "join", room: "Garden" }), "joined garden");
  } finally {
    await Promise.all([alice.close(), mallory.close()]);
  }
});
