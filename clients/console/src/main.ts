// The front-desk console: sign in with a token, the channels it may use with unread counts and
// presence, a live feed coloured by priority, announcements and emergency alerts, and the
// connection state shown plainly while the SDK reconnects. Everything hard (resume, no
// duplicates, token handling, backoff) is the SDK's (@bellhop/client).
import { BellhopClient, type Subscription } from "@bellhop/client";

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const params = new URLSearchParams(location.search);
$<HTMLTextAreaElement>("nodes").value = (params.getAll("node").length ? params.getAll("node") : [`ws://${location.hostname}:3001/ws`]).join("\n");

/** What the tests read: every message shown, the nodes connected to, the state. */
const view = { received: [] as { channel: string; offset: string; event: string; priority: string; payload: unknown }[], nodes: [] as string[], state: "disconnected" };
(window as unknown as { consoleView: typeof view }).consoleView = view;

/** The channels a token may read, from its claims (the node enforces them; this only lists). */
function channelsOf(token: string): string[] {
  const claims = JSON.parse(atob(token.split(".")[1]!.replace(/-/g, "+").replace(/_/g, "/"))) as { sub: string; depts?: string[]; rooms?: string[] };
  return ["broadcast", `user:${claims.sub}`, ...(claims.depts ?? []).map((d) => `dept:${d}`), ...(claims.rooms ?? []).map((r) => `room:${r}`)];
}

function setStatus(text: string, state: string) {
  $("status").textContent = text;
  $("status").className = `state-${state}`;
}

$("signin").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $<HTMLInputElement>("token").value.trim();
  const urls = $<HTMLTextAreaElement>("nodes").value.split("\n").map((s) => s.trim()).filter(Boolean);
  let channels: string[];
  try {
    channels = channelsOf(token);
  } catch {
    setStatus("that is not a token", "disconnected");
    return;
  }
  const client = new BellhopClient({ url: urls, token, reconnect: { baseMs: 300, capMs: 5_000 } });
  client.on("state", ({ newState }) => {
    view.state = newState;
    if (newState === "connected") setStatus(`connected to ${client.session?.node ?? "?"}`, "connected");
    else if (newState === "disconnected") setStatus("disconnected: sign in again", "disconnected");
    else if (newState !== "connecting") setStatus(newState, newState);
  });
  client.on("connected", ({ node }) => view.nodes.push(node));
  client.on("reconnecting", ({ attempt, delayMs }) => setStatus(`connection lost: reconnecting (attempt ${attempt + 1}, in ${(delayMs / 1000).toFixed(1)} s)`, "connecting"));
  client.on("connecting", () => setStatus("connecting…", "connecting"));

  $("signin").hidden = true;
  $("desk").hidden = false;
  const rows = $("channels").querySelector("tbody")!;
  const select = $<HTMLSelectElement>("pub-channel");
  for (const channel of channels) {
    const tr = rows.insertRow();
    tr.dataset.channel = channel;
    tr.insertCell().textContent = channel;
    const unread = tr.insertCell();
    unread.className = "unread";
    unread.textContent = "–";
    unread.title = "click: mark read";
    unread.addEventListener("click", () => void sub.read().catch(() => {}));
    const here = tr.insertCell();
    here.className = "here";
    here.textContent = "–";
    select.add(new Option(channel, channel));
    const sub: Subscription = client.newSubscription(channel);
    const present = new Set<string>();
    const showPresence = () => (here.textContent = String(present.size));
    sub.on("unread", ({ unread: n }) => (unread.textContent = String(n)));
    sub.on("subscribed", () => {
      client.presence(channel).then((users) => { present.clear(); users.forEach((u) => present.add(u)); showPresence(); }, () => (here.textContent = "–"));
    });
    sub.on("join", ({ userId }) => { present.add(userId); showPresence(); });
    sub.on("leave", ({ userId }) => { present.delete(userId); showPresence(); });
    sub.on("recoveryFailed", () => ($("gap").hidden = false));
    sub.on("message", ({ offset, message }) => {
      view.received.push({ channel, offset, event: message.event, priority: message.priority, payload: message.payload });
      const li = document.createElement("li");
      li.className = `prio-${message.priority}`;
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = `${message.timestamp.slice(11, 19)} ${channel} ${message.event}`;
      const text = (message.payload as { text?: unknown } | null)?.text;
      li.append(meta, typeof text === "string" ? text : JSON.stringify(message.payload));
      $("feed").prepend(li);
    });
    sub.subscribe();
  }
  client.connect();

  $("publish").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const event = (document.querySelector('input[name="kind"]:checked') as HTMLInputElement).value;
    const text = $<HTMLInputElement>("pub-text").value;
    $("pub-result").textContent = "sending…";
    try {
      const ack = await client.publish(select.value, event, { text });
      $("pub-result").textContent = `sent (${ack.offset})`;
      $<HTMLInputElement>("pub-text").value = "";
    } catch (err) {
      $("pub-result").textContent = `not sent: ${(err as Error).message}`;
    }
  });
});
