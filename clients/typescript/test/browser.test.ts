/**
 * The README's example page (examples/feed), built with Vite and opened in a real browser
 * (Debian's chromium, driven by playwright-core: no browser download), on a two-node cluster on
 * one real redis-server: the page's node is SIGKILLed while 300 messages are published, and the
 * page shows every one once, in order, from the other node. Then the page is reloaded and
 * resumes from the offset it saved. Saves a screenshot in test-results/.
 */

import { existsSync, mkdirSync } from "node:fs";
import type { Server } from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type Page } from "playwright-core";
import { build } from "vite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BellhopClient } from "../src/index.js";
import { BellhopNode, Redis, mintToken, nextEvent, startCluster, stopCluster } from "./support/cluster.js";
import { serveStatic, type Route } from "./support/site.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const pkg = path.resolve(here, "..");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const CH = "dept:housekeeping";

interface Feed {
  received: { offset: string; n: number; event: string }[];
  nodes: string[];
  state: string;
  subscription: string;
}

/** Serves the built page and `/token` (what an app's backend does: mint a token for its user). */
function serve(dir: string): Promise<{ server: Server; url: string }> {
  const token: Route = (url, res) => {
    if (url.pathname !== "/token") return false;
    mintToken({ sub: "maria", role: "staff", depts: ["housekeeping"] }).then(
      (t) => res.writeHead(200, { "content-type": "text/plain" }).end(t),
      (e) => res.writeHead(500).end(String(e)),
    );
    return true;
  };
  return serveStatic(dir, [token]);
}

describe("the README's page in a real browser", () => {
  let redis: Redis;
  let a: BellhopNode;
  let b: BellhopNode;
  let site: { server: Server; url: string };
  let browser: Browser;
  let page: Page;
  let publisher: BellhopClient;

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (make sdk-ts does)`);
    const out = path.join(tmpdir(), `bellhop-feed-${process.pid}`);
    await build({ configFile: path.join(pkg, "examples/feed/vite.config.ts"), build: { outDir: out } });
    ({ redis, nodes: [a, b] } = await startCluster({ nodeId: "node-a" }, { nodeId: "node-b" }));
    site = await serve(out);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-gpu"] });
    page = await browser.newPage({ viewport: { width: 900, height: 700 } });
    publisher = new BellhopClient({ url: [b.url], token: await mintToken({ sub: "pms", role: "service" }) });
    const up = nextEvent(publisher, "connected");
    publisher.connect();
    await up;
  }, 120_000);

  afterAll(async () => {
    publisher?.close();
    await browser?.close();
    site?.server.close();
    await stopCluster([], [a, b], redis);
  });

  const feed = () => page.evaluate(() => {
    const f = (window as unknown as { feed: Feed }).feed;
    return { received: [...f.received], nodes: [...f.nodes], state: f.state };
  });

  it("survives a SIGKILL of its node: every message shown once, in order", async () => {
    const query = `?node=${encodeURIComponent(a.url)}&node=${encodeURIComponent(b.url)}&channel=${encodeURIComponent(CH)}`;
    await page.goto(`${site.url}/${query}`);
    await page.waitForFunction(() => document.getElementById("status")?.textContent === "connected", null, { timeout: 15_000 });
    // Subscribed (the node confirmed it; the page subscribes without `since`, so a message
    // published before that would not be replayed): a message published now reaches the page.
    await page.waitForFunction(() => (window as unknown as { feed: Feed }).feed.subscription === "subscribed", null, { timeout: 15_000 });
    const first = await publisher.publish(CH, "HOUSEKEEPING_ALERT", { n: 0 });
    await page.waitForFunction((o) => (window as unknown as { feed: Feed }).feed.received.some((r) => r.offset === o), first.offset, { timeout: 15_000 });
    expect((await feed()).nodes).toEqual(["node-a"]);

    const N = 300;
    const offsets = [first.offset];
    for (let n = 1; n < N; n++) {
      if (n === 100) await a.kill();
      const priority = n % 50 === 0 ? "urgent" : undefined;
      offsets.push((await publisher.publish(CH, n % 50 === 0 ? "EMERGENCY_ALERT" : "HOUSEKEEPING_ALERT", { n }, priority ? { priority } : {})).offset);
    }
    await page.waitForFunction((count) => (window as unknown as { feed: Feed }).feed.received.length >= count, N, { timeout: 30_000 });
    const f = await feed();
    const lost = offsets.filter((o) => !f.received.some((r) => r.offset === o)).length;
    const duplicated = f.received.length - new Set(f.received.map((r) => r.offset)).size;
    console.log(
      `sdk-ts browser-page-sigkill: published=${N} acknowledged=${offsets.length} delivered=${new Set(f.received.map((r) => r.offset)).size} ` +
        `lost=${lost} duplicated=${duplicated} nodes=${f.nodes.join(">")}`,
    );
    expect(f.received.map((r) => r.offset)).toEqual(offsets);
    expect(f.received.map((r) => r.n)).toEqual(Array.from({ length: N }, (_, i) => i));
    expect(f.nodes).toEqual(["node-a", "node-b"]);
    expect(f.state).toBe("connected");
    expect(await page.textContent("#count")).toBe(String(N));
    const dir = path.join(pkg, "test-results");
    mkdirSync(dir, { recursive: true });
    await page.screenshot({ path: path.join(dir, "feed-after-node-kill.png") });
  });

  it("a reload resumes after the offset the page saved: what was published meanwhile, nothing twice", async () => {
    const before = await feed();
    const last = before.received.at(-1)!.offset;
    expect(await page.evaluate((ch) => localStorage.getItem(`bellhop:offset:${ch}`), CH)).toBe(last);
    // Leave the page, publish while it is gone, come back.
    await page.goto("about:blank");
    const meanwhile: string[] = [];
    for (let n = 1000; n < 1010; n++) meanwhile.push((await publisher.publish(CH, "HOUSEKEEPING_ALERT", { n })).offset);
    await page.goBack();
    await page.waitForFunction((count) => (window as unknown as { feed?: Feed }).feed?.received.length === count, meanwhile.length, { timeout: 15_000 });
    const after = await publisher.publish(CH, "HOUSEKEEPING_ALERT", { n: 1010 });
    await page.waitForFunction((o) => (window as unknown as { feed: Feed }).feed.received.some((r) => r.offset === o), after.offset, { timeout: 15_000 });
    const f = await feed();
    expect(f.received.map((r) => r.offset)).toEqual([...meanwhile, after.offset]);
    expect(f.nodes).toEqual(["node-b"]); // node A is gone: the first URL fails, the second answers
  });
});
