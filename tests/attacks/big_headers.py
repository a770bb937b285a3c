#!/usr/bin/env python3
"""Item 8 of issue 10: many connections sending huge request heads without a token.

Opens --conns connections to the main port and sends each a WebSocket upgrade head padded with
--kib KiB of headers, never finishing it (no blank line), then holds them for --hold seconds.
Prints the node's peak VmRSS and what the connections saw (accepted and held, closed, 431, 429).

    python3 tests/attacks/big_headers.py --addr 127.0.0.1:3001 --conns 2000 --kib 380 --pid $NODE_PID
"""

import argparse
import asyncio
import collections
import time

from common import parse_target, rss_mb


async def one(host, port, kib, hold, outcomes, sem):
    async with sem:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as e:
            outcomes[f"connect failed: {e.strerror}"] += 1
            return
    line = "X-Pad: " + "a" * 4000 + "\r\n"
    head = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    payload = (head + line * (kib * 1024 // len(line))).encode()
    answer = asyncio.ensure_future(reader.read(256))
    write_failed = False
    try:
        for at in range(0, len(payload), 16384):
            if answer.done():
                break
            writer.write(payload[at : at + 16384])
            await writer.drain()
    except (ConnectionError, OSError):
        write_failed = True  # the node closed; what did it say first?
    await asyncio.wait([answer], timeout=hold)
    if not answer.done():
        outcomes["held open (no answer)"] += 1
        answer.cancel()
    elif answer.exception() is not None:
        outcomes["reset before any answer"] += 1
    else:
        data = answer.result()
        what = data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "closed (EOF), no answer"
        outcomes[what] += 1
    if write_failed:
        outcomes["(of these: the node closed while the head was being sent)"] += 1
    writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--conns", type=int, default=2000)
    p.add_argument("--kib", type=int, default=380)
    p.add_argument("--hold", type=float, default=5)
    a, host, port, pid = parse_target(p)
    outcomes = collections.Counter()
    sem = asyncio.Semaphore(200)  # connects in flight
    tasks = [asyncio.ensure_future(one(host, port, a.kib, a.hold, outcomes, sem)) for _ in range(a.conns)]
    peak = 0.0
    started = time.monotonic()
    while not all(t.done() for t in tasks):
        await asyncio.sleep(0.5)
        if pid:
            peak = max(peak, rss_mb(pid))
    await asyncio.gather(*tasks)
    print(f"{a.conns} connections, {a.kib} KiB heads, {time.monotonic() - started:.1f}s")
    for k, v in outcomes.most_common():
        print(f"  {v:5d}  {k}")
    if pid:
        print(f"node RSS peak {peak:.1f} MB, after {rss_mb(pid):.1f} MB")


asyncio.run(main())
