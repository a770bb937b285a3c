// A housekeeping tablet: guests' requests with a Done button, and the room board the PMS
// keeps current (ROOM_STATUS_UPDATE). The backend serves `token` (a staff token, dept housekeeping).
import { BellhopClient } from "@bellhop/client";

const $ = (id: string) => document.getElementById(id)!;
const client = new BellhopClient({
  url: new URLSearchParams(location.search).getAll("node"),
  getToken: async () => (await fetch("token")).text(),
});
client.on("state", ({ newState }) => ($("status").textContent = newState));

const sub = client.newSubscription("dept:housekeeping", { since: localStorage.getItem("hk:offset") ?? undefined });
sub.on("message", ({ offset, message }) => {
  const p = message.payload as { room: string; item?: string; status?: string };
  if (message.event === "SERVICE_REQUEST") {
    const li = document.createElement("li");
    const done = document.createElement("button");
    done.textContent = "Done";
    done.onclick = async () => {
      // The request's id is its messageId; the update reaches the guest's room too.
      await client.publish("dept:housekeeping", "SERVICE_REQUEST_UPDATED", { requestId: message.messageId, status: "resolved", item: p.item });
      li.remove();
    };
    li.append(`Room ${p.room}: ${p.item} `, done);
    $("requests").append(li);
  } else if (message.event === "ROOM_STATUS_UPDATE") {
    const row = document.getElementById(`room-${p.room}`) ?? $("rooms").appendChild(Object.assign(document.createElement("tr"), { id: `room-${p.room}` }));
    row.className = p.status ?? "";
    row.innerHTML = "";
    row.append(Object.assign(document.createElement("td"), { textContent: p.room }), Object.assign(document.createElement("td"), { textContent: p.status }));
  }
  localStorage.setItem("hk:offset", offset); // a reload resumes after the last message handled
});
sub.subscribe();
client.connect();
