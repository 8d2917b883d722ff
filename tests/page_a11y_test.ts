/**
 * Accessibility of the page: keyboard-only use with a visible focus, live
 * regions, and WCAG AA contrast in the light and the dark scheme.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Page } from "npm:playwright-core@1";
import { startServer } from "./_server.ts";
import { TestClient } from "./_client.ts";
import { browserTest, logIn, messages, seeOnce, waitStatus, waitTitle } from "./_browser.ts";

/** The focused element as `tag#id.class[data-…]`, and whether it shows a focus ring. */
function focused(page: Page): Promise<{ what: string; ring: boolean }> {
  return page.evaluate(`(() => {
    const e = document.activeElement;
    const li = e.closest("li");
    const data = li ? Object.entries(li.dataset).map(([k, v]) => k + "=" + v).join() : "";
    const s = getComputedStyle(e);
    return {
      what: e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") +
        (e.className ? "." + String(e.className).split(" ").join(".") : "") +
        (data ? "[" + data + "]" : ""),
      ring: s.outlineStyle !== "none" && parseFloat(s.outlineWidth) >= 2,
    };
  })()`);
}

/** Presses `key` until the focus is on `target` (checking the ring on the way). */
async function tabTo(page: Page, key: "Tab" | "Shift+Tab", target: string): Promise<void> {
  for (let i = 0; i < 40; i++) {
    await page.keyboard.press(key);
    const f = await focused(page);
    if (f.what !== "body") assert.ok(f.ring, `a visible focus ring on ${f.what}`);
    if (f.what === target) return;
  }
  assert.fail(`${key} never reached ${target}`);
}

browserTest(
  "the keyboard alone logs in, moves between conversations, sends, and uses the dialogs, with a visible focus throughout",
  async (h) => {
    await using server = await startServer();
    const [bob] = await TestClient.join(server.origin, "bob");
    await using _bob = bob;
    const page = await h.open(server.origin);
    const kb = page.keyboard;

    assert.equal((await focused(page)).what, "input#name", "the name field has the focus");
    await kb.type("keyboarder");
    await kb.press("Enter");
    await waitStatus(page, "connected");
    assert.equal((await focused(page)).what, "textarea#composer");
    await kb.type("typed, not clicked");
    await kb.press("Enter");
    await messages(page, "typed, not clicked").and(page.locator("[data-id]")).waitFor();
    await bob.next((f) => f.type === "message" && f.text === "typed, not clicked");

    // Backwards from the composer, through the message list, into the people list.
    await tabTo(page, "Shift+Tab", "button.open[user=bob]");
    await kb.press("Enter");
    await waitTitle(page, "bob");
    assert.equal((await focused(page)).what, "textarea#composer");
    await kb.type("hello bob");
    await kb.press("Enter");
    await bob.next((f) => f.type === "message" && f.to === "bob" && f.text === "hello bob");

    // The rooms dialog: open, type a name, Enter; Escape closes it and gives the focus back.
    await tabTo(page, "Shift+Tab", "button#browse.icon");
    await kb.press("Enter");
    await page.locator("#rooms-dialog").waitFor();
    assert.equal((await focused(page)).what, "input#create-name");
    await kb.press("Escape");
    await page.locator("#rooms-dialog").waitFor({ state: "hidden" });
    assert.equal((await focused(page)).what, "button#browse.icon");
    await kb.press("Enter");
    await kb.type("keys");
    await kb.press("Enter");
    await waitTitle(page, "keys");
    assert.equal((await focused(page)).what, "textarea#composer");

    // What assistive technology needs to follow along.
    const list = page.locator("#messages");
    assert.equal(await list.getAttribute("role"), "log");
    await page.locator('#messages[aria-live="polite"]').waitFor({ state: "attached" });
    assert.equal(await page.locator("#status-live").getAttribute("role"), "status");
    assert.equal(await page.locator("#status-live").textContent(), "Connected.");
    assert.deepEqual(h.problems, []);
  },
);

