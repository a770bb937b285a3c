#!/usr/bin/env python3
"""A PMS hook: publish room status changes to housekeeping over Bellhop's HTTP API.

    BELLHOP_URL=http://127.0.0.1:3001 BELLHOP_TOKEN=$SVC python3 room_status.py 412 clean 305 dirty

BELLHOP_TOKEN is a `service` token (bellhop token --sub pms --role service --prop h1). Each
change carries an Idempotency-Key, so a retry after a timeout never stores it twice.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

URL = os.environ.get("BELLHOP_URL", "http://127.0.0.1:3001")
TOKEN = os.environ["BELLHOP_TOKEN"]


def publish(room: str, status: str) -> str:
    body = {"channel": "dept:housekeeping", "event": "ROOM_STATUS_UPDATE", "payload": {"room": room, "status": status}}
    key = f"pms-{room}-{status}-{int(time.time())}"
    for attempt in range(5):
        request = urllib.request.Request(
            f"{URL}/api/v1/publish",
            data=json.dumps(body).encode(),
            headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/json", "idempotency-key": key},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)["offset"]
        except urllib.error.HTTPError as e:
            if e.code not in (429, 503) or attempt == 4:
                raise SystemExit(f"room {room}: HTTP {e.code}: {e.read().decode(errors='replace')[:300]}")
            time.sleep(int(e.headers.get("retry-after", "1")))
        except OSError as e:
            if attempt == 4:
                raise SystemExit(f"room {room}: {e}")
            time.sleep(1)
    raise SystemExit("unreachable")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or len(args) % 2:
        raise SystemExit(__doc__)
    for room, status in zip(args[::2], args[1::2]):
        print(f"room {room} {status}: stored at {publish(room, status)}")
