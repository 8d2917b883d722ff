/**
 * A flooder for `chat_bench.ts`, in its own process so that its busy loop
 * slows the server, not the benchmark's own clients. Connects as the given
 * user and says "ready"; on a line from stdin it sends lobby messages as fast
 * as the socket takes them until the server closes the connection, then
 * connects again and goes on, `rounds` times; it prints each close code.
 *
 * Usage: deno run --allow-net bench/flood.ts ws://127.0.0.1:PORT USER [ROUNDS]
 *
 * @module
 */

const [origin, user, rounds = "3"] = Deno.args;
const frame = JSON.stringify({ type: "send", room: "lobby", text: "flood ".repeat(50) });

let token: string | undefined;

async function connect(): Promise<WebSocket> {
  // The first connection claims the name; reconnections prove it with the token.
  const ws = new WebSocket(
    `${origin}/ws/${user}`,
    token ? ["chat.v1", `token.${token}`] : ["chat.v1"],
  );
  await new Promise<void>((resolve, reject) => {
    ws.onmessage = (e) => {
      const frame = JSON.parse(e.data);
      if (frame.type !== "welcome") return;
      token ??= frame.token;
      resolve();
    };
    ws.onclose = (e) => reject(new Error(`refused: ${e.code} ${e.reason}`));
  });
  return ws;
}

let ws = await connect();
console.log("ready");
// Wait for the go-ahead, so the flood overlaps the measurement.
await Deno.stdin.readable.getReader().read();
for (let round = 0; round < Number(rounds); round++) {
  if (round > 0) ws = await connect();
  const closed = new Promise<CloseEvent>((resolve) => ws.onclose = resolve);
  for (let n = 0; n < 50_000 && ws.readyState === WebSocket.OPEN; n++) {
    ws.send(frame);
    // Let the socket drain now and then, so the flood keeps coming rather than piling up here.
    if (n % 200 === 199) await new Promise((resolve) => setTimeout(resolve, 0));
  }
  console.log(`closed ${(await closed).code}`);
}
Deno.exit(0);