// Every visible text node against its effective background (WCAG 2 relative luminance).
const LOW_CONTRAST = `(() => {
  const parse = (c) => {
    const m = /rgba?\\(([^)]+)\\)/.exec(c);
    if (!m) return null;
    const p = m[1].split(/[\\s,/]+/).filter(Boolean).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const over = (top, bottom) => ({
    r: top.r * top.a + bottom.r * (1 - top.a),
    g: top.g * top.a + bottom.g * (1 - top.a),
    b: top.b * top.a + bottom.b * (1 - top.a),
    a: 1,
  });
  const lum = ({ r, g, b }) => {
    const f = (v) => (v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0) layers.push(c);
      if (c && c.a >= 1) break;
    }
    let bg = parse(getComputedStyle(document.documentElement).backgroundColor);
    if (!bg || bg.a < 1) bg = matchMedia("(prefers-color-scheme: dark)").matches
      ? { r: 18, g: 18, b: 18, a: 1 } : { r: 255, g: 255, b: 255, a: 1 };
    for (const l of layers.reverse()) bg = over(l, bg);
    return bg;
  };
  const out = [];
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  let checked = 0;
  while (walk.nextNode()) {
    const node = walk.currentNode;
    const el = node.parentElement;
    if (!node.textContent.trim() || el.closest("select, option")) continue;
    if (!el.checkVisibility({ opacityProperty: true, visibilityProperty: true })) continue;
    const r = el.getBoundingClientRect();
    if (r.width < 2 || r.height < 2) continue;
    const s = getComputedStyle(el);
    const bg = background(el);
    const fg = over(parse(s.color), bg);
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(s.fontSize);
    const large = size >= 24 || (Number(s.fontWeight) >= 700 && size >= 18.66);
    checked++;
    if (ratio < (large ? 3 : 4.5)) {
      out.push(el.tagName + "." + el.className + " " + JSON.stringify(node.textContent.trim().slice(0, 30)) + " " + ratio.toFixed(2));
    }
  }
  return { checked, low: out };
})()`;

async function lowContrast(page: Page, where: string): Promise<string[]> {
  const { checked, low } = await page.evaluate(LOW_CONTRAST) as { checked: number; low: string[] };
  assert.ok(checked > 5, `${where}: ${checked} texts checked`);
  return low.map((l) => `${where}: ${l}`);
}

for (const colorScheme of ["light", "dark"] as const) {
  browserTest(
    `text meets WCAG AA contrast in the ${colorScheme} scheme, everywhere on the page`,
    async (h) => {
      await using server = await startServer({ settings: { sendRate: 1, sendBurst: 1 } });
      const [bob] = await TestClient.join(server.origin, "bob");
      await using _bob = bob;
      const page = await h.open(server.origin, { colorScheme });
      const low: string[] = [];
      await page.fill("#name", "no spaces allowed");
      await page.click('#login button[type="submit"]');
      await page.locator("#login-error").filter({ hasText: /./ }).waitFor();
      low.push(...await lowContrast(page, "login"));

      await logIn(page, "alice");
      bob.send({
        type: "send",
        room: "lobby",
        text: "hi @alice, see https://example.com",
        cid: "1",
      });
      await seeOnce(page, "hi @alice, see https://example.com");
      await page.locator('#users li[data-user="bob"] .open').click();
      await page.fill("#composer", "sent");
      await page.press("#composer", "Enter");
      await page.fill("#composer", "refused: too fast");
      await page.press("#composer", "Enter");
      await messages(page, "refused: too fast").and(page.locator(".failed")).waitFor();
      // (Each user has a send allowance of its own.)
      const [carol] = await TestClient.join(server.origin, "carol");
      await using _carol = carol;
      carol.send({ type: "send", room: "lobby", text: "unread, with @alice", cid: "2" });
      bob.send({ type: "typing", to: "alice" });
      await page.locator('#rooms li[data-room="lobby"] .mentions').waitFor();
      await page.locator("#typing").filter({ hasText: /./ }).waitFor();
      low.push(...await lowContrast(page, "dm"));

      await page.locator('#rooms li[data-room="lobby"] .open').click();
      await page.locator("#messages .divider").waitFor();
      low.push(...await lowContrast(page, "lobby"));

      await page.click("#browse");
      await page.locator("#public-status").filter({ hasText: "No public rooms yet." }).waitFor();
      await page.fill("#create-name", "bad name");
      await page.press("#create-name", "Enter");
      await page.locator("#create-msg").filter({ hasText: /./ }).waitFor();
      low.push(...await lowContrast(page, "rooms dialog"));
      await page.keyboard.press("Escape");
      await page.click("#me");
      await page.locator("#logout-warn").waitFor();
      low.push(...await lowContrast(page, "account dialog"));

      assert.deepEqual(low, []);
      assert.deepEqual(h.problems, []);
    },
  );
}
