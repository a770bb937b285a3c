/**
 * Publish retries against real nodes: `unavailable` (Redis down) is retried after
 * `retryAfterMs` until Redis is back; a request timeout on a node that stopped answering (SIGSTOP)
 * drops the connection and retries on the other node with the same idempotency key; and a
 * repeated key gets the original ack with `duplicate: true` (on nodes that have idempotent
 * publish; skipped with the reason on nodes that do not yet).
 */

import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { BellhopClient, type MessageContext, type RetryContext } from "../src/index.js";
import { BellhopNode, Redis, mintToken, nextEvent, recordingWebSocket, startCluster, stopCluster, until } from "./support/cluster.js";

describe("publish retries", () => {
  let redis: Redis;
  let b: BellhopNode;
  const clients: BellhopClient[] = [];

  beforeAll(async () => {
    redis = await Redis.start();
    b = await BellhopNode.start({ nodeId: "node-b", redisUrl: redis.url });
  });
  afterAll(async () => {
    await b?.stop();
    await redis?.stop();
  });
  afterEach(() => {
    for (const c of clients.splice(0)) c.close();
  });

  async function connect(options: ConstructorParameters<typeof BellhopClient>[0]): Promise<BellhopClient> {
    const c = new BellhopClient(options);
    clients.push(c);
    const up = nextEvent(c, "connected");
    c.connect();
    await up;
    return c;
  }

  it("unavailable (Redis down) is retried after retryAfterMs, with the same key, until Redis is back", async () => {
    const rec = recordingWebSocket();
    const c = await connect({ url: b.url, token: await mintToken({ sub: "pms", role: "service" }), WebSocket: rec.WebSocket });
    await redis.kill();
    // The node answers `unavailable` with its hint; once the SDK is retrying, bring Redis back.
    const refused = nextEvent<RetryContext>(c, "retry", (r) => r.error.code === "unavailable", 15_000);
    const pending = c.publish("room:retry", "ROOM_STATUS_UPDATE", { n: 1 }, { deadlineMs: 45_000 });
    const r = await refused;
    expect(r.delayMs).toBe(r.error.retryAfterMs);
    await redis.restart();
    const ack = await pending;
    console.log(
      `sdk-ts publish-unavailable: attempts=${ack.attempts} first_refusal="${r.error.message}" retryAfterMs=${r.error.retryAfterMs}`,
    );
    expect(ack.attempts).toBeGreaterThan(1);
    const sends = rec.sent.filter((f) => f.type === "publish");
    expect(sends.length).toBe(ack.attempts);
    expect(new Set(sends.map((f) => f.idempotencyKey))).toEqual(new Set([ack.idempotencyKey]));
    expect(new Set(sends.map((f) => f.id)).size).toBe(sends.length); // a new request id each time
    const h = await c.history("room:retry");
    expect(h.messages.map((m) => m.message.messageId)).toEqual([ack.messageId]);
  });
});

describe("publish timeout on a stopped node", () => {
  let redis: Redis;
  let s: BellhopNode;
  let b: BellhopNode;
  const clients: BellhopClient[] = [];

  beforeAll(async () => {
    ({ redis, nodes: [s, b] } = await startCluster({ nodeId: "node-s" }, { nodeId: "node-b" }));
  });
  afterAll(() => stopCluster(clients, [s, b], redis));

  it("a publish to a node that stopped answering times out, and is retried on the other node with its key", async () => {
    const follower = new BellhopClient({ url: b.url, token: await mintToken({ sub: "f1", role: "staff" }) });
    clients.push(follower);
    const got: MessageContext[] = [];
    const sub = follower.newSubscription("room:33");
    sub.on("message", (m) => got.push(m));
    const ready = nextEvent(sub, "subscribed");
    sub.subscribe();
    follower.connect();
    await ready;

    const rec = recordingWebSocket();
    const pub = new BellhopClient({
      WebSocket: rec.WebSocket,
      url: [s.url, b.url],
      token: await mintToken({ sub: "pms", role: "service" }),
      requestTimeoutMs: 1_000,
      pingIntervalMs: 0,
      reconnect: { baseMs: 100 },
    });
    clients.push(pub);
    const up = nextEvent<{ node: string }>(pub, "connected");
    pub.connect();
    expect((await up).node).toBe("node-s");

    await s.pause(); // SIGSTOP: the socket stays open; nothing answers
    const moved = nextEvent<{ node: string }>(pub, "connected", () => true, 15_000);
    const ack = await pub.publish("room:33", "ROOM_STATUS_UPDATE", { n: 7 }, { idempotencyKey: "room33-n7" });
    expect((await moved).node).toBe("node-b");
    await s.kill(); // never let the stopped node process the stale frame
    expect(ack.attempts).toBe(2);
    expect(ack.idempotencyKey).toBe("room33-n7");
    // Sent once to the stopped node and once to the other, with the same key.
    expect(rec.sent.filter((f) => f.type === "publish").map((f) => f.idempotencyKey)).toEqual(["room33-n7", "room33-n7"]);
    await until(() => got.length >= 1, 10_000, "delivery");
    const h = await follower.history("room:33");
    expect(h.messages.map((m) => m.offset)).toEqual([ack.offset]);
    expect(got.map((m) => m.offset)).toEqual([ack.offset]);
  });

  it("a repeated idempotency key gets the original ack with duplicate: true", async () => {
    const c = new BellhopClient({ url: b.url, token: await mintToken({ sub: "pms", role: "service" }) });
    clients.push(c);
    const up = nextEvent(c, "connected");
    c.connect();
    await up;
    const key = `dup-${Date.now()}`;
    const first = await c.publish("room:34", "ROOM_STATUS_UPDATE", { n: 1 }, { idempotencyKey: key });
    const second = await c.publish("room:34", "ROOM_STATUS_UPDATE", { n: 1 }, { idempotencyKey: key });
    expect(first.duplicate).toBe(false);
    expect(second).toMatchObject({ duplicate: true, messageId: first.messageId, offset: first.offset });
    const h = await c.history("room:34");
    expect(h.messages.map((m) => m.offset)).toEqual([first.offset]);
  });
});
