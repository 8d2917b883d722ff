/**
 * Regenerates docs/screenshots/{desktop,phone}-{light,dark}.png: `deno task screenshots`.
 *
 * For each picture it starts a server on `:memory:` on a free loopback port, has a
 * few people chat (in English and Chinese) over plain WebSockets, then opens the
 * page as alice in Chromium with the colour scheme, viewport and language wanted.
 * Desktop pictures use the English page, phone pictures the Chinese one. Without a
 * Chinese font (fonts-wqy-microhei, fonts-noto-cjk) the Chinese shows as boxes,
 * but the pictures are still made.
 *
 * @module
 */

import { chromium } from "npm:playwright-core@1";
import { startServer } from "../tests/_server.ts";
import { type Frame, TestClient } from "../tests/_client.ts";
import { CHROMIUM, CHROMIUM_ARGS } from "./chromium.ts";

const OUT = new URL("../docs/screenshots/", import.meta.url);

interface Shot {
  name: string;
  colorScheme: "light" | "dark";
  locale: string;
  viewport: { width: number; height: number };
  deviceScaleFactor: number;
  isMobile: boolean;
}

const desktop = { viewport: { width: 1280, height: 760 }, deviceScaleFactor: 1, isMobile: false };
const phone = { viewport: { width: 390, height: 780 }, deviceScaleFactor: 2, isMobile: true };
const SHOTS: Shot[] = [
  { name: "desktop-light", colorScheme: "light", locale: "en-US", ...desktop },
  { name: "desktop-dark", colorScheme: "dark", locale: "en-US", ...desktop },
  { name: "phone-light", colorScheme: "light", locale: "zh-CN", ...phone },
  { name: "phone-dark", colorScheme: "dark", locale: "zh-CN", ...phone },
];

/** Sends a message and waits for its acknowledgement. */
async function say(client: TestClient, where: Frame, text: string): Promise<void> {
  const cid = crypto.randomUUID();
  client.send({ type: "send", ...where, text, cid });
  await client.next((f) => f.type === "message" && f.cid === cid);
}

async function join(client: TestClient, room: string, user: string): Promise<void> {
  client.send({ type: "join", room });
  await client.next((f) => f.type === "joined" && f.room === room && f.user === user);
}

/** A server with a conversation in it; alice's token (if the server gives one) for the page. */
async function scene() {
  const server = await startServer();
  const [alice, welcome] = await TestClient.join(server.origin, "alice");
  const [bob] = await TestClient.join(server.origin, "bob");
  const [ming] = await TestClient.join(server.origin, "小明");
  const [carol] = await TestClient.join(server.origin, "carol");
  for (const [c, u] of [[alice, "alice"], [carol, "carol"], [bob, "bob"]] as const) {
    await join(c, "design", u);
  }
  const lobby = { room: "lobby" };
  await say(bob, lobby, "Morning! Is the release still on for Friday?");
  await say(ming, lobby, "是的，周五发布。更新日志在这里：https://example.com/changelog");
  await say(alice, lobby, "On it — I'm checking the phone layout now.");
  await say(alice, lobby, "Dark mode too.");
  await say(carol, lobby, "Great. @alice can you also look at the Chinese strings?");
  await say(ming, lobby, "我来帮忙翻译，@alice 有问题随时找我。");
  await say(
    bob,
    lobby,
    "Long links wrap now: https://example.com/a/very/long/path/that/keeps/going/and/going?with=query&and=more",
  );
  await say(carol, { room: "design" }, "@alice the new icons are in the shared folder");
  await say(ming, { to: "alice" }, "晚上一起吃饭吗？");
  await say(bob, { to: "alice" }, "Can you review my pull request when you have a minute?");
  await alice.close();
  await carol.close();
  return {
    server,
    token: typeof welcome.token === "string" ? welcome.token : null,
    bob,
    ming,
    async close() {
      await bob.close();
      await ming.close();
      await server.close();
    },
  };
}

await Deno.mkdir(OUT, { recursive: true });
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: [...CHROMIUM_ARGS],
});
try {
  for (const shot of SHOTS) {
    const s = await scene();
    try {
      const context = await browser.newContext({
        colorScheme: shot.colorScheme,
        locale: shot.locale,
        viewport: shot.viewport,
        deviceScaleFactor: shot.deviceScaleFactor,
        isMobile: shot.isMobile,
        hasTouch: shot.isMobile,
        timezoneId: "Asia/Shanghai",
      });
      // Logged in already, as alice (with her token when the server issued one).
      await context.addInitScript(([token]) => {
        if (localStorage.getItem("chat.user")) return;
        localStorage.setItem("chat.user", "alice");
        localStorage.setItem("chat.notify.asked", "1");
        if (token) localStorage.setItem("chat.token.alice", token);
      }, [s.token]);
      const page = await context.newPage();
      await page.goto(s.server.origin);
      await page.locator('#status[data-state="connected"]').waitFor();
      await page.locator("#messages .msg").nth(6).waitFor();
      await page.locator('#users [data-user="bob"].online').waitFor({ state: "attached" });
      // Someone typing, for the picture.
      s.bob.send({ type: "typing", room: "lobby" });
      await page.locator("#typing").filter({ hasText: "bob" }).waitFor();
      await page.evaluate("document.fonts.ready.then(() => {})");
      const path = new URL(`${shot.name}.png`, OUT);
      await page.screenshot({ path: path.pathname });
      console.log(`wrote ${path.pathname}`);
      await context.close();
    } finally {
      await s.close();
    }
  }
} finally {
  await browser.close();
}
