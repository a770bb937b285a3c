#!/usr/bin/env python3
"""Item 7 of issue 10: HTTP API request bodies dribbled one byte at a time.

Opens --conns connections to the HTTP API, each sending `POST /api/v1/publish` with a valid
token and `Content-Length: 65536`, then one byte of the body every --interval seconds, for at
most --seconds. Prints the node's VmRSS (from /proc/<pid>/status) as it goes, and how each
connection ended (the node's status line, or still open when the run ended).

    python3 tests/attacks/dribble_body.py --addr 127.0.0.1:3001 --token "$T" --pid $NODE_PID
"""

import argparse
import asyncio
import time

from common import parse_target, rss_mb


async def dribble(host, port, token, interval, seconds, results, i):
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    import socket

    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = (
        "POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 65536\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    sent = 0
    started = time.monotonic()
    answer = asyncio.ensure_future(reader.read(4096))
    try:
        while time.monotonic() - started < seconds and sent < 65535:
            if answer.done():
                break
            writer.write(b" ")
            try:
                await writer.drain()
            except (ConnectionError, OSError):
                break
            sent += 1
            await asyncio.sleep(interval)
        if not answer.done():
            results[i] = (sent, "still open", time.monotonic() - started)
            answer.cancel()
            return
        data = answer.result()
        status = data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "EOF"
        results[i] = (sent, status, time.monotonic() - started)
    except Exception as e:  # the node reset the connection
        results[i] = (sent, f"error {e!r}", time.monotonic() - started)
    finally:
        writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--token", required=True)
    p.add_argument("--conns", type=int, default=10)
    p.add_argument("--interval", type=float, default=0.001)
    p.add_argument("--seconds", type=float, default=20)
    a, host, port, pid = parse_target(p)
    results = [None] * a.conns
    tasks = [
        asyncio.ensure_future(dribble(host, port, a.token, a.interval, a.seconds, results, i))
        for i in range(a.conns)
    ]
    peak = 0.0
    started = time.monotonic()
    while not all(t.done() for t in tasks):
        await asyncio.sleep(1)
        if pid:
            r = rss_mb(pid)
            peak = max(peak, r)
            print(f"t={time.monotonic() - started:5.1f}s node RSS {r:8.1f} MB", flush=True)
    await asyncio.gather(*tasks)
    total = sum(r[0] for r in results)
    for i, (sent, status, took) in enumerate(results):
        print(f"conn {i}: sent {sent} bytes in {took:.1f}s, then: {status}")
    if pid:
        print(f"node RSS after: {rss_mb(pid):.1f} MB, peak {peak:.1f} MB, body bytes sent {total}")


asyncio.run(main())
