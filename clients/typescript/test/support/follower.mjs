// A follower in its own process (so a test can SIGSTOP it): the built SDK (dist/), one
// subscription, one JSON line on stdout per event. Arguments: <url> <token> <channel>.
import { BellhopClient } from "../../dist/index.js";

const [url, token, channel] = process.argv.slice(2);
const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const client = new BellhopClient({ url, token, pingIntervalMs: 0 });
client.on("connected", (c) => out({ ev: "connected", node: c.node, sessionId: c.sessionId }));
client.on("reconnecting", (r) => out({ ev: "reconnecting", code: r.code, reason: r.reason }));
const sub = client.newSubscription(channel);
sub.on("subscribed", (s) => out({ ev: "subscribed", recovered: s.recovered, since: s.since ?? null }));
sub.on("message", (m) => out({ ev: "message", offset: m.offset, n: m.message.payload.n }));
sub.subscribe();
client.connect();
process.on("SIGTERM", () => {
  client.close();
  process.exit(0);
});
