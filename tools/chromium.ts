/**
 * Where Debian's Chromium is, and how to launch it here (headless, as root, on
 * a machine with no network but loopback): shared by the browser tests and
 * `deno task screenshots`.
 *
 * @module
 */

/** Debian's Chromium (`apt-get install chromium`); `CHROMIUM` in the environment overrides it. */
export const CHROMIUM: string = Deno.env.get("CHROMIUM") ?? "/usr/bin/chromium";

/** Whether it is installed. */
export const hasChromium: boolean = (() => {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
})();

/**
 * The launch arguments: no sandbox (root in a container), no GPU, and none of
 * the background traffic a closed network would refuse.
 */
export const CHROMIUM_ARGS: readonly string[] = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];
