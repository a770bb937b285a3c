// A page that survives a node kill with nothing lost: the example of clients/typescript/README.md.
//
// - every node's URL (or one load balancer's) is given, so a lost node is replaced by another;
// - the token comes from the app's backend (`/token` here) and is renewed before it expires;
// - the channel's offset is saved after each message, so even a reload resumes where it was;
// - `recoveryFailed` (the node could not replay everything) is shown, not hidden.
import { BellhopClient } from "@bellhop/client";

const params = new URLSearchParams(location.search);
const urls = params.getAll("node"); // e.g. ?node=ws://10.0.0.1:3001/ws&node=ws://10.0.0.2:3001/ws
const channel = params.get("channel") ?? "dept:housekeeping";
const saved = `bellhop:offset:${channel}`;

const client = new BellhopClient({
  url: urls.length > 0 ? urls : [`ws://${location.hostname}:3001/ws`],
  getToken: async () => {
    const r = await fetch("/token");
    if (!r.ok) throw new Error(`token: HTTP ${r.status}`);
    return r.text();
  },
});

const $ = (id: string) => document.getElementById(id)!;
const received: { offset: string; n: unknown; event: string }[] = [];
const nodes: string[] = [];

client.on("state", ({ newState }) => {
  $("status").textContent = newState;
  $("status").className = newState;
});
client.on("connected", (c) => {
  nodes.push(c.node);
  $("node").textContent = `node ${c.node}`;
});

// Resume after the saved offset (nothing saved yet: start with what comes next).
const since = localStorage.getItem(saved) ?? undefined;
const sub = client.newSubscription(channel, since ? { since } : {});
sub.on("message", ({ offset, message }) => {
  received.push({ offset, n: (message.payload as { n?: unknown } | null)?.n, event: message.event });
  const li = document.createElement("li");
  li.className = message.priority;
  li.textContent = `${message.timestamp.slice(11, 19)} ${message.event} ${JSON.stringify(message.payload)}`;
  $("feed").prepend(li);
  $("count").textContent = String(received.length);
  localStorage.setItem(saved, offset); // after the message is shown: a reload resumes after it
});
sub.on("unread", ({ unread }) => ($("unread").textContent = String(unread)));
sub.on("recoveryFailed", () => {
  // The node no longer holds everything after the saved offset (older than the retention, or a
  // single node that restarted): what it still holds is replayed right after this event, but
  // some messages may be gone. Tell the user; an app reloads the gap from its own backend here.
  $("gap").style.display = "block";
});
// What the page shows, for people and for the browser test.
(window as unknown as { feed: unknown }).feed = {
  received,
  nodes,
  get state() { return client.state; },
  get subscription() { return sub.state; },
};

sub.subscribe();
client.connect();
