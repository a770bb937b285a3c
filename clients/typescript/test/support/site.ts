/**
 * A built page served over HTTP on a free loopback port, for the browser tests of the SDK's
 * example and of the console: the files of a directory, and routes of the test's own before
 * them (what an app's backend adds, e.g. `/token`).
 */

import { existsSync, readFileSync } from "node:fs";
import { createServer, type ServerResponse, type Server } from "node:http";
import path from "node:path";

/** Answers a request (returning true) or leaves it to the static files. */
export type Route = (url: URL, res: ServerResponse) => boolean;

/** Serves the files of `dir` (`/` is `index.html`), after `routes`. */
export function serveStatic(dir: string, routes: Route[] = []): Promise<{ server: Server; url: string }> {
  const types: Record<string, string> = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css" };
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    if (routes.some((route) => route(url, res))) return;
    const file = path.join(dir, url.pathname === "/" ? "index.html" : path.normalize(url.pathname));
    if (!file.startsWith(dir) || !existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": types[path.extname(file)] ?? "application/octet-stream" }).end(readFileSync(file));
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => {
      const a = server.address();
      resolve({ server, url: `http://127.0.0.1:${typeof a === "object" && a ? a.port : 0}` });
    }),
  );
}
