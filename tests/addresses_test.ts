/**
 * The start line's addresses: on every address, `localhost` and each network
 * address of the machine; on one address, that one.
 */

import assert from "node:assert/strict";
import { localInterfaces, reachableUrls } from "../lib/addresses.ts";
import config from "../deno.json" with { type: "json" };

const SAMPLE = [
  { family: "IPv4", address: "127.0.0.1" },
  { family: "IPv6", address: "::1" },
  { family: "IPv4", address: "192.168.1.23" },
  { family: "IPv6", address: "fe80::1c2b:3aff:fe4d:5e6f" },
  { family: "IPv6", address: "2001:db8::23" },
  { family: "IPv4", address: "10.0.0.5" },
  { family: "IPv4", address: "169.254.10.1" },
] as const;

Deno.test("listening on 0.0.0.0 prints localhost and each IPv4 address people on the network can use", () => {
  assert.deepEqual(reachableUrls({ hostname: "0.0.0.0", port: 8000 }, SAMPLE), [
    "http://localhost:8000/",
    "http://192.168.1.23:8000/",
    "http://10.0.0.5:8000/",
  ]);
});

Deno.test("listening on :: adds global IPv6 addresses in brackets; one address prints only itself", () => {
  assert.deepEqual(reachableUrls({ hostname: "::", port: 80 }, SAMPLE), [
    "http://localhost:80/",
    "http://192.168.1.23:80/",
    "http://[2001:db8::23]:80/",
    "http://10.0.0.5:80/",
  ]);
  assert.deepEqual(reachableUrls({ hostname: "127.0.0.1", port: 8123 }, SAMPLE), [
    "http://127.0.0.1:8123/",
  ]);
});

Deno.test("this machine's own interfaces give localhost and no loopback address", () => {
  const urls = reachableUrls({ hostname: "0.0.0.0", port: 8000 }, localInterfaces() ?? []);
  assert.equal(urls[0], "http://localhost:8000/");
  for (const url of urls.slice(1)) assert.doesNotMatch(url, /\/\/127\./);
});

Deno.test("deno task start and dev may list network addresses, and nothing else of the system", () => {
  for (const task of [config.tasks.start, config.tasks.dev]) {
    const sys = task.split(/\s+/).filter((w) => w.startsWith("--allow-sys") || w === "-A");
    assert.deepEqual(sys, ["--allow-sys=networkInterfaces"], task);
  }
});
