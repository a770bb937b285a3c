// Connect storm: CLIENTS staff connections each subscribe to their `user:` channel and to a room
// (ROOM_SIZE clients per room) while a manager keeps publishing to all of those channels; then,
// STORMS times, every client drops its connection at the same moment and, DOWN_MS later, all of
// them reconnect at once and resume each channel with `since` = the offset of the last message
// received on it (PROTOCOL.md §7, "Resume procedure").
//
// Nothing may be lost or duplicated across the reconnects, and the check is exact: the publisher
// has one publish in flight per channel and puts in each message the offset of the channel's
// previous message (`prev`, from its ack) and a per-channel sequence number. A client accepts a
// message only if its `prev` is the client's resume offset for that channel (or
// `subscribed.offset` right after the first subscribe) and its sequence is the next one, so any
// gap, duplicate or reordering is seen, including at the replay/live hand-over. Every message
// published while a client was away must arrive in the replay after its `subscribed` with
// `recovered: true`. STORM_END (also in the chain) ends each channel.
//
// Thresholds: connect_ms (new WebSocket to `welcome`) p(99) < 1000 ms, recovered == true on every
// resume, no message lost (lost_messages == 0, delivery_success > 0.999), none duplicated, no
// protocol errors.
//   k6 run -e URL=ws://127.0.0.1:3001/ws -e JWT_SECRET=... [-e CLIENTS=200 -e STORMS=3] connect-storm.js
// loadtest/k6/run.sh connect-storm starts a node for it.
import exec from 'k6/execution';
import { check } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import { connect, send, token, runId, protocolErrors, oncePerVu, deliveryOptions } from './lib.js';

const CLIENTS = Number(__ENV.CLIENTS || 200);
const ROOM_SIZE = Number(__ENV.ROOM_SIZE || 10);
const ROOMS = Math.ceil(CLIENTS / ROOM_SIZE);
const RATE = Number(__ENV.RATE || 200); // publishes per second, over all channels
const STORMS = Number(__ENV.STORMS || 3);
const STORM_EVERY_MS = Number(__ENV.STORM_EVERY || 10) * 1000;
const DOWN_MS = Number(__ENV.DOWN_MS || 1000);
const JITTER_MS = Number(__ENV.JITTER_MS || 0);
const WARMUP_MS = 3000; // from setup to the publisher's start: the clients connect meanwhile
const PUBLISH_MS = (STORMS + 1) * STORM_EVERY_MS; // the last storm is followed by one quiet period
const GRACE_MS = 30000;
const MAX_DURATION = `${Math.ceil((WARMUP_MS + PUBLISH_MS + GRACE_MS) / 1000 + 30)}s`;

const connectTime = new Trend('connect_ms', true);
const resumeTime = new Trend('resume_ms', true);
const recovered = new Rate('resume_recovered');
const success = new Rate('delivery_success');
const lost = new Counter('lost_messages');
const duplicates = new Counter('duplicate_messages');
const replayed = new Counter('replayed_messages');
const received = new Counter('storm_messages_received');
const reconnects = new Counter('reconnects');

export const options = deliveryOptions(
  oncePerVu({ clients: ['client', CLIENTS], publisher: ['publisher', 1] }, MAX_DURATION),
  {
    connect_ms: ['p(99)<1000'],
    resume_recovered: ['rate==1'],
    lost_messages: ['count==0'],
    duplicate_messages: ['count==0'],
  },
);

export function setup() {
  return { run: runId(), t0: Date.now() + WARMUP_MS };
}

const publisherId = (run) => `k6s-${run}-pub`;
const userId = (run, i) => `k6s-${run}-${i}`;
const roomChannel = (run, g) => `room:k6s-${run}-${g}`;

export function publisher(data) {
  const me = publisherId(data.run);
  const chans = [];
  for (let g = 0; g < ROOMS; g++) chans.push(roomChannel(data.run, g));
  for (let i = 0; i < CLIENTS; i++) chans.push(`user:${userId(data.run, i)}`);
  // Per channel: the next sequence number, the offset of the previous message, one in flight.
  const st = chans.map(() => ({ seq: 0, prev: null, inflight: false, ended: false }));
  const TICK = 20;
  let budget = 0;
  let cursor = 0;
  let ending = false;
  let endsAcked = 0;
  let ticker = null;
  let starter = null;
  let stopped = false;

  const publish = (i, event) => {
    const s = st[i];
    s.inflight = true;
    send(ws, {
      type: 'publish', id: i + 1, channel: chans[i], event,
      payload: { for: chans[i], seq: s.seq, prev: s.prev, sentAt: Date.now() },
    });
  };
  const stop = (closed) => {
    if (stopped) return;
    stopped = true;
    clearTimeout(starter);
    clearInterval(ticker);
    check(null, { 'every channel ended (STORM_END acked)': () => endsAcked === chans.length });
    if (!closed) ws.close();
  };
  const tick = () => {
    if (Date.now() >= data.t0 + PUBLISH_MS) {
      if (!ending && st.every((s) => !s.inflight)) {
        ending = true;
        clearInterval(ticker);
        for (let i = 0; i < chans.length; i++) publish(i, 'STORM_END');
      }
      return;
    }
    budget = Math.min(budget + (RATE * TICK) / 1000, RATE / 10);
    for (let k = 0; k < chans.length && budget >= 1; k++) {
      const i = cursor;
      cursor = (cursor + 1) % chans.length;
      if (!st[i].inflight) {
        budget -= 1;
        publish(i, 'ANNOUNCEMENT');
      }
    }
  };

  const ws = connect(token(me, 'manager'), me, (f) => {
    if (f.type === 'welcome') {
      starter = setTimeout(() => { ticker = setInterval(tick, TICK); }, Math.max(0, data.t0 - Date.now()));
    } else if (f.type === 'ack') {
      const s = st[f.id - 1];
      s.inflight = false;
      s.prev = f.offset;
      s.seq++;
      if (ending && ++endsAcked === chans.length) stop(false);
    }
  }, () => {
    if (!stopped) {
      protocolErrors.add(1);
      console.error('publisher: the connection closed before the end');
      stop(true);
    }
  });
}

