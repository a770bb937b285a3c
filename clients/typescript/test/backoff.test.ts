/**
 * Reconnect timing. The pure parts (full-jitter delays, what each close code means, when a token
 * is refreshed) as plain functions; the client's schedule with fake timers (vi.useFakeTimers)
 * against real refused connections: no attempt before its drawn delay, one right after it.
 */

import { WebSocket as WsWebSocket } from "ws";
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  BellhopClient,
  backoffDelay,
  compareOffsets,
  planAfterClose,
  refreshDelayMs,
  tokenTimes,
  type ReconnectingContext,
  type WebSocketConstructor,
} from "../src/index.js";
import { freePort } from "./support/cluster.js";

describe("backoffDelay (full jitter)", () => {
  const opts = { baseMs: 500, capMs: 20_000 };

  it("draws from [0, min(cap, base * 2^attempt))", () => {
    expect(backoffDelay(0, opts, () => 0)).toBe(0);
    expect(backoffDelay(0, opts, () => 0.999999)).toBe(499);
    expect(backoffDelay(3, opts, () => 0.5)).toBe(2_000);
    expect(backoffDelay(5, opts, () => 0.999999)).toBe(15_999);
    expect(backoffDelay(6, opts, () => 0.999999)).toBe(19_999); // capped
    expect(backoffDelay(10_000, opts, () => 0.5)).toBe(10_000); // no overflow
  });

  it("spreads a crowd over the whole window (no synchronized retries)", () => {
    // A seeded generator: the same draws every run.
    let seed = 42;
    const random = () => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31);
    const delays = Array.from({ length: 10_000 }, () => backoffDelay(4, opts, random));
    const ceiling = 8_000;
    expect(Math.min(...delays)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...delays)).toBeLessThan(ceiling);
    const mean = delays.reduce((a, b) => a + b, 0) / delays.length;
    expect(Math.abs(mean - ceiling / 2)).toBeLessThan(ceiling * 0.02);
    // No 100 ms slot holds more than twice its share.
    const slots = new Array<number>(ceiling / 100).fill(0);
    for (const d of delays) slots[Math.floor(d / 100)]! += 1;
    expect(Math.max(...slots)).toBeLessThan((2 * delays.length) / slots.length);
  });
});

describe("planAfterClose", () => {
  it("reads each close code", () => {
    expect(planAfterClose(1012)).toEqual({ action: "reconnect", delay: "drain", refreshToken: false });
    expect(planAfterClose(4001)).toEqual({ action: "reconnect", delay: "backoff", refreshToken: true });
    expect(planAfterClose(4008)).toEqual({ action: "reconnect", delay: "backoff", refreshToken: false });
    expect(planAfterClose(4002)).toEqual({ action: "reconnect", delay: "backoff", refreshToken: false });
    expect(planAfterClose(1006)).toEqual({ action: "reconnect", delay: "backoff", refreshToken: false });
    expect(planAfterClose(1011)).toEqual({ action: "reconnect", delay: "backoff", refreshToken: false });
    expect(planAfterClose(1008)).toEqual({ action: "stop", why: "policy" });
    expect(planAfterClose(1009)).toEqual({ action: "stop", why: "client_bug" });
    expect(planAfterClose(1002)).toEqual({ action: "stop", why: "client_bug" });
    expect(planAfterClose(1007)).toEqual({ action: "stop", why: "client_bug" });
  });
});

describe("token refresh timing", () => {
  const jwt = (claims: object) => `e30.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.sig`;

  it("reads exp and iat, and refreshes a minute early, or a tenth of the lifetime when shorter", () => {
    expect(tokenTimes(jwt({ exp: 2_000, iat: 1_000 }))).toEqual({ exp: 2_000, iat: 1_000 });
    expect(tokenTimes("not-a-jwt")).toBeUndefined();
    expect(tokenTimes(jwt({ sub: "x" }))).toBeUndefined();
    const now = 1_000_000;
    // 1 hour: 60 s early.
    expect(refreshDelayMs({ exp: now / 1000 + 3_600, iat: now / 1000 }, now)).toBe(3_540_000);
    // 5 minutes: 30 s early.
    expect(refreshDelayMs({ exp: now / 1000 + 300, iat: now / 1000 }, now)).toBe(270_000);
    // 3 seconds: 0.3 s early.
    expect(refreshDelayMs({ exp: now / 1000 + 3, iat: now / 1000 }, now)).toBe(2_700);
    // Already due: now.
    expect(refreshDelayMs({ exp: now / 1000 - 1 }, now)).toBe(0);
    expect(refreshDelayMs({ exp: now / 1000 + 100 }, now, 10_000)).toBe(90_000);
  });
});

