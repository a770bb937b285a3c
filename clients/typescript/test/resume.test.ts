/**
 * A node killed with SIGKILL mid-stream, in a two-node cluster on one real redis-server: SDK
 * clients on node A (given both URLs) resume on node B with `since` = their last offset, and end
 * with every acknowledged message exactly once, in order. Prints the figures.
 *
 * The second case kills the publisher's own node: its in-flight publish is retried on the other
 * node with the same idempotency key.
 */

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BellhopClient, type ConnectedContext, type MessageContext } from "../src/index.js";
import { BellhopNode, Redis, mintToken, nextEvent, startCluster, stopCluster, until } from "./support/cluster.js";

const CHANNELS = ["room:7", "room:8"] as const;

interface Delivery {
  channel: string;
  offset: string;
  messageId: string;
  n: number;
}

interface Ack {
  channel: string;
  offset: string;
  messageId: string;
  n: number;
}

/** A client that records every message its subscriptions deliver. */
class Follower {
  readonly received: Delivery[] = [];
  readonly nodes: string[] = [];
  readonly closes: number[] = [];
  notRecovered = 0;
  constructor(
    readonly name: string,
    readonly client: BellhopClient,
  ) {
    client.on("connected", (c: ConnectedContext) => this.nodes.push(c.node));
    client.on("reconnecting", (r) => this.closes.push(r.code));
    client.on("message", (m: MessageContext) =>
      this.received.push({
        channel: m.channel,
        offset: m.offset,
        messageId: m.message.messageId,
        n: (m.message.payload as { n: number }).n,
      }),
    );
  }

  static async start(name: string, urls: string[], channels: readonly string[]): Promise<Follower> {
    const client = new BellhopClient({ url: urls, token: await mintToken({ sub: name, role: "staff" }) });
    const f = new Follower(name, client);
    const subscribed = channels.map((ch) => {
      const sub = client.newSubscription(ch);
      sub.on("recoveryFailed", () => (f.notRecovered += 1));
      const p = nextEvent(sub, "subscribed");
      sub.subscribe();
      return p;
    });
    client.connect();
    await Promise.all(subscribed);
    return f;
  }

  get droppedByOffset(): number {
    return this.client.subscriptions().reduce((n, s) => n + s.duplicatesDropped, 0);
  }
}

interface Figures {
  published: number;
  acknowledged: number;
  delivered: number;
  lost: number;
  duplicated: number;
  reordered: number;
  unexpected: number;
}

/** Counts, over every follower, what the acks promised against what was delivered. */
function tally(published: number, acks: Ack[], followers: Follower[]): Figures {
  const acked = new Map(acks.map((a) => [a.messageId, a]));
  const f: Figures = { published, acknowledged: acks.length, delivered: 0, lost: 0, duplicated: 0, reordered: 0, unexpected: 0 };
  for (const fo of followers) {
    const seen = new Set<string>();
    const lastN = new Map<string, number>();
    for (const d of fo.received) {
      if (seen.has(d.messageId)) {
        f.duplicated += 1;
        continue;
      }
      seen.add(d.messageId);
      f.delivered += 1;
      if (!acked.has(d.messageId)) f.unexpected += 1;
      const prev = lastN.get(d.channel);
      if (prev !== undefined && d.n < prev) f.reordered += 1;
      lastN.set(d.channel, d.n);
    }
    for (const a of acks) if (!seen.has(a.messageId)) f.lost += 1;
  }
  return f;
}

function line(name: string, f: Figures, extra: string): string {
  return (
    `${name}: published=${f.published} acknowledged=${f.acknowledged} delivered=${f.delivered} ` +
    `lost=${f.lost} duplicated=${f.duplicated} reordered=${f.reordered} unexpected=${f.unexpected} ${extra}`
  );
}

