// A guest's page: ask housekeeping for something, see the answers for the room.
// The hotel's backend serves this page and `token` (a guest token for the signed-in guest).
import { BellhopClient } from "@bellhop/client";

const $ = (id: string) => document.getElementById(id)!;
const nodes = new URLSearchParams(location.search).getAll("node");
const token = await (await fetch("token")).text();
const room = (JSON.parse(atob(token.split(".")[1]!.replace(/-/g, "+").replace(/_/g, "/"))) as { rooms: string[] }).rooms[0]!;
$("room").textContent = room;

const client = new BellhopClient({ url: nodes, getToken: async () => (await fetch("token")).text() });
client.on("state", ({ newState }) => ($("status").textContent = newState));

// The room's channel: the node stores the guest's requests and staff's updates on it. Each
// message comes once, in order, across reconnects.
const sub = client.newSubscription(`room:${room}`);
sub.on("message", ({ message }) => {
  if (message.event !== "SERVICE_REQUEST_UPDATED") return; // (our own requests come back too)
  const p = message.payload as { item?: string; status: string };
  const li = document.createElement("li");
  li.textContent = `${p.item ?? "your request"}: ${p.status}`;
  $("updates").prepend(li);
});
sub.subscribe();
client.connect();

for (const button of document.querySelectorAll<HTMLButtonElement>("button[data-item]")) {
  button.onclick = async () => {
    button.disabled = true;
    const item = button.dataset.item!;
    // To the room: the node routes it to a department (towels -> housekeeping). Retried safely.
    await client.publish(`room:${room}`, "SERVICE_REQUEST", { room, item });
    button.textContent = `${item}: requested`;
  };
}
