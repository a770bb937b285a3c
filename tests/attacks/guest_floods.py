#!/usr/bin/env python3
"""Items 4, 9 and 11 of issue 10: what one guest's frames cost everyone else.

Against a running node (`bellhop serve`, any backend), with tokens minted by `bellhop token`:

- `wedge` (item 4): a guest's 12 MessagePack publishes of six 10,000-character strings of U+0001
  to its room (60 KB each as MessagePack, 360 KB each as JSON), then a staff client's default
  `history` of that room and a `ping`. Prints what each side got within 10 s.
- `typing` (item 11): a guest sends 100 `typing` frames to its room; prints how many `typing`
  notices a staff listener on the room received within 3 s.
- `toggle` (item 11): a guest subscribes to and unsubscribes from `broadcast` 50 times; prints how
  many `join`/`leave` notices a staff listener on `broadcast` received within 4 s.
- `storage` (item 9): a guest publishes 60 KB payloads as fast as it is allowed for --seconds, to
  a made-up department and then to `dept:housekeeping`; prints what was accepted (messages,
  bytes) and the node's VmRSS before and after.

    BELLHOP=target/debug/bellhop python3 tests/attacks/guest_floods.py --addr 127.0.0.1:3001 \\
        --pid $NODE_PID wedge typing toggle storage

Needs `pip install websockets msgpack`.
"""

import argparse
import asyncio
import json
import os
import subprocess
import time

import msgpack
import websockets

from common import rss_mb


def token(bellhop, *args):
    out = subprocess.run([bellhop, "token", *args], check=True, capture_output=True, text=True)
    return out.stdout.strip()


class Client:
    def __init__(self, ws, binary):
        self.ws = ws
        self.binary = binary
        self.next_id = 1

    @classmethod
    async def connect(cls, url, tok, binary=False):
        protocols = ["bellhop.v1.msgpack"] if binary else None
        ws = await websockets.connect(
            f"{url}?token={tok}", subprotocols=protocols, max_size=None, ping_interval=None
        )
        c = cls(ws, binary)
        await c.recv(5)  # welcome
        return c

    async def send(self, frame):
        if "id" not in frame:
            frame["id"] = self.next_id
            self.next_id += 1
        data = msgpack.packb(frame) if self.binary else json.dumps(frame)
        await self.ws.send(data)
        return frame["id"]

    async def recv(self, timeout):
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        return msgpack.unpackb(raw) if isinstance(raw, bytes) else json.loads(raw)

    async def frames_for(self, seconds):
        """Every frame that arrives within `seconds`."""
        got = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                got.append(await self.recv(left))
            except (asyncio.TimeoutError, websockets.ConnectionClosed):
                break
        return got

    async def request(self, frame, timeout=5):
        rid = await self.send(frame)
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            f = await self.recv(left)
            if f.get("id") == rid:
                return f
        raise asyncio.TimeoutError


async def wedge(url, bellhop, pid):
    g = await Client.connect(url, token(bellhop, "--sub", "gw", "--role", "guest", "--prop", "h1", "--rooms", "901"), binary=True)
    payload = ["\u0001" * 10_000] * 6
    answers = []
    for _ in range(12):
        r = await g.request({"type": "publish", "channel": "room:901", "event": "CHAT_MESSAGE", "payload": payload})
        answers.append(r.get("code") or r["type"])
    print(f"wedge: guest's 12 publishes answered {sorted(set(answers))} ({answers.count('ack')} stored)")
    s = await Client.connect(url, token(bellhop, "--sub", "sw", "--role", "staff", "--prop", "h1", "--depts", "housekeeping"))
    hid = await s.send({"type": "history", "channel": "room:901"})
    pid_ = await s.send({"type": "ping"})
    got = await s.frames_for(10)
    history = [f for f in got if f.get("id") == hid]
    pong = [f for f in got if f.get("id") == pid_]
    desc = "none"
    if history:
        h = history[0]
        desc = f"{h['type']} ({len(h.get('messages', []))} messages, more={h.get('more', False)}, code={h.get('code')})"
    print(f"wedge: staff got {len(got)} frames in 10 s: history reply: {desc}; pong: {'yes' if pong else 'no'}")


async def listener_and_guest(url, bellhop, listener, guest):
    """A staff client (`listener`: its user and the channel it subscribes to) and a guest of a
    room (`guest`: its user and room), both of h1."""
    staff, channel = listener
    s = await Client.connect(url, token(bellhop, "--sub", staff, "--role", "staff", "--prop", "h1", "--depts", "housekeeping"))
    await s.request({"type": "subscribe", "channel": channel})
    user, room = guest
    g = await Client.connect(url, token(bellhop, "--sub", user, "--role", "guest", "--prop", "h1", "--rooms", room))
    return s, g


async def typing(url, bellhop, pid):
    s, g = await listener_and_guest(url, bellhop, ("st", "room:902"), ("gt", "902"))
    for _ in range(100):
        await g.send({"type": "typing", "channel": "room:902"})
    got = await s.frames_for(3)
    n = sum(1 for f in got if f.get("type") == "typing")
    print(f"typing: 100 typing frames from one guest -> {n} typing notices at a listener within 3 s")


async def toggle(url, bellhop, pid):
    s, g = await listener_and_guest(url, bellhop, ("sb", "broadcast"), ("gb", "903"))
    for _ in range(50):
        await g.request({"type": "subscribe", "channel": "broadcast"})
        await g.request({"type": "unsubscribe", "channel": "broadcast"})
    got = await s.frames_for(4)
    n = sum(1 for f in got if f.get("type") in ("join", "leave"))
    print(f"toggle: 50 subscribe/unsubscribe pairs on broadcast -> {n} join/leave notices at a listener within 4 s")


async def storage(url, bellhop, pid, seconds):
    text = "x" * 10_000
    payload = {k: text for k in "abcdef"}  # ~60 KB in any encoding
    g = await Client.connect(url, token(bellhop, "--sub", "gs", "--role", "guest", "--prop", "h1", "--rooms", "904"))
    for channel in ("dept:zz-made-up", "dept:housekeeping"):
        before = rss_mb(pid) if pid else None
        stored = 0
        codes = {}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(0.025)  # 40 frames a second: under the frame rate (50)
            r = await g.request({"type": "publish", "channel": channel, "event": "SERVICE_REQUEST", "payload": payload})
            if r["type"] == "ack":
                stored += 1
            else:
                codes[r["code"]] = codes.get(r["code"], 0) + 1
                if r.get("retryAfterMs"):
                    await asyncio.sleep(min(r["retryAfterMs"], 1000) / 1000)
        after = rss_mb(pid) if pid else None
        rss = f"; node RSS {before:.1f} -> {after:.1f} MB" if pid else ""
        print(f"storage: {seconds} s of 60 KB publishes to {channel}: {stored} stored "
              f"({stored * 60 / 1000:.1f} MB), refusals {codes}{rss}")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:3001")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("what", nargs="+", choices=["wedge", "typing", "toggle", "storage"])
    a = ap.parse_args()
    url = f"ws://{a.addr}/ws"
    bellhop = os.environ.get("BELLHOP", "target/debug/bellhop")
    for w in a.what:
        if w == "storage":
            await storage(url, bellhop, a.pid, a.seconds)
        else:
            await globals()[w](url, bellhop, a.pid)


if __name__ == "__main__":
    asyncio.run(main())
