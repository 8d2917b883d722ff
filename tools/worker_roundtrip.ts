/**
 * What one round trip to a worker costs, by two transports (short, bounded):
 * `postMessage` of JSON text each way, as `lib/sql/sqlite.ts` did until its
 * connection moved to the event loop (`557534b`), against a
 * `SharedArrayBuffer` channel (UTF-8 JSON written with
 * `TextEncoder.encodeInto`, an Int32 state word flipped with `Atomics.store`
 * + `Atomics.notify`; the worker blocks in `Atomics.wait`, the main thread
 * awaits `Atomics.waitAsync`). Prints CPU µs (whole process, from
 * /proc/self/stat) and wall µs per round trip.
 *
 * `deno run -A tools/worker_roundtrip.ts` (env `N`, round trips each, default
 * 20000). Pin it with `taskset -c 1` to see it as the benchmark's server does.
 *
 * Measured here (Deno 2.9.6, 2-core EPYC, shared machine): pinned to one
 * core, 46–77 µs CPU against 20–36; on two cores, 63–84 against 33–57. Yet
 * such a channel in place of `lib/sql/sqlite.ts`'s `postMessage` did not
 * move `deno task bench --quick --only dm,latency` beyond noise (DM
 * saturated 62 against 64 µs a DM over six runs each, ±6; latency phase 175
 * against 178 over six): at those rates one round trip carries dozens of
 * statements, so it is a few µs a DM. The latency phase's p99 did drop
 * (40–53 ms against 47–66 over six runs each). And the ~20% of the main
 * thread's DM-phase samples in `op_host_post_message_raw` moved with it to
 * the function that calls `Atomics.notify`: most likely, with both threads on
 * one core, the woken worker preempts the main thread there and those
 * samples are the worker's run, not the transport's cost.
 *
 * @module
 */

/** The worker's side: answers each batch with one empty result per op. */
function serveInWorker(): void {
  // deno-lint-ignore no-explicit-any
  const scope = self as any;
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  const answer = (text: string) => JSON.stringify((JSON.parse(text) as unknown[]).map(() => []));
  scope.onmessage = (event: MessageEvent<string | SharedArrayBuffer>) => {
    if (typeof event.data === "string") {
      scope.postMessage(answer(event.data));
      return;
    }
    const words = new Int32Array(event.data, 0, 2);
    const bytes = new Uint8Array(event.data, 8);
    scope.postMessage("ready");
    for (;;) {
      let state;
      while ((state = Atomics.load(words, 0)) !== 1 && state !== 3) Atomics.wait(words, 0, state);
      if (state === 3) return;
      const text = answer(decoder.decode(bytes.subarray(0, words[1])));
      words[1] = encoder.encodeInto(text, bytes).written;
      Atomics.store(words, 0, 2);
      Atomics.notify(words, 0);
    }
  };
}

/** CPU µs of the whole process so far (user + system). */
function cpuMicros(): number {
  const fields = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 1e6 / 100;
}

async function measure(name: string, n: number, roundTrip: () => Promise<void>): Promise<void> {
  const cpu = cpuMicros();
  const wall = performance.now();
  for (let i = 0; i < n; i++) await roundTrip();
  const cpuEach = (cpuMicros() - cpu) / n;
  const wallEach = (performance.now() - wall) * 1000 / n;
  console.log(`${name}: ${cpuEach.toFixed(1)} µs CPU, ${wallEach.toFixed(1)} µs wall a round trip`);
}

async function main(): Promise<void> {
  const n = Number(Deno.env.get("N") ?? 20_000);
  // One DM append, as the store sends it.
  const batch = JSON.stringify([[0, 0, 3, null, ["alice", "bob", 12345, "hello there"]]]);
  const worker = new Worker(import.meta.url, { type: "module" });
  try {
    await measure("postMessage", n, () =>
      new Promise<void>((resolve) => {
        worker.onmessage = () => resolve();
        worker.postMessage(batch);
      }));
    const buffer = new SharedArrayBuffer(1 << 20);
    const words = new Int32Array(buffer, 0, 2);
    const bytes = new Uint8Array(buffer, 8);
    await new Promise<void>((resolve) => {
      worker.onmessage = () => resolve();
      worker.postMessage(buffer);
    });
    const encoder = new TextEncoder();
    const decoder = new TextDecoder();
    await measure("SharedArrayBuffer", n, async () => {
      words[1] = encoder.encodeInto(batch, bytes).written;
      Atomics.store(words, 0, 1);
      Atomics.notify(words, 0);
      let state;
      while ((state = Atomics.load(words, 0)) !== 2) {
        const waiting = Atomics.waitAsync(words, 0, state);
        if (waiting.async) await waiting.value;
      }
      JSON.parse(decoder.decode(bytes.subarray(0, words[1])));
    });
    Atomics.store(words, 0, 3);
    Atomics.notify(words, 0);
  } finally {
    worker.terminate();
  }
}

// The same file is the worker (where `import.meta.main` is true as well).
if ("WorkerGlobalScope" in globalThis) serveInWorker();
else if (import.meta.main) await main();
