/**
 * Identity in the page: claiming a name, its token, passwords, logging in from
 * another browser, look-alike names, logging out here and everywhere.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Page } from "npm:playwright-core@1";
import { startServer } from "./_server.ts";
import { browserTest, logIn, realProblems, say, seeOnce, waitStatus } from "./_browser.ts";

const PASSWORD = "correct horse battery";

const tokenOf = (page: Page, name: string) =>
  page.evaluate((n) => localStorage.getItem("chat.token." + n), name);

async function setPassword(page: Page, password: string): Promise<void> {
  await page.click("#me");
  await page.locator("#account-dialog").waitFor();
  await page.fill("#pw-new", password);
  await page.press("#pw-new", "Enter");
  await page.locator("#pw-msg").filter({ hasText: "Password saved." }).waitFor();
  await page.click("#account-dialog .close");
}

/** Tries to log in and waits for the form to say why not. */
async function refusedLogIn(page: Page, name: string, password = ""): Promise<string> {
  await page.fill("#name", name);
  await page.fill("#password", password);
  await page.locator("#login-error").evaluate((e) => e.textContent = "");
  await page.click('#login button[type="submit"]');
  const error = page.locator("#login-error").filter({ hasText: /./ });
  await error.waitFor();
  assert.equal(await page.locator("#login").isVisible(), true);
  return await error.textContent() ?? "";
}

browserTest(
  "the first login claims the name: the browser keeps its token and stays logged in across reloads",
  async (h) => {
    await using server = await startServer();
    const [page] = await h.people(server.origin, ["alice"]);
    const token = await tokenOf(page, "alice");
    assert.match(token ?? "", /^[A-Za-z0-9_-]{20,}$/);
    await say(page, "mine now");

    await page.reload();
    await waitStatus(page, "connected");
    assert.equal(await page.locator("#me").textContent(), "alice");
    assert.equal(await tokenOf(page, "alice"), token, "the same token, presented again");
    await seeOnce(page, "mine now");
    assert.deepEqual(h.problems, []);
  },
);

browserTest(
  "a claimed name is refused in another browser with the reason; its password logs in there, a wrong one does not",
  async (h) => {
    await using server = await startServer();
    const [home] = await h.people(server.origin, ["alice"]);
    await say(home, "from home");

    // No password yet: the account panel says so, and warns before logging out.
    await home.click("#me");
    assert.match(await home.locator("#pw-state").textContent() ?? "", /No password yet/);
    await home.locator("#logout-warn").filter({ hasText: /nobody can log in as “alice”/ })
      .waitFor();
    await home.click("#account-dialog .close");
    await setPassword(home, PASSWORD);
    await home.click("#me");
    assert.match(await home.locator("#pw-state").textContent() ?? "", /A password is set/);
    assert.equal(await home.locator("#logout-warn").isVisible(), false);
    await home.click("#account-dialog .close");

    const work = await h.open(server.origin);
    const why = await refusedLogIn(work, "alice");
    assert.match(why, /^Cannot log in as “alice”: .+ If the name is yours, enter its password\.$/);
    assert.equal(await work.evaluate("document.activeElement.id"), "password");
    assert.equal(await tokenOf(work, "alice"), null);

    assert.equal(await refusedLogIn(work, "alice", "not the password"), "Wrong name or password.");

    await logIn(work, "alice", PASSWORD);
    assert.equal(await work.locator("#me").textContent(), "alice");
    assert.match(await tokenOf(work, "alice") ?? "", /^[A-Za-z0-9_-]{20,}$/);
    await seeOnce(work, "from home");
    await say(work, "from work");
    await seeOnce(home, "from work");
    assert.deepEqual(realProblems(h.problems), []);
  },
);

browserTest("a name that only looks like a claimed one is refused with the reason", async (h) => {
  await using server = await startServer();
  // alice claims her name first.
  await h.people(server.origin, ["alice"]);
  const mimic = await h.open(server.origin);
  // A Cyrillic "а" in place of the Latin "a".
  const why = await refusedLogIn(mimic, "\u0430lice");
  assert.match(why, /^Cannot log in as “\u0430lice”: .+\./);
  // The same name in capitals is the same account: claimed, so refused too.
  assert.match(await refusedLogIn(mimic, "ALICE"), /^Cannot log in as “ALICE”/);
  assert.deepEqual(realProblems(h.problems), []);
});

browserTest(
  "logging out forgets this browser's token; logging out everywhere signs out every device",
  async (h) => {
    await using server = await startServer();
    const [home] = await h.people(server.origin, ["alice"]);
    await setPassword(home, PASSWORD);
    const work = await h.open(server.origin);
    await logIn(work, "alice", PASSWORD);

    await home.click("#me");
    await home.click("#logout");
    await home.locator("#login").waitFor();
    assert.equal(await home.locator("#login-error").textContent(), "You are logged out.");
    assert.equal(await home.inputValue("#name"), "alice");
    assert.equal(await tokenOf(home, "alice"), null);
    // The other device is still in.
    await say(work, "still here");

    // Back in with the password, then out everywhere.
    await logIn(home, "alice", PASSWORD);
    await seeOnce(home, "still here");
    await home.click("#me");
    await home.click("#logout-all");
    await home.locator("#login").waitFor();
    await work.locator("#login-error").filter({ hasText: "You are logged out." }).waitFor();
    assert.equal(await work.locator("#app").isVisible(), false);
    assert.equal(await tokenOf(work, "alice"), null);
    assert.equal(await tokenOf(home, "alice"), null);
    assert.deepEqual(realProblems(h.problems), []);
  },
);
