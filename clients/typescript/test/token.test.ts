/**
 * Tokens against a real node with no leeway (JWT_LEEWAY_SECONDS=0) and tokens of a few seconds:
 * `getToken()` is called again before expiry and the connection re-authenticates with an `auth`
 * frame (same session, no reconnect); without a refresh in time the node closes with 4001 and
 * the client reconnects with a fresh token and resumes; a string token that expires stops the
 * client; a re-authentication with narrower rights ends the subscriptions it no longer allows.
 */

import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { BellhopClient, type BellhopError, type MessageContext, type ReconnectingContext } from "../src/index.js";
import { BellhopNode, mintToken, nextEvent, type TokenClaims } from "./support/cluster.js";

let node: BellhopNode;
const clients: BellhopClient[] = [];

beforeAll(async () => {
  node = await BellhopNode.start({ nodeId: "node-token", env: { JWT_LEEWAY_SECONDS: "0" } });
});
afterAll(async () => {
  await node?.stop();
});
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

function client(options: ConstructorParameters<typeof BellhopClient>[0]): BellhopClient {
  const c = new BellhopClient(options);
  clients.push(c);
  return c;
}

async function publisher(): Promise<BellhopClient> {
  const p = client({ url: node.url, token: await mintToken({ sub: "pms", role: "service" }) });
  const up = nextEvent(p, "connected");
  p.connect();
  await up;
  return p;
}

/** A getToken() that mints `claims(call)` and counts its calls. */
function tokens(claims: (call: number) => TokenClaims) {
  const t = { calls: 0, get: async () => mintToken(claims(t.calls++)) };
  return t;
}

describe("token refresh", () => {
  it("re-authenticates before expiry with an auth frame: same session, no reconnect, messages keep flowing", async () => {
    const t = tokens(() => ({ sub: "maria", role: "staff", depts: ["housekeeping"], ttl: 3 }));
    const c = client({ url: node.url, getToken: t.get });
    const reconnects: ReconnectingContext[] = [];
    c.on("reconnecting", (r) => reconnects.push(r));
    const sub = c.newSubscription("dept:housekeeping");
    const subscribed = nextEvent(sub, "subscribed");
    sub.subscribe();
    c.connect();
    await subscribed;
    const session = c.session!.sessionId;

    const refreshed: (number | undefined)[] = [];
    c.on("token", (x) => refreshed.push(x.exp));
    // Each 3 s token is refreshed 0.3 s before it expires: two refreshes outlive the first token.
    await nextEvent(c, "token", () => refreshed.length >= 2, 15_000);
    expect(reconnects).toEqual([]);
    expect(c.state).toBe("connected");
    expect(c.session!.sessionId).toBe(session);
    expect(t.calls).toBe(3);
    expect(refreshed[1]!).toBeGreaterThan(refreshed[0]!);

    const p = await publisher();
    const got = nextEvent<MessageContext>(sub, "message");
    const ack = await p.publish("dept:housekeeping", "HOUSEKEEPING_ALERT", { room: "101" });
    expect((await got).offset).toBe(ack.offset);
    expect(sub.state).toBe("subscribed");
  });

  it("after a 4001 (token expired, no refresh in time) it gets a fresh token, reconnects and resumes", async () => {
    const t = tokens(() => ({ sub: "joe", role: "staff", depts: ["housekeeping"], ttl: 2 }));
    // A refresh lead far in the past: the connection outlives its token and the node closes it.
    const c = client({ url: node.url, getToken: t.get, tokenRefreshLeadMs: -3_600_000 });
    const sub = c.newSubscription("dept:housekeeping");
    const subscribed = nextEvent(sub, "subscribed");
    sub.subscribe();
    c.connect();
    await subscribed;
    const firstSession = c.session!.sessionId;
    const p = await publisher();
    const delivered: string[] = [];
    sub.on("message", (m) => delivered.push(m.offset));
    const before = await p.publish("dept:housekeeping", "HOUSEKEEPING_ALERT", { n: 1 });

    // While the client is away, one more message; it must arrive by the resume.
    let during: Promise<{ offset: string }> | undefined;
    const closed = nextEvent<ReconnectingContext>(c, "reconnecting", () => true, 10_000).then((r) => {
      during = p.publish("dept:housekeeping", "HOUSEKEEPING_ALERT", { n: 2 });
      return r;
    });
    const r = await closed;
    expect(r.code).toBe(4001);
    const back = await nextEvent<{ sessionId: string }>(c, "connected");
    expect(back.sessionId).not.toBe(firstSession);
    expect(t.calls).toBe(2);
    const duringAck = await during!;
    const resumed = nextEvent(sub, "message", (m: MessageContext) => m.offset === duringAck.offset);
    if (!delivered.includes(duringAck.offset)) await resumed;
    expect(delivered).toEqual([before.offset, duringAck.offset]);
  });

  it("a string token that expires: the node closes with 4001 and the client stops, saying why", async () => {
    const c = client({ url: node.url, token: await mintToken({ sub: "ann", role: "staff", ttl: 2 }) });
    const errors: BellhopError[] = [];
    c.on("error", (e) => errors.push(e.error));
    const up = nextEvent(c, "connected");
    c.connect();
    await up;
    const down = await nextEvent<{ code: number }>(c, "disconnected", () => true, 10_000);
    expect(down.code).toBe(4001);
    expect(c.state).toBe("disconnected");
    expect(errors.map((e) => e.code)).toContain("unauthorized");
    expect(errors.some((e) => /token expired/.test(e.message))).toBe(true);
  });

  it("a re-authentication with narrower rights ends the subscriptions it no longer allows (unsubscribed without id)", async () => {
    // First token: housekeeping; the refreshed one: no departments.
    const t = tokens((call) =>
      call === 0 ? { sub: "kim", role: "staff", depts: ["housekeeping"], ttl: 2 } : { sub: "kim", role: "staff", ttl: 3600 },
    );
    const c = client({ url: node.url, getToken: t.get });
    const dept = c.newSubscription("dept:housekeeping");
    const room = c.newSubscription("room:1");
    const ready = Promise.all([nextEvent(dept, "subscribed"), nextEvent(room, "subscribed")]);
    dept.subscribe();
    room.subscribe();
    c.connect();
    await ready;
    const ended = nextEvent<{ code: string }>(dept, "unsubscribed", () => true, 10_000);
    await nextEvent(c, "token", () => true, 10_000);
    expect((await ended).code).toBe("server");
    expect(dept.state).toBe("unsubscribed");
    expect(room.state).toBe("subscribed");
    expect(c.state).toBe("connected");
  });

  it("a token valid for a year is not refreshed in a loop (delays past setTimeout's 2^31-1 ms are clamped)", async () => {
    const t = tokens(() => ({ sub: "lee", role: "staff", ttl: 365 * 24 * 3600 }));
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    try {
      const c = client({ url: node.url, getToken: t.get, pingIntervalMs: 0 });
      const refreshed: unknown[] = [];
      c.on("token", (x) => refreshed.push(x));
      const up = nextEvent(c, "connected");
      c.connect();
      await up;
      await vi.advanceTimersByTimeAsync(10 * 60_000);
      expect(refreshed).toEqual([]);
      expect(t.calls).toBe(1);
      expect(c.state).toBe("connected");
    } finally {
      vi.useRealTimers();
    }
  });
});
