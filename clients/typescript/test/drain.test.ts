/**
 * Drain: SIGTERM to node A makes it close each connection with 1012, spread over DRAIN_SECONDS;
 * SDK clients given both URLs reconnect to B within the drain jitter and resume from their
 * offsets while a publisher on B keeps publishing. Prints how the reconnects spread.
 */

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BellhopClient, type ConnectedContext, type ReconnectingContext } from "../src/index.js";
import { BellhopNode, Redis, mintToken, nextEvent, startCluster, stopCluster, until } from "./support/cluster.js";

describe("drain", () => {
  let redis: Redis;
  let a: BellhopNode;
  let b: BellhopNode;
  const clients: BellhopClient[] = [];

  beforeAll(async () => {
    ({ redis, nodes: [a, b] } = await startCluster({ nodeId: "node-a", env: { DRAIN_SECONDS: "2" } }, { nodeId: "node-b" }));
  });
  afterAll(() => stopCluster(clients, [a, b], redis));

  it("SIGTERM -> 1012 -> each client reconnects to the other node soon, with jitter, and loses nothing", async () => {
    const FOLLOWERS = 10;
    const DRAIN_JITTER_MS = 1_000;
    const ch = "room:12";
    const followers = await Promise.all(
      Array.from({ length: FOLLOWERS }, async (_, i) => {
        const c = new BellhopClient({
          url: [a.url, b.url],
          token: await mintToken({ sub: `d${i}`, role: "staff" }),
          reconnect: { drainJitterMs: DRAIN_JITTER_MS },
        });
        clients.push(c);
        const rec = {
          c,
          nodes: [] as string[],
          reconnecting: [] as (ReconnectingContext & { at: number })[],
          connectedAt: [] as number[],
          offsets: [] as string[],
          ns: [] as number[],
        };
        c.on("connected", (x: ConnectedContext) => {
          rec.nodes.push(x.node);
          rec.connectedAt.push(Date.now());
        });
        c.on("reconnecting", (r) => rec.reconnecting.push({ ...r, at: Date.now() }));
        c.on("message", (m) => {
          rec.offsets.push(m.offset);
          rec.ns.push((m.message.payload as { n: number }).n);
        });
        const sub = c.newSubscription(ch);
        const ready = nextEvent(sub, "subscribed");
        sub.subscribe();
        c.connect();
        await ready;
        return rec;
      }),
    );
    for (const f of followers) expect(f.nodes).toEqual(["node-a"]);

    const pub = new BellhopClient({ url: b.url, token: await mintToken({ sub: "pms", role: "service" }) });
    clients.push(pub);
    const up = nextEvent(pub, "connected");
    pub.connect();
    await up;

    const sigterm = Date.now();
    a.terminate();
    const offsets: string[] = [];
    let n = 0;
    const allBack = () => followers.every((f) => f.nodes.length === 2);
    // Publish through the whole drain, then a few more.
    let after = 0;
    while (after < 20) {
      if (Date.now() - sigterm > 20_000) throw new Error("the drain did not finish within 20 s");
      offsets.push((await pub.publish(ch, "ROOM_STATUS_UPDATE", { n: n++ })).offset);
      if (allBack()) after += 1;
    }
    await a.exited();
    await until(() => followers.every((f) => f.offsets.length >= offsets.length), 20_000, "deliveries");

    const closes = followers.map((f) => f.reconnecting[0]!.at - sigterm).sort((x, y) => x - y);
    const delays = followers.map((f) => f.reconnecting[0]!.delayMs);
    const buckets = new Map<number, number>();
    for (const f of followers) {
      const k = Math.floor((f.connectedAt[1]! - sigterm) / 100);
      buckets.set(k, (buckets.get(k) ?? 0) + 1);
    }
    console.log(
      `sdk-ts drain: followers=${FOLLOWERS} published=${offsets.length} closes_ms=${closes[0]}..${closes.at(-1)} ` +
        `reconnect_delays_ms=${Math.min(...delays)}..${Math.max(...delays)} max_reconnects_per_100ms=${Math.max(...buckets.values())} ` +
        `lost=${followers.reduce((s, f) => s + offsets.filter((o) => !f.offsets.includes(o)).length, 0)} ` +
        `duplicated=${followers.reduce((s, f) => s + f.offsets.length - new Set(f.offsets).size, 0)}`,
    );
    for (const f of followers) {
      expect(f.nodes).toEqual(["node-a", "node-b"]);
      expect(f.reconnecting.map((r) => r.code)).toEqual([1012]);
      expect(f.reconnecting[0]!.delayMs).toBeLessThan(DRAIN_JITTER_MS);
      expect(f.offsets).toEqual(offsets); // every message, once, in order
      expect(f.ns).toEqual(Array.from({ length: offsets.length }, (_, i) => i));
    }
    // The node spreads its closes over DRAIN_SECONDS (the first at once), and the clients add
    // their jitter: not a storm.
    expect(closes.at(-1)! - closes[0]!).toBeGreaterThan(1_000);
    expect(new Set(delays).size).toBeGreaterThan(1);
  });
});
