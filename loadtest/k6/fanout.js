// Fan-out: one channel, SUBSCRIBERS staff connections on it, one manager publishing ANNOUNCEMENT
// events to it at RATE per second for DURATION seconds; every subscriber checks that it receives
// every event, in sequence, once, and measures how long each took.
//
// The channel is a room of this run (`room:k6f-<run>`) unless CHANNEL is given (e.g.
// CHANNEL=broadcast; on a shared node that reaches everyone on the property). The publisher
// starts once the channel's presence shows all SUBSCRIBERS, and ends with FANOUT_END carrying its
// count once every event is acked: offset order puts it after all of them.
//
// Thresholds: the original service's success metrics (event delivery under 500 ms, delivery
// success above 99.9 %), and no protocol errors, no duplicate or out-of-order event.
//   k6 run -e URL=ws://127.0.0.1:3001/ws -e JWT_SECRET=... [-e SUBSCRIBERS=200 -e RATE=10 -e DURATION=30] fanout.js
// loadtest/k6/run.sh fanout starts a node for it.
import exec from 'k6/execution';
import { check } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import { connect, send, token, offsetLess, runId, protocolErrors, oncePerVu, deliveryOptions } from './lib.js';

const SUBSCRIBERS = Number(__ENV.SUBSCRIBERS || 200);
const RATE = Number(__ENV.RATE || 10); // events per second
const DURATION = Number(__ENV.DURATION || 30); // seconds of publishing
const EVENTS = Math.max(1, Math.round(RATE * DURATION));
const JOIN_TIMEOUT_MS = 60000;
const GRACE_MS = 30000;
const MAX_DURATION = `${Math.ceil((JOIN_TIMEOUT_MS + GRACE_MS) / 1000 + DURATION + 30)}s`;

const delivery = new Trend('event_delivery_ms', true);
const ackTime = new Trend('publish_ack_ms', true);
const success = new Rate('delivery_success');
const disorder = new Counter('order_violations');

export const options = deliveryOptions(
  oncePerVu({ subscribers: ['subscriber', SUBSCRIBERS], publisher: ['publisher', 1] }, MAX_DURATION),
  { event_delivery_ms: ['p(99)<500'], order_violations: ['count==0'] },
);

export function setup() {
  const run = runId();
  return { run, channel: __ENV.CHANNEL || `room:k6f-${run}` };
}

const publisherId = (run) => `k6f-${run}-pub`;
const text = (n) => `announcement #${n}`;

export function publisher(data) {
  const { channel } = data;
  const me = publisherId(data.run);
  const prefix = `k6f-${data.run}-s`;
  let sent = 0;
  let acked = 0;
  const sentAt = {};
  let poll = null;
  let ticker = null;
  let debt = 0;
  const started = Date.now();

  let stopped = false;
  const stop = (closed) => {
    if (stopped) return;
    stopped = true;
    clearInterval(poll);
    if (ticker) clearInterval(ticker);
    check(null, { 'every event published and acked': () => acked === EVENTS });
    if (!closed) ws.close();
  };
  const startPublishing = () => {
    // Up to 50 ticks a second; faster rates send several events per tick.
    const tick = Math.max(20, 1000 / RATE);
    ticker = setInterval(() => {
      debt += (RATE * tick) / 1000;
      while (debt >= 1 && sent < EVENTS) {
        debt -= 1;
        const n = sent++;
        sentAt[n] = Date.now();
        send(ws, {
          type: 'publish', id: 100 + n, channel, event: 'ANNOUNCEMENT',
          payload: { seq: n, sentAt: sentAt[n], text: text(n) },
        });
      }
      if (sent === EVENTS) clearInterval(ticker);
    }, tick);
  };

  const ws = connect(token(me, 'manager'), me, (f) => {
    if (f.type === 'welcome') {
      poll = setInterval(() => {
        if (Date.now() - started > JOIN_TIMEOUT_MS) {
          console.error(`publisher: the subscribers did not all arrive within ${JOIN_TIMEOUT_MS} ms`);
          stop(false);
        } else {
          send(ws, { type: 'presence', id: 1, channel });
        }
      }, 250);
    } else if (f.type === 'presence' && !ticker) {
      if (f.users.filter((u) => u.startsWith(prefix)).length >= SUBSCRIBERS) {
        clearInterval(poll);
        startPublishing();
      }
    } else if (f.type === 'ack' && f.id >= 100) {
      ackTime.add(Date.now() - sentAt[f.id - 100]);
      if (++acked === EVENTS) {
        send(ws, { type: 'publish', id: 2, channel, event: 'FANOUT_END', payload: { count: EVENTS } });
      }
    } else if (f.type === 'ack' && f.id === 2) {
      stop(false);
    }
  }, () => {
    if (!stopped) {
      protocolErrors.add(1);
      console.error('publisher: the connection closed before the end');
      stop(true);
    }
  });
}

export function subscriber(data) {
  const { channel } = data;
  const me = `k6f-${data.run}-s${exec.scenario.iterationInTest}`;
  const pub = publisherId(data.run);
  const got = new Set();
  let next = 0;
  let lastOffset = null;
  let done = false;

  const finish = (count, closed) => {
    if (done) return;
    done = true;
    clearTimeout(deadline);
    let missing = 0;
    for (let n = 0; n < count; n++) {
      success.add(got.has(n));
      if (!got.has(n)) missing++;
    }
    if (missing) console.error(`${me}: ${missing} of ${count} events never arrived`);
    check(null, { 'every event arrived': () => missing === 0 && count === EVENTS });
    if (!closed) ws.close();
  };
  const deadline = setTimeout(() => finish(EVENTS, false), JOIN_TIMEOUT_MS + DURATION * 1000 + GRACE_MS);

  const ws = connect(token(me, 'staff'), me, (f) => {
    if (f.type === 'welcome') {
      send(ws, { type: 'subscribe', id: 1, channel });
    } else if (f.type === 'message' && f.channel === channel && f.message.sender.id === pub) {
      if (lastOffset !== null && !offsetLess(lastOffset, f.offset)) {
        disorder.add(1);
        console.error(`${me}: offset ${f.offset} after ${lastOffset}`);
      }
      lastOffset = f.offset;
      const p = f.message.payload;
      if (f.message.event === 'FANOUT_END') {
        finish(p.count, false);
        return;
      }
      if (p.text !== text(p.seq)) {
        protocolErrors.add(1);
        console.error(`${me}: unexpected event ${JSON.stringify(f)}`);
        return;
      }
      delivery.add(Date.now() - p.sentAt);
      if (p.seq !== next || got.has(p.seq)) {
        disorder.add(1);
        console.error(`${me}: got #${p.seq}, expected #${next}`);
      }
      got.add(p.seq);
      next = p.seq + 1;
    }
  }, () => {
    if (!done) {
      protocolErrors.add(1);
      console.error(`${me}: the connection closed before the end`);
      finish(EVENTS, true);
    }
  });
}
