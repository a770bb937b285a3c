// Shared by the load scenarios (chat.js, fanout.js, connect-storm.js): HS256 tokens minted in
// the script from JWT_SECRET (the claims of crates/bellhop-gateway/src/auth.rs `Claims`), and a
// socket wrapper that parses frames and counts `error` frames and socket errors.
import crypto from 'k6/crypto';
import encoding from 'k6/encoding';
import { WebSocket } from 'k6/experimental/websockets';
import { Counter } from 'k6/metrics';

/** URL may list several nodes, comma-separated: each connection picks one at random. */
const URLS = (__ENV.URL || 'ws://127.0.0.1:3001/ws').split(',').map((u) => u.trim()).filter((u) => u);
export const PROP = __ENV.PROP || 'h1';
const SECRET = __ENV.JWT_SECRET;

/** Protocol `error` frames, socket errors and unexpected closes: every scenario wants 0. */
export const protocolErrors = new Counter('protocol_errors');

const b64 = (s) => encoding.b64encode(s, 'rawurl');

/** An HS256 JWT for `sub` with `role` in PROP, valid for an hour; `extra` adds rooms/depts. */
export function token(sub, role, extra = {}) {
  if (!SECRET) throw new Error('JWT_SECRET is not set: the scenarios mint their own tokens');
  const now = Math.floor(Date.now() / 1000);
  const claims = Object.assign({ sub, role, prop: PROP, iat: now, exp: now + 3600 }, extra);
  const unsigned = `${b64(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64(JSON.stringify(claims))}`;
  return `${unsigned}.${crypto.hmac('sha256', SECRET, unsigned, 'base64rawurl')}`;
}

/**
 * Opens a connection with `?token=` and calls `onFrame(frame, ws)` for each frame. `error`
 * frames are counted and logged (and still passed on). `onClose(event)` runs when it closes.
 */
export function connect(tok, who, onFrame, onClose) {
  const url = URLS[Math.floor(Math.random() * URLS.length)];
  const ws = new WebSocket(`${url}?token=${tok}`);
  ws.onmessage = (event) => {
    const f = JSON.parse(event.data);
    if (f.type === 'error') {
      protocolErrors.add(1);
      console.error(`${who} got ${event.data}`);
    }
    onFrame(f, ws);
  };
  ws.onerror = (e) => {
    protocolErrors.add(1);
    console.error(`${who}: websocket error: ${e.error}`);
  };
  if (onClose) ws.onclose = onClose;
  return ws;
}

export const send = (ws, frame) => ws.send(JSON.stringify(frame));

/** Compares two offsets `<ms>-<seq>` as the server does: ms, then seq, as integers. */
export function offsetLess(a, b) {
  const [am, as] = a.split('-').map(Number);
  const [bm, bs] = b.split('-').map(Number);
  return am < bm || (am === bm && as < bs);
}

/** A short id for this run, so that channels do not meet a previous run's on a long-lived node. */
export function runId() {
  return `${Date.now().toString(36)}${Math.floor(Math.random() * 1296).toString(36)}`;
}

// Scenarios in which every VU runs its function once: `groups` maps a scenario's name to
// [the exported function it runs, how many VUs], each ending by `maxDuration` at the latest.
export function oncePerVu(groups, maxDuration) {
  return Object.fromEntries(Object.entries(groups).map(([name, [fn, vus]]) => [
    name,
    { executor: 'per-vu-iterations', exec: fn, vus, iterations: 1, maxDuration },
  ]));
}

// The thresholds every delivery scenario shares (no lost, duplicate or out-of-order message, no
// protocol error, every check passed), plus its own; and the summary statistics reported.
export function deliveryOptions(scenarios, thresholds) {
  return {
    scenarios,
    thresholds: {
      delivery_success: ['rate>0.999'],
      protocol_errors: ['count==0'],
      checks: ['rate==1'],
      ...thresholds,
    },
    summaryTrendStats: ['min', 'med', 'p(95)', 'p(99)', 'max', 'count'],
  };
}
