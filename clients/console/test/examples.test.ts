/**
 * The examples in examples/, run as a newcomer would: the guest page and the housekeeping
 * tablet built with examples/vite.config.mts and opened in Debian's chromium (playwright-core),
 * the PMS script run by python3, all against a real `bellhop serve`. A guest asks for towels,
 * the tablet shows the request and answers it, the guest sees the answer; the PMS publishes a
 * room's status over the HTTP API and the tablet's board shows it; a reload of the tablet
 * resumes after its saved offset (nothing shown twice).
 */

import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { chromium, type Browser, type Page } from "playwright-core";
import { build } from "vite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BellhopNode, mintToken } from "../../typescript/test/support/cluster.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const examples = path.resolve(here, "../../../examples");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

/** Serves `dir` and `token` (what the hotel's backend does for the signed-in user). */
function site(dir: string, token: string): Promise<{ server: Server; url: string }> {
  const types: Record<string, string> = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css" };
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    if (url.pathname === "/token") return void res.writeHead(200, { "content-type": "text/plain" }).end(token);
    const file = path.join(dir, url.pathname === "/" ? "index.html" : path.normalize(url.pathname));
    if (!file.startsWith(dir) || !existsSync(file)) return void res.writeHead(404).end();
    res.writeHead(200, { "content-type": types[path.extname(file)] ?? "application/octet-stream" }).end(readFileSync(file));
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => {
      const a = server.address();
      resolve({ server, url: `http://127.0.0.1:${typeof a === "object" && a ? a.port : 0}` });
    }),
  );
}

async function built(name: string): Promise<string> {
  const out = path.join(tmpdir(), `bellhop-example-${name}-${process.pid}`);
  await build({ configFile: path.join(examples, "vite.config.mts"), root: path.join(examples, name), build: { outDir: out } });
  return out;
}

describe("the examples", () => {
  let node: BellhopNode;
  let sites: { server: Server; url: string }[] = [];
  let browser: Browser;
  let guest: Page;
  let tablet: Page;

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (make console does)`);
    node = await BellhopNode.start({ nodeId: "node-1" });
    const [guestDir, tabletDir] = await Promise.all([built("guest-page"), built("housekeeping-tablet")]);
    sites = await Promise.all([
      site(guestDir, await mintToken({ sub: "g412", role: "guest", rooms: ["412"] })),
      site(tabletDir, await mintToken({ sub: "maria", role: "staff", depts: ["housekeeping"] })),
    ]);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
    [guest, tablet] = await Promise.all([browser.newPage(), browser.newPage()]);
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    for (const s of sites) s.server.close();
    await node?.stop();
  });

  it("a guest's request reaches the tablet, the tablet's answer reaches the guest, the PMS's room status reaches the board", async () => {
    const q = `?node=${encodeURIComponent(node.url)}`;
    await tablet.goto(`${sites[1]!.url}/${q}`);
    await guest.goto(`${sites[0]!.url}/${q}`);
    for (const page of [tablet, guest]) await page.waitForFunction(() => document.getElementById("status")?.textContent === "connected", null, { timeout: 15_000 });
    expect(await guest.textContent("#room")).toBe("412");

    await guest.click('button[data-item="towels"]');
    await guest.waitForFunction(() => document.querySelector('button[data-item="towels"]')?.textContent === "towels: requested", null, { timeout: 15_000 });
    await tablet.waitForFunction(() => document.getElementById("requests")?.textContent?.includes("Room 412: towels"), null, { timeout: 15_000 });

    await tablet.click("#requests button");
    await guest.waitForFunction(() => document.getElementById("updates")?.textContent === "towels: resolved", null, { timeout: 15_000 });
    await tablet.waitForFunction(() => document.querySelectorAll("#requests li").length === 0, null, { timeout: 15_000 });

    const { stdout } = await promisify(execFile)("python3", [path.join(examples, "pms/room_status.py"), "412", "clean", "305", "dirty"], {
      env: { PATH: process.env.PATH ?? "", BELLHOP_URL: node.httpUrl, BELLHOP_TOKEN: await mintToken({ sub: "pms", role: "service" }) },
    });
    expect(stdout).toMatch(/^room 412 clean: stored at \d+-\d+\nroom 305 dirty: stored at \d+-\d+\n$/);
    await tablet.waitForFunction(() => document.getElementById("room-305")?.className === "dirty", null, { timeout: 15_000 });
    expect(await tablet.getAttribute("#room-412", "class")).toBe("clean");
    console.log(`examples: guest request -> tablet -> guest answer ok; pms: ${stdout.trim().replace(/\n/g, "; ")}`);

    // A reload resumes after the saved offset: the handled request does not come back.
    await tablet.reload();
    await tablet.waitForFunction(() => document.getElementById("status")?.textContent === "connected", null, { timeout: 15_000 });
    await promisify(execFile)("python3", [path.join(examples, "pms/room_status.py"), "412", "inspected"], {
      env: { PATH: process.env.PATH ?? "", BELLHOP_URL: node.httpUrl, BELLHOP_TOKEN: await mintToken({ sub: "pms", role: "service" }) },
    });
    await tablet.waitForFunction(() => document.getElementById("room-412")?.className === "inspected", null, { timeout: 15_000 });
    expect(await tablet.$$("#requests li")).toHaveLength(0);
    expect(await tablet.$$("#rooms tr")).toHaveLength(1);
  });
});