describe("offsets", () => {
  it("orders by ms, then seq, as integers", () => {
    expect(compareOffsets("1795428770348-0", "1795428770348-0")).toBe(0);
    expect(compareOffsets("1795428770348-9", "1795428770348-10")).toBe(-1);
    expect(compareOffsets("999-5", "1000-0")).toBe(-1);
    expect(compareOffsets("18446744073709551615-1", "18446744073709551615-0")).toBe(1);
    expect(() => compareOffsets("yesterday", "1-0")).toThrow(TypeError);
  });
});

describe("the client's reconnect schedule (fake timers, real refused connections)", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  /** Records events in order and lets the test await the n-th one (no timer involved). */
  function recorder(c: BellhopClient) {
    const seen: ReconnectingContext[] = [];
    const waiting: { n: number; resolve: () => void }[] = [];
    c.on("reconnecting", (r) => {
      seen.push(r);
      for (const w of waiting.filter((x) => seen.length >= x.n)) {
        waiting.splice(waiting.indexOf(w), 1);
        w.resolve();
      }
    });
    return {
      seen,
      nth: (n: number) =>
        seen.length >= n ? Promise.resolve() : new Promise<void>((resolve) => waiting.push({ n, resolve })),
    };
  }

  it("waits exactly the drawn full-jitter delay before each attempt, doubling up to the cap, rotating URLs", async () => {
    const ports = [await freePort(), await freePort()]; // nothing listens there: each attempt is refused
    const urls = ports.map((p) => `ws://127.0.0.1:${p}/ws`);
    const opened: string[] = [];
    class Counting extends WsWebSocket {
      constructor(url: string, protocols?: string | string[]) {
        super(url, protocols);
        opened.push(url);
      }
    }
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const c = new BellhopClient({
      url: urls,
      token: "t",
      WebSocket: Counting as unknown as WebSocketConstructor,
      random: () => 0.5,
      reconnect: { baseMs: 1_000, capMs: 8_000 },
      connectTimeoutMs: 60_000,
    });
    const rec = recorder(c);
    c.connect();
    const expected = [500, 1_000, 2_000, 4_000, 4_000, 4_000];
    for (let i = 0; i < expected.length; i++) {
      await rec.nth(i + 1); // the real refusal of attempt i + 1
      const r = rec.seen[i]!;
      expect(r.code).toBe(1006);
      expect(r.attempt).toBe(i);
      expect(r.delayMs).toBe(expected[i]);
      expect(r.url).toBe(urls[(i + 1) % 2]);
      expect(opened.length).toBe(i + 1);
      await vi.advanceTimersByTimeAsync(r.delayMs - 1);
      expect(opened.length, `no attempt before ${r.delayMs} ms`).toBe(i + 1);
      await vi.advanceTimersByTimeAsync(1);
      expect(opened.length, `an attempt at ${r.delayMs} ms`).toBe(i + 2);
      expect(opened.at(-1)).toBe(urls[(i + 1) % 2]);
      expect(c.state).toBe("connecting");
    }
    c.close();
    expect(c.state).toBe("closed");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(opened.length).toBe(expected.length + 1); // nothing after close()
  });

  it("disconnect() cancels a scheduled reconnect", async () => {
    const url = `ws://127.0.0.1:${await freePort()}/ws`;
    let opened = 0;
    class Counting extends WsWebSocket {
      constructor(u: string, protocols?: string | string[]) {
        super(u, protocols);
        opened += 1;
      }
    }
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const c = new BellhopClient({ url, token: "t", WebSocket: Counting as unknown as WebSocketConstructor, random: () => 0.9 });
    const rec = recorder(c);
    c.connect();
    await rec.nth(1);
    c.disconnect();
    expect(c.state).toBe("disconnected");
    await vi.advanceTimersByTimeAsync(30_000);
    expect(opened).toBe(1);
  });
});