describe("resume across nodes", () => {
  let redis: Redis;
  let a: BellhopNode;
  let b: BellhopNode;
  const clients: BellhopClient[] = [];

  beforeAll(async () => {
    ({ redis, nodes: [a, b] } = await startCluster({ nodeId: "node-a" }, { nodeId: "node-b" }));
  });
  afterAll(() => stopCluster(clients, [a, b], redis));

  it("SIGKILL of node A while 1,000 messages are published: its clients resume on B with none lost, duplicated or reordered", async () => {
    const N = 1000;
    const started = Date.now();
    const onA = await Promise.all([0, 1, 2].map((i) => Follower.start(`s${i}`, [a.url, b.url], CHANNELS)));
    const onB = await Follower.start("s-control", [b.url, a.url], CHANNELS);
    const followers = [...onA, onB];
    clients.push(...followers.map((f) => f.client));
    for (const f of onA) expect(f.nodes).toEqual(["node-a"]);

    const publisher = new BellhopClient({ url: [b.url, a.url], token: await mintToken({ sub: "pms", role: "service" }) });
    clients.push(publisher);
    const up = nextEvent(publisher, "connected");
    publisher.connect();
    await up;

    const acks: Ack[] = [];
    const failures: string[] = [];
    let killedAfter = -1;
    for (let n = 0; n < N; n++) {
      if (n === Math.floor(N / 3)) {
        await a.kill(); // no drain, no close frames
        killedAfter = acks.length;
      }
      const channel = CHANNELS[n % 2]!;
      try {
        const ack = await publisher.publish(channel, "ROOM_STATUS_UPDATE", { n });
        acks.push({ channel, offset: ack.offset, messageId: ack.messageId, n });
      } catch (e) {
        failures.push(String(e));
      }
    }
    // Wait (with a deadline) until every follower delivered every acknowledged message.
    await until(() => followers.every((f) => new Set(f.received.map((d) => d.messageId)).size >= acks.length), 30_000, "deliveries");

    const figures = tally(N, acks, followers);
    const reconnects = followers.reduce((n, f) => n + f.nodes.length - 1, 0);
    const notRecovered = followers.reduce((n, f) => n + f.notRecovered, 0);
    const dropped = followers.reduce((n, f) => n + f.droppedByOffset, 0);
    console.log(
      line(
        "sdk-ts node-sigkill",
        figures,
        `followers=${followers.length} killed_after_acks=${killedAfter} client_reconnects=${reconnects} ` +
          `not_recovered=${notRecovered} dropped_by_offset=${dropped} elapsed_ms=${Date.now() - started}`,
      ),
    );
    expect(failures).toEqual([]);
    expect(figures).toEqual({
      published: N,
      acknowledged: N,
      delivered: N * followers.length,
      lost: 0,
      duplicated: 0,
      reordered: 0,
      unexpected: 0,
    });
    expect(notRecovered).toBe(0);
    for (const f of onA) {
      expect(f.nodes, `${f.name} resumed on B`).toEqual(["node-a", "node-b"]);
      expect(f.closes, `${f.name}: a killed node sends no close frame`).toEqual([1006]);
    }
    expect(onB.nodes).toEqual(["node-b"]);
  });

  it("SIGKILL of the publisher's node: the in-flight publish is retried on the other node with its idempotency key", async () => {
    const N = 300;
    const c = await BellhopNode.start({ nodeId: "node-c", redisUrl: redis.url });
    try {
      const followers = await Promise.all([0, 1].map((i) => Follower.start(`p${i}`, [b.url], ["room:9"])));
      clients.push(...followers.map((f) => f.client));
      const publisher = new BellhopClient({ url: [c.url, b.url], token: await mintToken({ sub: "pms2", role: "service" }) });
      clients.push(publisher);
      const up = nextEvent<ConnectedContext>(publisher, "connected");
      publisher.connect();
      expect((await up).node).toBe("node-c");

      // Does this node know idempotency keys? (A repeat of a key gets the original ack.)
      const probe = await publisher.publish("room:probe", "PROBE", null, { idempotencyKey: "probe-1" });
      const again = await publisher.publish("room:probe", "PROBE", null, { idempotencyKey: "probe-1" });
      const idempotent = again.duplicate && again.offset === probe.offset;

      const acks: Ack[] = [];
      const pending: Promise<void>[] = [];
      let retried = 0;
      for (let n = 0; n < N; n++) {
        // Several publishes in flight when the node dies: each must resolve exactly once.
        if (n === 100) void c.kill();
        const p = publisher.publish("room:9", "ROOM_STATUS_UPDATE", { n }).then((ack) => {
          if (ack.attempts > 1) retried += 1;
          acks.push({ channel: "room:9", offset: ack.offset, messageId: ack.messageId, n });
        });
        pending.push(p);
        if (pending.length >= 8) await pending.shift();
      }
      await Promise.all(pending);
      const offsets = new Set(acks.map((x) => x.offset));
      await until(() => followers.every((f) => new Set(f.received.map((d) => d.offset)).size >= offsets.size), 30_000, "deliveries");

      // What the channel stored, from the node's own history: a publish stored twice shows up
      // as two offsets with one `n`.
      const stored: number[] = [];
      for await (const page of followers[0]!.client.historyPages("room:9")) {
        stored.push(...page.messages.map((m) => (m.message.payload as { n: number }).n));
      }
      const storedTwice = stored.length - new Set(stored).size;
      const byOffset = followers.map((f) => f.received.length - new Set(f.received.map((d) => d.offset)).size);
      const nsDelivered = followers.map((f) => new Set(f.received.map((d) => d.n)).size);
      console.log(
        `sdk-ts publisher-node-sigkill: published=${N} acknowledged=${acks.length} retried=${retried} ` +
          `stored=${stored.length} stored_twice=${storedTwice} delivered_per_follower=${followers.map((f) => f.received.length).join(",")} ` +
          `offsets_delivered_twice=${byOffset.reduce((x, y) => x + y, 0)} idempotent_node=${idempotent}`,
      );
      expect(acks.length).toBe(N);
      expect(nsDelivered).toEqual(followers.map(() => N)); // none lost
      expect(byOffset).toEqual(followers.map(() => 0)); // the SDK delivers each offset once
      if (idempotent) {
        expect(storedTwice).toBe(0);
      } else if (storedTwice > 0) {
        console.log(
          `sdk-ts publisher-node-sigkill: ${storedTwice} publish(es) stored twice: this node ignores idempotencyKey ` +
            "(a publish the killed node stored but never acknowledged was stored again on retry)",
        );
      }
    } finally {
      await c.stop();
    }
  });
});
