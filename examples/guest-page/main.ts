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

// Updates for the room (staff answer on room:<r>), each once, in order, across reconnects.
const sub = client.newSubscription(`room:${room}`);
sub.on("message", ({ message }) => {
  const li = document.createElement("li");
  const p = message.payload as { item?: string; status?: string };
  li.textContent = `${p.item ?? message.event}: ${p.status ?? ""}`;
  $("updates").prepend(li);
});
sub.subscribe();
client.connect();

for (const button of document.querySelectorAll<HTMLButtonElement>("button[data-item]")) {
  button.onclick = async () => {
    button.disabled = true;
    const item = button.dataset.item!;
    await client.publish("dept:housekeeping", "SERVICE_REQUEST", { room, item }); // retried safely
    button.textContent = `${item}: requested`;
  };
}
