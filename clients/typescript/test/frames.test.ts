/**
 * Every frame type of protocol v1 through the SDK, against a real `bellhop serve` (embedded
 * broker), in both codecs: auth/welcome, subscribe/subscribed, message, publish/ack,
 * history (and paging), presence, join/leave, typing, read/ack with unread counts, ping/pong,
 * unsubscribe/unsubscribed, error frames (forbidden, bad_request, too_large) and the 4001 close.
 */

import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { BellhopClient, BellhopError, type ClientOptions, type MessageContext } from "../src/index.js";
import { BellhopNode, mintToken, nextEvent } from "./support/cluster.js";

let node: BellhopNode;
const clients: BellhopClient[] = [];

beforeAll(async () => {
  node = await BellhopNode.start({ nodeId: "node-frames" });
});
afterAll(async () => {
  await node?.stop();
});
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

function track(c: BellhopClient): BellhopClient {
  clients.push(c);
  return c;
}

async function connected(options: Partial<ClientOptions> & { token: string }): Promise<BellhopClient> {
  const c = track(new BellhopClient({ url: node.url, ...options }));
  const up = nextEvent(c, "connected");
  c.connect();
  await up;
  return c;
}

for (const codec of ["json", "msgpack"] as const) {
  describe(`frames (${codec})`, () => {
    it("auth -> welcome, with the session in `connected` and the negotiated codec", async () => {
      const c = track(new BellhopClient({ url: node.url, token: await mintToken({ sub: "maria", role: "staff", depts: ["housekeeping"] }), codec }));
      const states: string[] = [];
      c.on("state", (s) => states.push(s.newState));
      const up = nextEvent<{ sessionId: string; node: string; userId: string; role: string; property: string; heartbeatSeconds: number }>(c, "connected");
      c.connect();
      const w = await up;
      expect(w.node).toBe("node-frames");
      expect(w.userId).toBe("maria");
      expect(w.role).toBe("staff");
      expect(w.property).toBe("h1");
      expect(w.heartbeatSeconds).toBe(30);
      expect(w.sessionId).toMatch(/^[0-9a-f-]{36}$/);
      expect(states).toEqual(["connecting", "connected"]);
      expect(c.session?.sessionId).toBe(w.sessionId);
      expect(c.codec).toBe(codec);
      expect(c.protocol).toBe(codec === "msgpack" ? "bellhop.v1.msgpack" : "");
      expect(await c.ping()).toBeGreaterThanOrEqual(0); // ping -> pong
    });

    it("subscribe, publish -> ack, message with the envelope, history, read with unread counts", async () => {
      const ch = `dept:housekeeping`;
      const staff = await connected({ token: await mintToken({ sub: `s-${codec}`, role: "staff", depts: ["housekeeping"] }), codec });
      const guest = await connected({ token: await mintToken({ sub: `g-${codec}`, role: "guest", rooms: ["101"] }), codec });
      const sub = staff.newSubscription(ch);
      const subscribed = nextEvent<{ offset: string; recovered: boolean; unread: number }>(sub, "subscribed");
      sub.subscribe();
      const s = await subscribed;
      expect(sub.state).toBe("subscribed");
      expect(s.recovered).toBe(true);
      expect(typeof s.unread).toBe("number");
      expect(sub.lastOffset).toBe(s.offset);

      const got = nextEvent<MessageContext>(sub, "message");
      const ack = await guest.publish(ch, "SERVICE_REQUEST", { room: "101", item: "towels", count: 2 }, { correlationId: "req-7f3a" });
      expect(ack.messageId).toMatch(/^[0-9a-f-]{36}$/);
      expect(ack.duplicate).toBe(false);
      expect(ack.attempts).toBe(1);
      expect(ack.idempotencyKey.length).toBeGreaterThan(0);
      const m = await got;
      expect(m.offset).toBe(ack.offset);
      expect(m.message).toMatchObject({
        messageId: ack.messageId,
        event: "SERVICE_REQUEST",
        namespace: "h1",
        channel: ch,
        payload: { count: 2, item: "towels", room: "101" },
        sender: { id: `g-${codec}`, role: "guest" },
        priority: "normal",
        correlationId: "req-7f3a",
      });
      expect(m.message.timestamp).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      expect(sub.lastOffset).toBe(ack.offset);
      expect(sub.unread).toBe(s.unread + 1);

      const h = await staff.history(ch, { limit: 5 });
      expect(h.channel).toBe(ch);
      expect(h.messages.at(-1)).toMatchObject({ offset: ack.offset, message: { messageId: ack.messageId } });

      const r = await sub.read();
      expect(r).toEqual({ offset: ack.offset, unread: 0 });
      expect(sub.unread).toBe(0);
      // A marker never moves back.
      expect(await staff.read(ch, "1-0")).toEqual({ offset: ack.offset, unread: 0 });
    });

    it("ready() of a client and of a subscription", async () => {
      const c = track(new BellhopClient({ url: node.url, token: await mintToken({ sub: `r-${codec}`, role: "staff" }), codec }));
      await expect(c.ready()).rejects.toMatchObject({ code: "disconnected" });
      const sub = c.newSubscription("broadcast");
      sub.subscribe();
      c.connect();
      await c.ready();
      await sub.ready();
      expect(sub.state).toBe("subscribed");
      const refused = c.subscribe("dept:kitchen"); // a staff without that department
      await expect(refused.ready()).rejects.toThrow(/unsubscribed/);
    });

    it("presence, join, typing (throttled), leave, unsubscribe -> unsubscribed", async () => {
      const ch = `room:${codec}-205`;
      const a = await connected({ token: await mintToken({ sub: `joe-${codec}`, role: "staff" }), codec, typingThrottleMs: 60_000 });
      const b = await connected({ token: await mintToken({ sub: `ann-${codec}`, role: "staff" }), codec });
      const subA = a.subscribe(ch);
      await nextEvent(subA, "subscribed");
      const joined = nextEvent<{ userId: string }>(subA, "join");
      const subB = b.subscribe(ch);
      await nextEvent(subB, "subscribed");
      expect((await joined).userId).toBe(`ann-${codec}`);
      expect(await a.presence(ch)).toEqual([`ann-${codec}`, `joe-${codec}`].sort());

      const typing = nextEvent<{ userId: string; channel: string }>(subB, "typing");
      expect(subA.typing()).toBe(true);
      expect(subA.typing()).toBe(false); // throttled
      expect(await typing).toEqual({ channel: ch, userId: `joe-${codec}` });

      const left = nextEvent<{ userId: string }>(subA, "leave");
      const unsubscribed = nextEvent<{ code: string }>(subB, "unsubscribed");
      subB.unsubscribe();
      expect((await unsubscribed).code).toBe("unsubscribe_called");
      expect(subB.state).toBe("unsubscribed");
      expect((await left).userId).toBe(`ann-${codec}`);
      // The node confirmed: presence no longer lists b.
      await expect.poll(() => a.presence(ch), { timeout: 5_000 }).toEqual([`joe-${codec}`]);
    });

    it("error frames: forbidden, bad_request, too_large; a frame over 64 KiB is refused before sending", async () => {
      const guest = await connected({ token: await mintToken({ sub: `g2-${codec}`, role: "guest", rooms: ["9"] }), codec });
      const sub = guest.newSubscription("dept:housekeeping");
      const err = nextEvent<{ error: BellhopError }>(sub, "error");
      const ended = nextEvent<{ code: string }>(sub, "unsubscribed");
      sub.subscribe();
      expect((await err).error.code).toBe("forbidden");
      expect((await ended).code).toBe("error");
      expect(sub.state).toBe("unsubscribed");

      await expect(guest.publish("room:9", "not_an_event")).rejects.toMatchObject({ code: "bad_request" });
      await expect(guest.publish("broadcast", "ANNOUNCEMENT")).rejects.toMatchObject({ code: "forbidden" });
      await expect(guest.publish("room:9", "CHAT_MESSAGE", { text: "x".repeat(10_001) })).rejects.toMatchObject({ code: "too_large" });
      await expect(guest.history("room:9", { limit: 1000 })).rejects.toMatchObject({ code: "bad_request" });
      // The node would close with 1009; the SDK refuses it and the connection stays.
      const big = Array.from({ length: 8 }, () => "y".repeat(9_000));
      await expect(guest.publish("room:9", "CHAT_MESSAGE", big)).rejects.toMatchObject({ code: "too_large" });
      expect(guest.state).toBe("connected");
      expect(await guest.ping()).toBeGreaterThanOrEqual(0);
    });

    it("a refused token: error unauthorized, close 4001, the client stops (a string token cannot be renewed)", async () => {
      const c = track(new BellhopClient({ url: node.url, token: "garbage", codec }));
      const down = nextEvent<{ code: number; reason: string }>(c, "disconnected");
      const errors: BellhopError[] = [];
      c.on("error", (e) => errors.push(e.error));
      c.connect();
      const d = await down;
      expect(d.code).toBe(4001);
      expect(c.state).toBe("disconnected");
      expect(errors.map((e) => e.code)).toContain("unauthorized");
    });
  });
}

describe("history paging", () => {
  it("historyPages() reads every stored message after `since`, page by page", async () => {
    const svc = await connected({ token: await mintToken({ sub: "pms", role: "service" }) });
    const ch = "room:paging";
    const first = await svc.publish(ch, "ROOM_STATUS_UPDATE", { n: 0 });
    const offsets = [first.offset];
    for (let n = 1; n < 130; n++) offsets.push((await svc.publish(ch, "ROOM_STATUS_UPDATE", { n })).offset);
    const seen: string[] = [];
    let pages = 0;
    for await (const page of svc.historyPages(ch, { since: first.offset, limit: 50 })) {
      pages += 1;
      seen.push(...page.messages.map((m) => m.offset));
    }
    expect(seen).toEqual(offsets.slice(1));
    expect(pages).toBe(3);
    // From the oldest retained by default.
    const all: number[] = [];
    for await (const page of svc.historyPages(ch)) all.push(...page.messages.map((m) => (m.message.payload as { n: number }).n));
    expect(all).toEqual(Array.from({ length: 130 }, (_, i) => i));
  });
});
