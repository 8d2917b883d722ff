/**
 * The page while the store is away: a page of DMs that the server could not
 * read (PostgreSQL crashed) is had once it is back, on the same socket, with
 * no reload and no reconnect. (A page of who is online needs no such care:
 * an instance answers it from its own users while PostgreSQL is away.)
 *
 * @module
 */

import assert from "node:assert/strict";
import { badge, browserTest, logIn, realProblems } from "./_browser.ts";
import { ignoreWithoutPostgres, startPostgres } from "./_pg.ts";
import { startServer, within } from "./_server.ts";
import { openStore } from "../lib/sql/open.ts";

type Frame = Record<string, unknown>;
const parse = (m: string | Buffer): Frame => typeof m === "string" ? JSON.parse(m) : {};

if (!ignoreWithoutPostgres()) {
  browserTest(
    "a page of DMs refused during a PostgreSQL crash is asked again and shown after it, on the same socket",
    async (h) => {
      await using pg = await startPostgres();
      await using server = await startServer({
        data: pg.url,
        settings: { welcomeDms: 2 },
      });
      {
        await using store = await openStore(pg.url);
        for (const from of ["p1", "p2", "p3", "p4", "p5"]) {
          await store.append({ to: "alice", from, text: `hello from ${from}` });
        }
      }
      // Alice's socket goes through the test: PostgreSQL is crashed once her page's resume is
      // answered and before its request for the next page of DMs reaches the server, and
      // started again once the server's refusal has gone back to the page.
      let sockets = 0, crashed = false;
      let toResume = Infinity;
      const resumed = Promise.withResolvers<void>();
      const refused = Promise.withResolvers<void>();
      const alice = await h.open(server.origin, {
        setup: (page) =>
          page.routeWebSocket(/\/ws\//, (ws) => {
            sockets++;
            const toServer = ws.connectToServer();
            // One frame after another, in order, however long the crash takes.
            let chain = Promise.resolve();
            ws.onMessage((m) => {
              chain = chain.then(async () => {
                const f = parse(m);
                if (f.type === "resume") toResume = (f.conversations as unknown[]).length;
                if (f.type === "dms" && !crashed) {
                  crashed = true;
                  await resumed.promise;
                  await pg.crash();
                }
                toServer.send(m);
              });
            });
            toServer.onMessage((m) => {
              ws.send(m);
              const f = parse(m);
              if (f.type === "resumed" && --toResume === 0) resumed.resolve();
              if (f.type === "error" && f.code === "store_failed") refused.resolve();
            });
          }),
      });
      await logIn(alice, "alice");
      await within(20_000, "the refusal of the page's dms", refused.promise);
      await pg.restart();
      // Without a reload or a new socket: the welcome's two, then the three its refused page held.
      for (const p of ["p1", "p2", "p3", "p4", "p5"]) {
        await badge(alice, "dm", p).filter({ hasText: "1" }).waitFor();
      }

      assert.equal(sockets, 1, "the page never reconnected");
      assert.deepEqual(realProblems(h.problems), []);
    },
  );
}
