/**
 * The bare relay the benchmark compares the server with: `Deno.serve` and
 * `Deno.upgradeWebSocket`, nothing stored, nothing checked. It speaks just
 * enough of `chat.v1` for the same load generator to drive it: a `welcome` on
 * open, `send` to a user or a room, `join` (answered with `joined`).
 *
 * Usage: deno run --allow-net bench/relay.ts [PORT]
 *
 * @module
 */

const users = new Map<string, WebSocket>();
const rooms = new Map<string, Set<WebSocket>>();

Deno.serve({
  hostname: "127.0.0.1",
  port: Number(Deno.args[0] ?? 0),
  onListen: ({ port }) => console.log(`relay listening on http://127.0.0.1:${port}/`),
}, (req) => {
  const user = decodeURIComponent(new URL(req.url).pathname.slice("/ws/".length));
  const { socket, response } = Deno.upgradeWebSocket(req);
  socket.onopen = () => {
    users.set(user, socket);
    socket.send(JSON.stringify({ type: "welcome", user }));
  };
  socket.onmessage = (e) => {
    const f = JSON.parse(e.data);
    if (f.type === "send" && f.to !== undefined) {
      users.get(f.to)?.send(
        JSON.stringify({ type: "message", from: user, to: f.to, text: f.text }),
      );
    } else if (f.type === "send") {
      const out = JSON.stringify({ type: "message", room: f.room, from: user, text: f.text });
      for (const member of rooms.get(f.room) ?? []) member.send(out);
    } else if (f.type === "join") {
      rooms.get(f.room)?.add(socket) ?? rooms.set(f.room, new Set([socket]));
      socket.send(JSON.stringify({ type: "joined", room: f.room, user }));
    }
  };
  socket.onclose = () => {
    if (users.get(user) === socket) users.delete(user);
    for (const members of rooms.values()) members.delete(socket);
  };
  return response;
});
