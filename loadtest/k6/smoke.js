// Smoke: a guest's SERVICE_REQUESTs reach a housekeeping client, measured end to end.
// Thresholds are the original service's success metrics: chat delivery under 200 ms, delivery
// success above 99.9 %. Run by `make k6-smoke` (part of `make test`) against a node it starts:
//   k6 run -e URL=ws://127.0.0.1:3001/ws -e STAFF_TOKEN=... -e GUEST_TOKEN=... loadtest/k6/smoke.js
import { WebSocket } from 'k6/experimental/websockets';
import { check } from 'k6';
import { Trend, Rate, Counter } from 'k6/metrics';

const delivery = new Trend('chat_delivery_ms', true);
const success = new Rate('delivery_success');
const errors = new Counter('protocol_errors');

const MESSAGES = Number(__ENV.MESSAGES || 50);

export const options = {
  vus: 1,
  iterations: 1,
  thresholds: {
    chat_delivery_ms: ['p(99)<200'],
    delivery_success: ['rate>0.999'],
    protocol_errors: ['count==0'],
    checks: ['rate==1'],
  },
};

function socket(token, onFrame) {
  const ws = new WebSocket(`${__ENV.URL}?token=${token}`);
  ws.onmessage = (event) => onFrame(JSON.parse(event.data));
  ws.onerror = (e) => {
    errors.add(1);
    console.error(`websocket error: ${e.error}`);
  };
  return ws;
}

export default function () {
  const received = new Set();
  let guest = null;
  let done = false;
  let timer = null;
  const finish = () => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    for (let n = 0; n < MESSAGES; n++) success.add(received.has(n));
    check(received, { 'every request reached housekeeping': (r) => r.size === MESSAGES });
    staff.close();
    if (guest) guest.close();
  };
  const staff = socket(__ENV.STAFF_TOKEN, (f) => {
    if (f.type === 'welcome') {
      staff.send(JSON.stringify({ type: 'subscribe', id: 1, channel: 'dept:housekeeping' }));
    } else if (f.type === 'subscribed') {
      guest = socket(__ENV.GUEST_TOKEN, (g) => {
        if (g.type === 'welcome') {
          for (let n = 0; n < MESSAGES; n++) {
            guest.send(JSON.stringify({
              type: 'publish', id: n + 1, channel: 'dept:housekeeping', event: 'SERVICE_REQUEST',
              payload: { room: '101', item: 'towels', n, sentAt: Date.now() },
            }));
          }
        } else if (g.type === 'error') {
          errors.add(1);
          console.error(`guest got ${JSON.stringify(g)}`);
        }
      });
    } else if (f.type === 'message') {
      const p = f.message.payload;
      delivery.add(Date.now() - p.sentAt);
      received.add(p.n);
      if (received.size === MESSAGES) finish();
    } else if (f.type === 'error') {
      errors.add(1);
      console.error(`staff got ${JSON.stringify(f)}`);
    }
  });
  timer = setTimeout(finish, 10000);
}
