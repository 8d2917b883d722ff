/**
 * The top entries of a V8 CPU profile (`deno run --cpu-prof`), by self time,
 * and the share of time in our own files: `deno task bench --profile DIR`
 * writes the server's profiles there.
 *
 * Usage: deno run --allow-read bench/profile_top.ts FILE.cpuprofile [N]
 *
 * @module
 */

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

const [file, count = "15"] = Deno.args;
const profile: { nodes: ProfileNode[]; startTime: number; endTime: number } = JSON.parse(
  await Deno.readTextFile(file),
);
const total = profile.nodes.reduce((sum, n) => sum + (n.hitCount ?? 0), 0);
const self = new Map<string, number>();
let ours = 0;
for (const node of profile.nodes) {
  const { functionName, url, lineNumber } = node.callFrame;
  const where = url
    ? `${url.replace(/^.*\/(lib|bench|ext|node_modules)\//, "$1/")}:${lineNumber + 1}`
    : "";
  const name = `${functionName || "(anonymous)"} ${where}`.trim();
  self.set(name, (self.get(name) ?? 0) + (node.hitCount ?? 0));
  if (/\/lib\//.test(url)) ours += node.hitCount ?? 0;
}
const idle = self.get("(idle)") ?? 0;
const busy = total - idle;
console.log(
  `${total} samples over ${((profile.endTime - profile.startTime) / 1e6).toFixed(1)} s; ` +
    `busy ${(100 * busy / total).toFixed(1)}%; lib/ ${(100 * ours / busy).toFixed(1)}% of busy`,
);
console.log("self % of busy  function");
for (
  const [name, hits] of [...self].filter(([n]) => n !== "(idle)").sort((a, b) => b[1] - a[1]).slice(
    0,
    Number(count),
  )
) {
  console.log(`${(100 * hits / busy).toFixed(1).padStart(5)}%  ${name}`);
}
