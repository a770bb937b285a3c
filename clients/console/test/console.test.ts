/**
 * The front-desk console in a real browser (Debian's chromium driven by playwright-core, no
 * browser download), built with Vite, against real `bellhop serve` nodes on one real
 * redis-server: sign in with a token, see the channels it may use, a message published over
 * the HTTP API, an emergency alert and an announcement published from the console, presence and
 * unread counts; then the console's node is SIGKILLed and restarted on the same port while 30
 * messages are published (through the other node): the console says it is reconnecting, then
 * shows every one once, in order. Saves screenshots in test-results/ (with UPDATE_SCREENSHOTS=1 also the ones docs/CONSOLE.md
 * shows: docs/console.png, docs/console-reconnecting.png).
 */

import { copyFileSync, existsSync, mkdirSync } from "node:fs";
import type { Server } from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type Page } from "playwright-core";
import { build } from "vite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BellhopClient } from "../../typescript/src/index.js";
import { BellhopNode, Redis, freePort, mintToken, nextEvent, startCluster, stopCluster } from "../../typescript/test/support/cluster.js";
import { serveStatic } from "../../typescript/test/support/site.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const pkg = path.resolve(here, "..");
const repo = path.resolve(pkg, "../..");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const DESK = "dept:frontdesk";

interface View {
  received: { channel: string; offset: string; event: string; priority: string; payload: { n?: number; text?: string } }[];
  nodes: string[];
  state: string;
}

