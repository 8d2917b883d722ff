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
    assert.equal(why, "“alice” is taken. If it is yours, enter its password.");
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
  assert.equal(why, "“\u0430lice” looks too much like someone else’s name. Pick another name.");
  // The same name in capitals is the same account: claimed (with no password), so refused too.
  assert.equal(
    await refusedLogIn(mimic, "ALICE"),
    "“ALICE” is taken, and it has no password: only the browser that claimed it can use it. " +
      "Pick another name.",
  );
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

browserTest(
  "each refusal is said in the page's language with advice that fits it, and re-said on a language switch",
  async (h) => {
    await using server = await startServer();
    const [alice] = await h.people(server.origin, ["alice"]);
    // bob's token in this browser is not (or no longer) one of bob's.
    await h.people(server.origin, ["bob"]);
    const zh = await h.open(server.origin, {
      locale: "zh-CN",
      initScript: `localStorage.setItem("chat.token.bob", "${"A".repeat(43)}")`,
    });
    const focused = () => zh.evaluate("document.activeElement.id");

    // Claimed, no password: a password cannot help, so the advice is another name.
    assert.equal(
      await refusedLogIn(zh, "alice"),
      "“alice”已被占用，而且没有设置密码：只有占用它的那个浏览器能使用。请换一个名字。",
    );
    assert.equal(await focused(), "name");
    // The same refusal, re-said when the reader switches language.
    await zh.selectOption("#lang", "en");
    await zh.locator("#login-error").filter({
      hasText: "“alice” is taken, and it has no password: only the browser that claimed it can " +
        "use it. Pick another name.",
    }).waitFor();
    await zh.selectOption("#lang", "zh");

    // Claimed, with a password: enter it.
    await setPassword(alice, PASSWORD);
    assert.equal(
      await refusedLogIn(zh, "alice"),
      "“alice”已被占用。如果这是你的名字，请输入它的密码。",
    );
    assert.equal(await focused(), "password");

    // A look-alike: no password helps; pick another name.
    assert.equal(
      await refusedLogIn(zh, "\u0430lice"),
      "“\u0430lice”与别人的名字太像了。请换一个名字。",
    );
    assert.equal(await focused(), "name");

    // A token that is not bob's.
    assert.equal(
      await refusedLogIn(zh, "bob"),
      "此浏览器以“bob”登录的凭据已失效（可能在别处退出了登录）。如果这个名字设置了密码，请输入密码；否则请换一个名字。",
    );
    assert.deepEqual(realProblems(h.problems), []);
  },
);
