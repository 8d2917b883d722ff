/**
 * The page in Chinese (zh-CN) and English: picked from the browser's languages,
 * switchable and remembered; times in the reader's time zone.
 *
 * @module
 */

import assert from "node:assert/strict";
import { REFUSAL_CODES } from "../lib/protocol.ts";
import { startServer } from "./_server.ts";
import { TestClient } from "./_client.ts";
import { browserTest, logIn, say, seeOnce, waitPageTitle, waitStatus } from "./_browser.ts";

browserTest(
  "a browser set to Chinese gets the page in Chinese, one set to English gets it in English",
  async (h) => {
    await using server = await startServer();
    const zh = await h.open(server.origin, { locale: "zh-CN" });
    const en = await h.open(server.origin, { locale: "en-US" });

    assert.equal(await zh.locator("html").getAttribute("lang"), "zh-CN");
    assert.equal(await zh.locator("#login h2").textContent(), "登录");
    assert.equal(await zh.locator('label[for="name"]').textContent(), "你的名字");
    assert.equal(await zh.title(), "聊天");
    assert.equal(await en.locator("html").getAttribute("lang"), "en");
    assert.equal(await en.locator("#login h2").textContent(), "Log in");
    assert.equal(await en.title(), "Chat");

    await logIn(zh, "小明");
    await logIn(en, "alice");
    await waitStatus(zh, "已连接");
    assert.equal(await zh.locator("#rooms-h").textContent(), "房间");
    assert.equal(await zh.locator("#composer").getAttribute("placeholder"), "发消息到 #lobby");
    assert.equal(await zh.locator('#send-form button[type="submit"]').textContent(), "发送");
    assert.equal(await en.locator("#rooms-h").textContent(), "Rooms");
    assert.equal(await en.locator("#composer").getAttribute("placeholder"), "Message #lobby");

    await en.locator("#composer").pressSequentially("你好");
    await zh.locator("#typing").filter({ hasText: /^alice 正在输入…$/ }).waitFor();
    await en.press("#composer", "Enter");
    await seeOnce(zh, "你好");
    assert.equal(await zh.locator("#messages .day").textContent(), "今天");
    assert.equal(await en.locator("#messages .day").textContent(), "Today");
    assert.deepEqual(h.problems, []);
  },
);

browserTest(
  "the language control switches the whole page at once, and the choice survives a reload",
  async (h) => {
    await using server = await startServer();
    const page = await h.open(server.origin, { locale: "en-US" });
    // On the login form already.
    await page.selectOption("#lang", "zh");
    assert.equal(await page.locator("#login h2").textContent(), "登录");
    await page.selectOption("#lang", "en");
    await logIn(page, "alice");
    await say(page, "hello");

    await page.selectOption("#lang", "zh");
    await waitStatus(page, "已连接");
    assert.equal(await page.locator("html").getAttribute("lang"), "zh-CN");
    assert.equal(await page.locator("#rooms-h").textContent(), "房间");
    assert.equal(await page.locator("#composer").getAttribute("placeholder"), "发消息到 #lobby");
    assert.equal(await page.locator("#messages .day").textContent(), "今天");
    assert.equal(await page.locator("#menu").getAttribute("aria-label"), "会话");
    await waitPageTitle(page, "聊天");

    await page.reload();
    await waitStatus(page, "已连接");
    assert.equal(await page.inputValue("#lang"), "zh");
    assert.equal(await page.locator("#rooms-h").textContent(), "房间");
    await seeOnce(page, "hello");
    assert.deepEqual(h.problems, []);
  },
);

browserTest("message times show in each reader's own time zone and language", async (h) => {
  await using server = await startServer();
  const [bob] = await TestClient.join(server.origin, "bob");
  await using _bob = bob;
  const readers = [
    { locale: "en-US", timezoneId: "America/New_York", name: "nyreader" },
    { locale: "zh-CN", timezoneId: "Asia/Shanghai", name: "shreader" },
    { locale: "en-GB", timezoneId: "Europe/London", name: "ldnreader" },
  ];
  const pages = [];
  for (const r of readers) {
    const page = await h.open(server.origin, { locale: r.locale, timezoneId: r.timezoneId });
    await logIn(page, r.name);
    pages.push(page);
  }
  bob.send({ type: "send", room: "lobby", text: "what time is it?", cid: "t1" });
  const sent = await bob.next((f) => f.type === "message" && f.cid === "t1");
  for (const [i, r] of readers.entries()) {
    const time = (await seeOnce(pages[i], "what time is it?")).locator("time");
    assert.equal(await time.getAttribute("datetime"), new Date(sent.ts).toISOString());
    const expected = new Intl.DateTimeFormat(r.locale, {
      hour: "numeric",
      minute: "2-digit",
      timeZone: r.timezoneId,
    }).format(sent.ts);
    assert.equal(await time.textContent(), expected, `${r.locale} in ${r.timezoneId}`);
  }
  assert.deepEqual(h.problems, []);
});

Deno.test("every string of the page exists in English and in Chinese", async () => {
  const js = await Deno.readTextFile(new URL("../static/app.js", import.meta.url));
  const html = await Deno.readTextFile(new URL("../static/index.html", import.meta.url));
  const block = (from: string, to: string) => {
    const start = js.indexOf(from);
    const end = js.indexOf(to, start);
    assert.ok(start > 0 && end > start, `found ${from}`);
    return new Set([...js.slice(start, end).matchAll(/^ {4}(\w+):/gm)].map((m) => m[1]));
  };
  const en = block("\n  en: {", "\n  },\n");
  const zh = block("\n  zh: {", "\n  },\n");
  assert.ok(en.size > 100, `${en.size} English strings`);
  assert.deepEqual([...en].filter((k) => !zh.has(k)), [], "missing in Chinese");
  assert.deepEqual([...zh].filter((k) => !en.has(k)), [], "missing in English");
  // Every key the HTML names, and every t("key") in the script, is defined.
  const used = new Set([
    ...[...html.matchAll(/data-i18n="(\w+)"/g)].map((m) => m[1]),
    ...[...html.matchAll(/data-i18n-attr="([^"]+)"/g)].flatMap((m) =>
      m[1].split(",").map((pair) => pair.split("=")[1])
    ),
    ...[...js.matchAll(/\bt\("(\w+)"[,)]/g)].map((m) => m[1]),
  ]);
  assert.deepEqual([...used].filter((k) => !en.has(k)), [], "used but not defined");
  // Every refusal code the server sends has its own words (the page shows `refused_<code>`).
  for (const code of REFUSAL_CODES) {
    assert.ok(en.has(`refused_${code}`) && zh.has(`refused_${code}`), `refused_${code}`);
    assert.match(js, new RegExp(`^  "${code}",$`, "m"), `the page knows the code ${code}`);
  }
});
