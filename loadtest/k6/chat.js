// Chat: many small rooms, ROOM_SIZE (4) staff members in each, every member publishing
// CHAT_MESSAGEs to its room at RATE per second for DURATION seconds, and every member checking
// that it receives every message of its room, its own included (the gateway delivers a message
// to every subscribed connection, the publisher's too), each sender's in sequence, once.
//
// Start: each member subscribes, then waits until the room's presence (plus `join` notices) shows
// all ROOM_SIZE members, so that nobody publishes before everyone listens. End: after its last
// ack a member publishes CHAT_END with its count; the channel's offset order puts it after all
// of that sender's messages, so a member that has every sender's CHAT_END knows exactly what it
// should have received.
//
// Thresholds: the original service's success metrics (chat delivery under 200 ms, delivery
// success above 99.9 %), and no protocol errors, no duplicate or out-of-order message.
//   k6 run -e URL=ws://127.0.0.1:3001/ws -e JWT_SECRET=... [-e ROOMS=50 -e RATE=1 -e DURATION=30] chat.js
// loadtest/k6/run.sh chat starts a node for it.
import exec from 'k6/execution';
import { check } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import { connect, send, token, offsetLess, runId, protocolErrors, oncePerVu, deliveryOptions } from './lib.js';

const ROOMS = Number(__ENV.ROOMS || 50);
const ROOM_SIZE = Number(__ENV.ROOM_SIZE || 4);
const RATE = Number(__ENV.RATE || 1); // messages per second per member
const DURATION = Number(__ENV.DURATION || 30); // seconds of publishing
const MESSAGES = Math.max(1, Math.round(RATE * DURATION)); // per member
const JOIN_TIMEOUT_MS = 60000;
const GRACE_MS = 30000;

const delivery = new Trend('chat_delivery_ms', true);
const ackTime = new Trend('publish_ack_ms', true);
const success = new Rate('delivery_success');
const disorder = new Counter('order_violations');

export const options = deliveryOptions(
  oncePerVu(
    { chat: ['default', ROOMS * ROOM_SIZE] },
    `${Math.ceil((JOIN_TIMEOUT_MS + GRACE_MS) / 1000 + DURATION + 30)}s`,
  ),
  { chat_delivery_ms: ['p(99)<200'], order_violations: ['count==0'] },
);

export function setup() {
  return { run: runId() };
}

export default function (data) {
  const idx = exec.scenario.iterationInTest;
  const room = Math.floor(idx / ROOM_SIZE);
  const me = idx % ROOM_SIZE;
  const user = (m) => `k6c-${data.run}-${room}-${m}`;
  const channel = `room:k6c-${data.run}-${room}`;

  const present = new Set();
  const got = []; // per sender: the set of sequence numbers received
  const nextSeq = []; // per sender: the sequence number expected next
  const ended = []; // per sender: its CHAT_END count
  for (let m = 0; m < ROOM_SIZE; m++) {
    got.push(new Set());
    nextSeq.push(0);
    ended.push(undefined);
  }
  let lastOffset = null;
  let started = false;
  let sent = 0;
  let acked = 0;
  const sentAt = {};
  let ticker = null;
  let done = false;

  const finish = (closed) => {
    if (done) return;
    done = true;
    clearTimeout(deadline);
    if (ticker) clearInterval(ticker);
    let missing = 0;
    for (let m = 0; m < ROOM_SIZE; m++) {
      const count = ended[m] === undefined ? MESSAGES : ended[m];
      for (let n = 0; n < count; n++) {
        const ok = got[m].has(n);
        success.add(ok);
        if (!ok) missing++;
      }
    }
    if (missing) console.error(`${user(me)}: ${missing} messages of ${channel} never arrived`);
    check(null, {
      'every sender finished (CHAT_END)': () => ended.every((c) => c === MESSAGES),
      'every message of the room arrived': () => missing === 0,
      'every own publish acked': () => acked === MESSAGES,
    });
    if (!closed) ws.close();
  };
  const deadline = setTimeout(() => finish(false), JOIN_TIMEOUT_MS + DURATION * 1000 + GRACE_MS);

  const start = () => {
    if (started) return;
    started = true;
    ticker = setInterval(() => {
      if (sent === MESSAGES) return;
      const n = sent++;
      sentAt[n] = Date.now();
      send(ws, {
        type: 'publish', id: 100 + n, channel, event: 'CHAT_MESSAGE',
        payload: { from: me, seq: n, sentAt: sentAt[n], text: `hello from ${user(me)}, #${n}` },
      });
      if (sent === MESSAGES) clearInterval(ticker);
    }, 1000 / RATE);
  };
  const heard = (u) => {
    present.add(u);
    if (present.size >= ROOM_SIZE) start();
  };

  const ws = connect(token(user(me), 'staff'), user(me), (f) => {
    switch (f.type) {
      case 'welcome':
        send(ws, { type: 'subscribe', id: 1, channel });
        break;
      case 'subscribed':
        send(ws, { type: 'presence', id: 2, channel });
        break;
      case 'presence':
        f.users.forEach(heard);
        break;
      case 'join':
        heard(f.userId);
        break;
      case 'ack':
        if (f.id >= 100 && f.id < 100 + MESSAGES) {
          ackTime.add(Date.now() - sentAt[f.id - 100]);
          if (++acked === MESSAGES) {
            send(ws, {
              type: 'publish', id: 3, channel, event: 'CHAT_END', payload: { from: me, count: MESSAGES },
            });
          }
        }
        break;
      case 'message': {
        if (f.channel !== channel) break;
        if (lastOffset !== null && !offsetLess(lastOffset, f.offset)) {
          disorder.add(1);
          console.error(`${user(me)}: offset ${f.offset} after ${lastOffset}`);
        }
        lastOffset = f.offset;
        const p = f.message.payload;
        const from = p.from;
        const text = `hello from ${user(from)}, #${p.seq}`;
        if (!(from >= 0 && from < ROOM_SIZE) || f.message.sender.id !== user(from)
          || (f.message.event === 'CHAT_MESSAGE' && p.text !== text)) {
          protocolErrors.add(1);
          console.error(`${user(me)}: unexpected message ${JSON.stringify(f)}`);
          break;
        }
        if (f.message.event === 'CHAT_END') {
          ended[from] = p.count;
          if (ended.every((c) => c !== undefined)) finish(false);
          break;
        }
        delivery.add(Date.now() - p.sentAt);
        if (p.seq !== nextSeq[from] || got[from].has(p.seq)) {
          disorder.add(1);
          console.error(`${user(me)}: from ${user(from)} got #${p.seq}, expected #${nextSeq[from]}`);
        }
        got[from].add(p.seq);
        nextSeq[from] = p.seq + 1;
        break;
      }
      default:
        break;
    }
  }, () => {
    if (!done) {
      protocolErrors.add(1);
      console.error(`${user(me)}: the connection closed before the end`);
      finish(true);
    }
  });
}