/** POST /api/v1/publish on `node`: the way a hotel system publishes. */
async function httpPublish(node: BellhopNode, token: string, body: Record<string, unknown>): Promise<string> {
  const r = await fetch(`${node.httpUrl}/api/v1/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const json = (await r.json()) as { offset?: string };
  if (!r.ok || !json.offset) throw new Error(`publish: HTTP ${r.status} ${JSON.stringify(json)}`);
  return json.offset;
}

describe("the front-desk console in a real browser", () => {
  let redis: Redis;
  let a: BellhopNode;
  let b: BellhopNode;
  let portA: number;
  let site: { server: Server; url: string };
  let browser: Browser;
  let page: Page;
  let service: string;
  let colleague: BellhopClient;

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (make console does)`);
    const out = path.join(tmpdir(), `bellhop-console-${process.pid}`);
    await build({ configFile: path.join(pkg, "vite.config.ts"), build: { outDir: out } });
    portA = await freePort();
    ({ redis, nodes: [a, b] } = await startCluster({ nodeId: "node-a", env: { WS_PORT: String(portA) } }, { nodeId: "node-b" }));
    site = await serveStatic(out);
    service = await mintToken({ sub: "pms", role: "service" });
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
    page = await browser.newPage({ viewport: { width: 1000, height: 720 } });
  }, 120_000);

  afterAll(async () => {
    colleague?.close();
    await browser?.close();
    site?.server.close();
    await stopCluster([], [a, b], redis);
  });

  /** A screenshot in test-results/; with UPDATE_SCREENSHOTS=1 also into docs/ (the committed ones). */
  const shot = async (name: string) => {
    mkdirSync(path.join(pkg, "test-results"), { recursive: true });
    await page.screenshot({ path: path.join(pkg, "test-results", name) });
    if (process.env.UPDATE_SCREENSHOTS === "1") copyFileSync(path.join(pkg, "test-results", name), path.join(repo, "docs", name));
  };
  const view = () => page.evaluate(() => structuredClone((window as unknown as { consoleView: View }).consoleView));
  const shows = (offset: string) =>
    page.waitForFunction((o) => (window as unknown as { consoleView: View }).consoleView.received.some((r) => r.offset === o), offset, { timeout: 15_000 });

  it("signs in, shows its channels, a message published over the HTTP API, presence, unread; publishes an alert and an announcement", async () => {
    await page.goto(`${site.url}/?node=${encodeURIComponent(a.url)}`);
    const token = await mintToken({ sub: "desk-anna", role: "manager", depts: ["frontdesk", "housekeeping"], rooms: ["101"] });
    await page.fill("#token", token);
    await page.click("#signin button");
    await page.waitForFunction(() => document.getElementById("status")?.textContent === "connected to node-a", null, { timeout: 15_000 });
    const channels = await page.$$eval("#channels tbody tr", (rows) => rows.map((r) => (r as HTMLElement).dataset.channel));
    expect(channels).toEqual(["broadcast", "user:desk-anna", "dept:frontdesk", "dept:housekeeping", "room:101"]);

    // A colleague joins the front desk: presence shows two.
    colleague = new BellhopClient({ url: [b.url], token: await mintToken({ sub: "desk-ben", role: "staff", depts: ["frontdesk"] }) });
    colleague.connect();
    const sub = colleague.newSubscription(DESK);
    const subscribed = nextEvent(sub, "subscribed");
    sub.subscribe();
    await subscribed;
    await page.waitForFunction((ch) => document.querySelector(`tr[data-channel="${ch}"] .here`)?.textContent === "2", DESK, { timeout: 15_000 });

    // The PMS publishes over the HTTP API; the console shows it and counts it unread.
    const offset = await httpPublish(b, service, { channel: DESK, event: "GUEST_CHECKIN", payload: { text: "Room 412 checked in: Ms. Okafor" } });
    await shows(offset);
    expect(await page.textContent("#feed li.prio-high")).toContain("Room 412 checked in");
    expect(Number(await page.textContent(`tr[data-channel="${DESK}"] .unread`))).toBeGreaterThanOrEqual(1);

    // An emergency alert from the console: urgent, red, and the colleague gets it.
    const alert = nextEvent<{ message: { event: string; priority: string } }>(sub, "message", (m) => m.message.event === "EMERGENCY_ALERT");
    await page.selectOption("#pub-channel", DESK);
    await page.check('input[value="EMERGENCY_ALERT"]');
    await page.fill("#pub-text", "Fire alarm, 3rd floor east: evacuate");
    await page.click("#publish button");
    await page.waitForFunction(() => document.getElementById("pub-result")?.textContent?.startsWith("sent"), null, { timeout: 15_000 });
    expect((await alert).message.priority).toBe("urgent");
    await page.waitForSelector("#feed li.prio-urgent", { timeout: 15_000 });
    expect(await page.textContent("#feed li.prio-urgent")).toContain("Fire alarm");

    // An announcement to everyone.
    await page.selectOption("#pub-channel", "broadcast");
    await page.check('input[value="ANNOUNCEMENT"]');
    await page.fill("#pub-text", "Pool closed 14:00-16:00 for cleaning");
    await page.click("#publish button");
    await page.waitForFunction(() => (window as unknown as { consoleView: View }).consoleView.received.some((r) => r.event === "ANNOUNCEMENT"), null, { timeout: 15_000 });
    await httpPublish(b, service, { channel: "dept:housekeeping", event: "ROOM_STATUS_UPDATE", payload: { text: "Room 101 clean", room: "101" }, priority: "low" });
  });

  it("survives a restart of its node: says it is reconnecting, then shows every message once, in order", async () => {
    const before = (await view()).received.length;
    await a.kill(); // SIGKILL: no close frame
    await page.waitForFunction(() => document.getElementById("status")?.textContent?.startsWith("connection lost: reconnecting"), null, { timeout: 15_000 });
    const statusDuringOutage = await page.textContent("#status");
    await shot("console-reconnecting.png");
    const offsets: string[] = [];
    for (let n = 0; n < 30; n++) {
      offsets.push(await httpPublish(b, service, { channel: DESK, event: "SERVICE_REQUEST", payload: { n, text: `Request ${n}: towels to room ${400 + n}` } }));
    }
    // The same node comes back on the same address.
    a = await BellhopNode.start({ nodeId: "node-a", redisUrl: redis.url, env: { WS_PORT: String(portA) } });
    await page.waitForFunction(() => document.getElementById("status")?.textContent === "connected to node-a", null, { timeout: 30_000 });
    await shows(offsets.at(-1)!);
    const v = await view();
    const after = v.received.slice(before).filter((r) => r.channel === DESK);
    const shown = after.map((r) => r.offset);
    const lost = offsets.filter((o) => !shown.includes(o)).length;
    const duplicated = shown.length - new Set(shown).size;
    console.log(
      `console node-restart: published=${offsets.length} acknowledged=${offsets.length} delivered=${new Set(shown).size} lost=${lost} duplicated=${duplicated} ` +
        `nodes=${v.nodes.join(">")} status_during_outage="${statusDuringOutage}"`,
    );
    expect(shown).toEqual(offsets);
    expect(after.map((r) => r.payload.n)).toEqual(Array.from({ length: 30 }, (_, i) => i));
    expect(v.nodes).toEqual(["node-a", "node-a"]);
    expect(await page.isHidden("#gap")).toBe(true);
    // The unread count is the node's: every message on the desk since no read marker.
    const unread = Number(await page.textContent(`tr[data-channel="${DESK}"] .unread`));
    expect(unread).toBe(v.received.filter((r) => r.channel === DESK).length); // no read marker yet: all of them
    // A few priorities for the screenshot.
    for (const [event, text, priority] of [
      ["HOUSEKEEPING_ALERT", "Room 215 asks for late checkout cleaning", "low"],
      ["ROOM_STATUS_UPDATE", "Room 305 out of order: leak under sink", "high"],
      ["EMERGENCY_ALERT", "Guest fell in lobby: first aider to the front desk", "urgent"],
    ] as const) {
      await shows(await httpPublish(b, service, { channel: DESK, event, payload: { text }, priority }));
    }
    await page.click(`tr[data-channel="dept:housekeeping"] .unread`);
    await page.waitForFunction(() => document.querySelector('tr[data-channel="dept:housekeeping"] .unread')?.textContent === "0", null, { timeout: 15_000 });
    await shot("console.png");
  });
});
