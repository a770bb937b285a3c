/**
 * Close codes and recovery against real nodes: a 1008 (too many connections of one user) stops
 * the client instead of reconnecting; a resume on a node whose broker does not hold the offset
 * (an embedded broker that was not the one that handed it out) reports `recovered: false` as a
 * `recoveryFailed` event, and the replay of what it holds still follows.
 */

import { afterEach, describe, expect, it } from "vitest";
import { BellhopClient, type BellhopError, type ReconnectingContext } from "../src/index.js";
import { BellhopNode, freePort, mintToken, nextEvent } from "./support/cluster.js";

const nodes: BellhopNode[] = [];
const clients: BellhopClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await Promise.all(nodes.splice(0).map((n) => n.stop()));
});

async function start(nodeId: string, env: Record<string, string> = {}): Promise<BellhopNode> {
  const n = await BellhopNode.start({ nodeId, env });
  nodes.push(n);
  return n;
}

describe("close codes", () => {
  it("1008 (too many connections for this user): the client stops and says why, no reconnect", async () => {
    const node = await start("node-policy", { MAX_CONNECTIONS_PER_USER: "1" });
    const token = await mintToken({ sub: "joe", role: "staff" });
    const first = new BellhopClient({ url: node.url, token });
    clients.push(first);
    const up = nextEvent(first, "connected");
    first.connect();
    await up;

    const second = new BellhopClient({ url: node.url, token });
    clients.push(second);
    const reconnects: ReconnectingContext[] = [];
    const errors: BellhopError[] = [];
    second.on("reconnecting", (r) => reconnects.push(r));
    second.on("error", (e) => errors.push(e.error));
    const down = nextEvent<{ code: number; reason: string }>(second, "disconnected");
    second.connect();
    const d = await down;
    expect(d.code).toBe(1008);
    expect(d.reason).toMatch(/too many connections/);
    expect(second.state).toBe("disconnected");
    expect(reconnects).toEqual([]);
    expect(errors.map((e) => e.code)).toContain("rate_limited");
    expect(first.state).toBe("connected");
  });
});

describe("recovery", () => {
  it("a resume the node cannot recover fires recoveryFailed, then replays what it holds", async () => {
    // Two embedded nodes, each with its own broker: node Y starts after node X handed out the
    // client's offset, so Y cannot vouch for what came after it (what a restarted single node
    // looks like to its clients).
    const portY = await freePort();
    const urlY = `ws://127.0.0.1:${portY}/ws`;
    const x = await start("node-x");
    const ch = "room:5";
    const svc = await mintToken({ sub: "pms", role: "service" });
    const pubX = new BellhopClient({ url: x.url, token: svc });
    clients.push(pubX);
    const upX = nextEvent(pubX, "connected");
    pubX.connect();
    await upX;

    const c = new BellhopClient({ url: [x.url, urlY], token: await mintToken({ sub: "ann", role: "staff" }) });
    clients.push(c);
    const sub = c.newSubscription(ch);
    const delivered: string[] = [];
    const waiters: { offset: string; resolve: () => void }[] = [];
    sub.on("message", (m) => {
      delivered.push(m.offset);
      for (const w of waiters.filter((w) => w.offset === m.offset)) w.resolve();
    });
    const seen = (offset: string) =>
      delivered.includes(offset) ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ offset, resolve }));
    const subscribed = nextEvent(sub, "subscribed");
    sub.subscribe();
    c.connect();
    await subscribed;
    const x1 = await pubX.publish(ch, "ROOM_STATUS_UPDATE", { n: "x1" });
    await seen(x1.offset);

    const y = await start("node-y", { WS_PORT: String(portY) });
    const pubY = new BellhopClient({ url: y.url, token: svc });
    clients.push(pubY);
    const upY = nextEvent(pubY, "connected");
    pubY.connect();
    await upY;
    const y1 = await pubY.publish(ch, "ROOM_STATUS_UPDATE", { n: "y1" }); // retained on Y, after x1

    const failed = nextEvent<{ since: string; offset: string }>(sub, "recoveryFailed", () => true, 15_000);
    const resubscribed = nextEvent<{ recovered: boolean; resumed: boolean }>(sub, "subscribed", () => true, 15_000);
    await x.kill();
    const f = await failed;
    expect(f.since).toBe(x1.offset);
    expect(await resubscribed).toMatchObject({ recovered: false, resumed: true });
    expect(sub.recovered).toBe(false);
    await seen(y1.offset); // the replay of what Y holds after `since`
    const y2 = await pubY.publish(ch, "ROOM_STATUS_UPDATE", { n: "y2" });
    await seen(y2.offset); // then live
    expect(delivered).toEqual([x1.offset, y1.offset, y2.offset]);
  });
});
