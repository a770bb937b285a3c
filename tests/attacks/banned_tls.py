#!/usr/bin/env python3
"""Item 8 of issue 10: what a banned address still gets.

Gets this address banned (upgrade attempts with a bad token beyond RATE_LIMIT_PER_IP, until the
node says it is banned; start the node with e.g. RATE_LIMIT_PER_IP=2 BAN_THRESHOLD=3), then for
--seconds does full TLS handshakes in a loop and counts how many the node completes, and sends
one HTTP API request with a valid --token to see its status.

    python3 tests/attacks/banned_tls.py --addr 127.0.0.1:3001 --token "$T" --seconds 5
"""

import argparse
import socket
import ssl
import time

from common import split_addr


def tls_connect(host, port, ctx):
    raw = socket.create_connection((host, port), timeout=5)
    try:
        return ctx.wrap_socket(raw, server_hostname=host)
    except Exception:
        raw.close()
        raise


def request(host, port, ctx, head):
    """Sends `head` (over TLS when ctx is given) and returns the status line, or what failed."""
    try:
        s = tls_connect(host, port, ctx) if ctx else socket.create_connection((host, port), timeout=5)
    except (OSError, ssl.SSLError) as e:
        return f"no connection: {type(e).__name__} {e}"
    try:
        s.sendall(head.encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n", 1)[0].decode() if data else "closed without a response"
    except (OSError, ssl.SSLError) as e:
        return f"{type(e).__name__} {e}"
    finally:
        s.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", default="127.0.0.1:3001")
    p.add_argument("--token", required=True)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--plain", action="store_true", help="the node serves plain HTTP")
    a = p.parse_args()
    host, port = split_addr(a.addr)
    ctx = None
    if not a.plain:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
    upgrade = (
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Authorization: Bearer not-a-token\r\n\r\n"
    )
    for i in range(200):
        status = request(host, port, ctx, upgrade)
        print(f"attempt {i + 1}: {status}")
        if "429" not in status and "401" not in status:
            break
        if i >= 3 and "429" in status:
            # Keep going until the ban (a ban answers 429 too; a few more make sure).
            if i >= 10:
                break
    done = failed = 0
    started = time.monotonic()
    while time.monotonic() - started < a.seconds:
        try:
            if ctx:
                s = tls_connect(host, port, ctx)
            else:
                s = socket.create_connection((host, port), timeout=5)
            done += 1
            s.close()
        except (OSError, ssl.SSLError):
            failed += 1
    took = time.monotonic() - started
    what = "TLS handshakes" if ctx else "TCP connections"
    print(f"banned address: {done} {what} completed ({done / took:.0f}/s), {failed} refused, in {took:.1f}s")
    api = (
        "GET /api/v1/channels/broadcast/history HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {a.token}\r\n\r\n"
    )
    print(f"banned address, HTTP API with a valid token: {request(host, port, ctx, api)}")


main()
