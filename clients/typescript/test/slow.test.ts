/**
 * 4008 slow consumer: a follower (the built SDK in its own process) is stopped with SIGSTOP
 * while messages pour into its channel, until the node gives up on it (its outbound queue full,
 * or a write stalled: close 4008, counted by bellhop_slow_consumer_disconnects_total). Resumed
 * with SIGCONT, it reads what was buffered, meets the 4008, reconnects and resumes from its
 * offset: every message once, in order.
 */

import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BellhopClient, compareOffsets } from "../src/index.js";
import { BellhopNode, mintToken, nextEvent, pauseProcess, until } from "./support/cluster.js";

const here = path.dirname(fileURLToPath(import.meta.url));

interface Line {
  ev: string;
  code?: number;
  reason?: string;
  offset?: string;
  n?: number;
  recovered?: boolean;
}

async function slowConsumerDisconnects(node: BellhopNode): Promise<number> {
  const text = await fetch(`${node.adminUrl}/metrics`).then((r) => r.text());
  const m = /^bellhop_slow_consumer_disconnects_total(?:\{[^}]*\})? (\d+)/m.exec(text);
  return m ? Number(m[1]) : 0;
}

describe("slow consumer", () => {
  let node: BellhopNode;
  let child: ChildProcess | undefined;
  beforeAll(async () => {
    node = await BellhopNode.start({ nodeId: "node-slow" });
  });
  afterAll(async () => {
    child?.kill("SIGCONT");
    child?.kill("SIGKILL");
    await node?.stop();
  });

  it("a follower closed with 4008 reconnects and resumes from its offset, losing nothing", async () => {
    const ch = "room:flood";
    const lines: Line[] = [];
    child = spawn(process.execPath, [path.join(here, "support/follower.mjs"), node.url, await mintToken({ sub: "slow", role: "staff" }), ch], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    createInterface({ input: child.stdout! }).on("line", (l) => lines.push(JSON.parse(l) as Line));
    await until(() => lines.some((l) => l.ev === "subscribed"), 10_000, "follower subscribed");

    const pub = new BellhopClient({ url: node.url, token: await mintToken({ sub: "pms", role: "service" }) });
    const up = nextEvent(pub, "connected");
    pub.connect();
    await up;
    try {
      await pauseProcess(child);
      const before = await slowConsumerDisconnects(node);
      const filler = "x".repeat(9_000);
      const offsets: string[] = [];
      // Bounded: at most 4,000 messages of 9 KB (36 MB) until the node closes the follower.
      while ((await slowConsumerDisconnects(node)) === before) {
        if (offsets.length >= 4_000) throw new Error("the node never closed the stopped follower");
        const batch = Array.from({ length: 50 }, (_, i) => pub.publish(ch, "CHAT_MESSAGE", { n: offsets.length + i, filler }));
        for (const ack of await Promise.all(batch)) offsets.push(ack.offset);
      }
      const closedAfter = offsets.length;
      for (let i = 0; i < 20; i++) offsets.push((await pub.publish(ch, "CHAT_MESSAGE", { n: offsets.length, filler: "" })).offset);
      child.kill("SIGCONT");
      const delivered = () => lines.filter((l) => l.ev === "message");
      await until(() => delivered().length >= offsets.length, 30_000, "all messages at the follower");
      const got = delivered();
      const reconnects = lines.filter((l) => l.ev === "reconnecting");
      const resumed = lines.filter((l) => l.ev === "subscribed").slice(1);
      console.log(
        `sdk-ts slow-consumer: published=${offsets.length} closed_after=${closedAfter} delivered=${got.length} ` +
          `closes=${reconnects.map((r) => `${r.code} "${r.reason}"`).join(",")} resumed_recovered=${resumed.map((r) => r.recovered).join(",")}`,
      );
      expect(reconnects.map((r) => r.code)).toEqual([4008]);
      expect(resumed.map((r) => r.recovered)).toEqual([true]);
      // Publishes of one batch run concurrently, so their storage order (the offsets) need not
      // be the order they were sent in: delivery is in offset order, each once.
      expect(got.map((l) => l.offset)).toEqual([...offsets].sort(compareOffsets));
      expect(new Set(got.map((l) => l.n)).size).toBe(offsets.length);
    } finally {
      pub.close();
    }
  });
});
