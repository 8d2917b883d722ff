/**
 * The page's header on phones: at 320, 360 and 390 px (and on up to 720, the
 * widest phone layout), in English and in Chinese, while reconnecting (the
 * widest state: a countdown and "Reconnect now"), every control of the header
 * is inside the screen, none overlaps another, and neither the button's words
 * nor the user's name are cut.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Page } from "npm:playwright-core@1";
import { startServer } from "./_server.ts";
import { browserTest, logIn, realProblems, waitStatus } from "./_browser.ts";

/** What a box of the header looks like to the reader. */
interface Box {
  id: string;
  left: number;
  right: number;
  top: number;
  bottom: number;
  /** The content is wider than the box shows (cut or ellipsed). */
  cut: boolean;
}

/**
 * The visible controls of the header, with their boxes, and the status they were measured in:
 * read together, in one turn of the page (run in the page, as a string: no DOM types here).
 */
function headerBoxes(page: Page, widest?: string): Promise<{ status: string; boxes: Box[] }> {
  // With `widest`, the status first shows it (the countdown's longest text), as the page would.
  const set = widest === undefined
    ? ""
    : `document.getElementById("status").textContent = ${JSON.stringify(widest)},`;
  return page.evaluate(`({
    status: (${set} document.getElementById("status").textContent),
    boxes: ["menu", "status", "reconnect", "lang", "me"].flatMap((id) => {
      const e = document.getElementById(id);
      const r = e.getBoundingClientRect();
      if (e.hidden || r.width === 0) return [];
      return [{ id, left: r.left, right: r.right, top: r.top, bottom: r.bottom,
        cut: e.scrollWidth > e.clientWidth + 1 }];
    }),
  })`);
}

/** The page left the state being measured before it was measured. */
class NotInState extends Error {}

/**
 * Asserts the header fits `width`: inside the screen, nothing overlapping, nothing cut; throws
 * {@linkcode NotInState} if the status did not match `state` when it was measured.
 */
async function assertFits(
  page: Page,
  width: number,
  label: string,
  state: RegExp,
  widest?: string,
): Promise<void> {
  const { status, boxes } = await headerBoxes(page, widest);
  if (!state.test(status)) throw new NotInState(`${label}: measured in "${status}"`);
  const ids = boxes.map((b) => b.id);
  for (const id of ["menu", "status", "reconnect", "lang", "me"]) {
    assert.ok(ids.includes(id), `${label}: #${id} is visible (${ids})`);
  }
  for (const b of boxes) {
    assert.ok(
      b.left >= 0 && b.right <= width,
      `${label}: #${b.id} inside 0–${width}: ${b.left}–${b.right}`,
    );
    assert.ok(!b.cut, `${label}: #${b.id} shows all of its text`);
  }
  for (const [i, a] of boxes.entries()) {
    for (const b of boxes.slice(i + 1)) {
      const apart = a.right <= b.left || b.right <= a.left || a.bottom <= b.top ||
        b.bottom <= a.top;
      assert.ok(apart, `${label}: #${a.id} and #${b.id} overlap`);
    }
  }
  // The reconnect button is one line of text, not its words stacked.
  const one = await page.evaluate(`(() => {
    const e = document.getElementById("reconnect");
    const line = parseFloat(getComputedStyle(e).lineHeight) || 20;
    return e.getBoundingClientRect().height < 2 * line;
  })()`);
  assert.ok(one, `${label}: "Reconnect now" on one line`);
  const scroll = await page.evaluate("document.documentElement.scrollWidth") as number;
  assert.ok(scroll <= width, `${label}: no sideways scrolling (${scroll} > ${width})`);
}

browserTest(
  "on a phone the header fits at 320, 360 and 390 px in both languages, with Reconnect now and the name whole",
  async (h) => {
    const server = await startServer();
    const viewport = { width: 320, height: 640 };
    const en = await h.open(server.origin, { locale: "en-US", viewport });
    const zh = await h.open(server.origin, { locale: "zh-CN", viewport });
    await logIn(en, "priyanka");
    await logIn(zh, "李小明同学");
    // The widest state: the server is gone, the page counts down and offers to retry now.
    await server.close();
    await waitStatus(en, /^reconnecting in \d+s…$/);
    await waitStatus(zh, /^\d+ 秒后重新连接…$/);
    const counting = { en: /^reconnecting in \d+s…$/, zh: /^\d+ 秒后重新连接…$/ };
    // The countdown runs up to 15 s (BACKOFF_MAX): its two digits are the widest state.
    const widest = { en: "reconnecting in 15s…", zh: "15 秒后重新连接…" };
    for (const [page, lang] of [[en, "en"], [zh, "zh"]] as const) {
      for (const width of [320, 360, 390, 480, 540, 600, 720]) {
        await page.setViewportSize({ width, height: 640 });
        // The page retries while it is measured, and Chromium holds a retry to a refused port
        // for a while ("connecting", no Reconnect button): a measurement taken outside the
        // countdown (the status is read with the boxes) is taken again; one in it stands.
        for (let attempt = 0;; attempt++) {
          await waitStatus(page, counting[lang]);
          try {
            await assertFits(page, width, `${lang} at ${width}px`, counting[lang]);
            await assertFits(
              page,
              width,
              `${lang} at ${width}px, 15 s`,
              counting[lang],
              widest[lang],
            );
            break;
          } catch (error) {
            if (!(error instanceof NotInState) || attempt >= 20) throw error;
          }
        }
      }
    }
    assert.deepEqual(realProblems(h.problems), []);
  },
);
