// @vitest-environment jsdom
/**
 * The React hooks in a DOM (jsdom, whose WebSocket is a browser-like one: the SDK takes the
 * global WebSocket, not the `ws` package), against a real node, under StrictMode (effects mount
 * twice): status, `on(EVENT)` handlers, `send`, `useChannel` messages and unread counts,
 * `disconnect`/`connect`, and the subscription released on unmount.
 */

import { act, cleanup, fireEvent, render, screen, waitFor } from "@testing-library/react";
import { StrictMode, useEffect, useState } from "react";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { BellhopClient } from "../src/index.js";
import { BellhopProvider, useBellhop, useChannel } from "../src/react.js";
import { BellhopNode, mintToken, nextEvent } from "./support/cluster.js";

let node: BellhopNode;
beforeAll(async () => {
  node = await BellhopNode.start({ nodeId: "node-react" });
});
afterAll(async () => {
  await node?.stop();
});
afterEach(() => cleanup());

const CH = "dept:housekeeping";

function Desk() {
  const { isConnected, connectionStatus, on, send, connect, disconnect } = useBellhop({ channels: [CH] });
  const [requests, setRequests] = useState<string[]>([]);
  const [connects, setConnects] = useState(0);
  useEffect(() => on("SERVICE_REQUEST", (m) => setRequests((r) => [...r, (m.payload as { item: string }).item])), [on]);
  useEffect(() => on("connected", () => setConnects((n) => n + 1)), [on]);
  const channel = useChannel(CH, { keep: 10 });
  return (
    <div>
      <span data-testid="status">{connectionStatus}</span>
      <span data-testid="connected">{String(isConnected)}</span>
      <span data-testid="connects">{connects}</span>
      <span data-testid="requests">{requests.join(",")}</span>
      <span data-testid="events">{channel.messages.map((m) => m.message.event).join(",")}</span>
      <span data-testid="unread">{channel.unread ?? "-"}</span>
      <span data-testid="sub">{channel.state}</span>
      <button onClick={() => void send(CH, "SERVICE_REQUEST", { item: "soap" })}>send</button>
      <button onClick={() => void channel.read()}>read</button>
      <button onClick={disconnect}>disconnect</button>
      <button onClick={connect}>connect</button>
    </div>
  );
}

describe("useBellhop / useChannel", () => {
  it("shows the connection, delivers events to on() handlers and useChannel, sends, disconnects", async () => {
    expect(typeof globalThis.WebSocket).toBe("function"); // jsdom's, used instead of `ws`
    const client = new BellhopClient({
      url: node.url,
      getToken: () => mintToken({ sub: "maria", role: "staff", depts: ["housekeeping"] }),
    });
    const pms = new BellhopClient({ url: node.url, token: await mintToken({ sub: "pms", role: "service" }) });
    const up = nextEvent(pms, "connected");
    pms.connect();
    await up;
    try {
      const view = render(
        <StrictMode>
          <BellhopProvider client={client}>
            <Desk />
          </BellhopProvider>
        </StrictMode>,
      );
      await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("connected"), { timeout: 10_000 });
      expect(screen.getByTestId("connected").textContent).toBe("true");
      await waitFor(() => expect(screen.getByTestId("sub").textContent).toBe("subscribed"), { timeout: 10_000 });
      const unreadAtStart = Number(screen.getByTestId("unread").textContent);

      await pms.publish(CH, "SERVICE_REQUEST", { item: "towels" });
      await pms.publish(CH, "HOUSEKEEPING_ALERT", { room: "101" });
      await waitFor(() => expect(screen.getByTestId("events").textContent).toBe("SERVICE_REQUEST,HOUSEKEEPING_ALERT"));
      expect(screen.getByTestId("requests").textContent).toBe("towels"); // only SERVICE_REQUEST
      expect(screen.getByTestId("unread").textContent).toBe(String(unreadAtStart + 2));

      fireEvent.click(screen.getByText("send"));
      await waitFor(() => expect(screen.getByTestId("requests").textContent).toBe("towels,soap"));
      fireEvent.click(screen.getByText("read"));
      await waitFor(() => expect(screen.getByTestId("unread").textContent).toBe("0"));

      act(() => fireEvent.click(screen.getByText("disconnect")));
      await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("disconnected"));
      expect(screen.getByTestId("connected").textContent).toBe("false");
      // Published while the page was disconnected: delivered after connect, by the resume.
      await pms.publish(CH, "SERVICE_REQUEST", { item: "linen" });
      act(() => fireEvent.click(screen.getByText("connect")));
      await waitFor(() => expect(screen.getByTestId("requests").textContent).toBe("towels,soap,linen"), { timeout: 10_000 });
      expect(Number(screen.getByTestId("connects").textContent)).toBe(2);

      view.unmount();
      expect(client.getSubscription(CH)).toBeUndefined(); // released with the last component
    } finally {
      client.close();
      pms.close();
    }
  });
});