export function client(data) {
  const i = exec.scenario.iterationInTest;
  const me = userId(data.run, i);
  const pub = publisherId(data.run);
  const tok = token(me, 'staff');
  const names = [`user:${me}`, roomChannel(data.run, Math.floor(i / ROOM_SIZE))];
  // Per channel: the resume offset, the last sequence number, whether a first message may have
  // prev == null (only before anything arrived on the very first subscription), and the end.
  const chans = {};
  for (const c of names) chans[c] = { last: null, seq: null, allowNull: true, ended: false };
  let ws = null;
  let openedAt = 0;
  let welcomed = false;
  let resumed = 0;
  let resuming = false;
  let dropping = false;
  let done = false;
  const timers = [];

  const finish = (closed) => {
    if (done) return;
    done = true;
    timers.forEach(clearTimeout);
    const unfinished = names.filter((c) => !chans[c].ended);
    for (const c of unfinished) {
      success.add(false);
      console.error(`${me}: ${c} never reached STORM_END (last #${chans[c].seq})`);
    }
    check(null, { 'both channels complete up to STORM_END': () => unfinished.length === 0 });
    if (!closed && ws) ws.close();
  };

  const onFrame = (f) => {
    if (f.type === 'welcome') {
      welcomed = true;
      connectTime.add(Date.now() - openedAt);
      resumed = 0;
      resuming = names.some((c) => chans[c].last !== null);
      names.forEach((c, k) => {
        const since = chans[c].last;
        send(ws, since === null ? { type: 'subscribe', id: k + 1, channel: c }
          : { type: 'subscribe', id: k + 1, channel: c, since });
      });
    } else if (f.type === 'subscribed') {
      const s = chans[f.channel];
      if (s.last === null) {
        s.last = f.offset;
      } else {
        recovered.add(f.recovered === true);
        if (f.recovered !== true) console.error(`${me}: ${f.channel} resumed with recovered: false`);
      }
      if (++resumed === names.length && resuming) resumeTime.add(Date.now() - openedAt);
    } else if (f.type === 'message') {
      const s = chans[f.channel];
      const m = f.message;
      const p = m.payload;
      if (!s || m.sender.id !== pub || p.for !== f.channel) {
        protocolErrors.add(1);
        console.error(`${me}: unexpected message ${JSON.stringify(f)}`);
        return;
      }
      if (s.seq !== null && p.seq <= s.seq) {
        duplicates.add(1);
        console.error(`${me}: ${f.channel} #${p.seq} again (had #${s.seq})`);
        return;
      }
      const chained = p.prev === s.last || (s.allowNull && p.prev === null && p.seq === 0);
      if (!chained || (s.seq !== null && p.seq !== s.seq + 1)) {
        const missed = s.seq === null ? 1 : p.seq - s.seq - 1;
        lost.add(Math.max(1, missed));
        for (let n = 0; n < Math.max(1, missed); n++) success.add(false);
        console.error(`${me}: ${f.channel} gap before #${p.seq} (prev ${p.prev}, had #${s.seq} at ${s.last})`);
      }
      success.add(true);
      received.add(1);
      if (p.sentAt < openedAt) replayed.add(1);
      s.seq = p.seq;
      s.last = f.offset;
      s.allowNull = false;
      if (m.event === 'STORM_END') {
        s.ended = true;
        if (names.every((c) => chans[c].ended)) finish(false);
      }
    }
  };
  const open = () => {
    openedAt = Date.now();
    welcomed = false;
    ws = connect(tok, me, onFrame, () => {
      if (done) return;
      if (!dropping) {
        protocolErrors.add(1);
        console.error(`${me}: the connection closed unexpectedly${welcomed ? '' : ' before welcome'}`);
      }
      dropping = false;
      reconnects.add(1);
      timers.push(setTimeout(open, DOWN_MS + Math.random() * JITTER_MS));
    });
  };
  for (let c = 1; c <= STORMS; c++) {
    timers.push(setTimeout(() => {
      if (done || dropping) return;
      dropping = true;
      ws.close();
    }, data.t0 + c * STORM_EVERY_MS - Date.now()));
  }
  timers.push(setTimeout(() => finish(false), data.t0 + PUBLISH_MS + GRACE_MS - Date.now()));
  open();
}
