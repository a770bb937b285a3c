#!/usr/bin/env python3
"""The dashboard and the alerts against real parts (make observability-test).

Starts, on free loopback ports: a redis-server, a Bellhop node using it, a webhook receiver,
Alertmanager (Debian's prometheus-alertmanager) sending to the webhook, and Prometheus (Debian's
prometheus) scraping the node every second with deploy/prometheus/alerts.yml loaded. Then:

1. A little traffic of every kind the dashboard shows: subscribers, publishes of three
   priorities, a refused token, a bad request, an address flooding upgrades until it is banned
   (through X-Forwarded-For from a trusted proxy: the address is only a header), and a client
   that subscribes and never reads until it is closed as a slow consumer.
2. Every query of every panel of deploy/grafana/bellhop.json is run against Prometheus
   ($node = .*, $__rate_interval = 5m), while steady traffic goes on, and must return at least
   one series with a number (not NaN).
3. redis-server is killed; BellhopLiveDeliveryDown must reach the webhook through Prometheus and
   Alertmanager. The rules are loaded with every `for:` cut to 5 s (expressions unchanged), so
   the check takes seconds, not minutes.

Nothing waits a fixed time for something to happen: each step polls for its event with a
deadline. Prints one line per check and "N passed, N failed" at the end.
"""

import argparse
import base64
import http.server
import itertools
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
SECRET = "observability-check-secret-0123456789abcdef"
PANEL_RATE_INTERVAL = "5m"
ALERT_FOR = "5s"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, fn, deadline=30.0, every=0.1):
    """Polls fn until it returns something truthy; fails naming `what` after `deadline` s."""
    end = time.monotonic() + deadline
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:.0f} s waiting for {what}")
        time.sleep(every)


def http_get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


_API_CALLS = itertools.count()


def http_post(url, body, token, timeout=10):
    # The node sits behind a "trusted proxy" (127.0.0.1) with RATE_LIMIT_PER_IP=20, so that a
    # flood from one address is refused and banned quickly; the HTTP API counts against the same
    # per-address budget. Each API call therefore comes "from" its own documentation address, as
    # the hotel systems behind a real load balancer would come from theirs.
    n = next(_API_CALLS)
    forwarded = f"198.18.{n // 250 % 250}.{n % 250 + 1}"
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"authorization": f"Bearer {token}", "content-type": "application/json",
                 "x-forwarded-for": forwarded},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text, name):
    """Sum of a metric's samples in the Prometheus text format (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def upgrade(port, token, headers=(), rcvbuf=None):
    """A raw WebSocket upgrade; returns (status, socket). The socket is left open."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Authorization: Bearer {token}",
        *headers,
    ]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, s


def ws_text(s, text):
    """Sends one masked text frame (clients must mask)."""
    data = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    if len(data) < 126:
        header += bytes([0x80 | len(data)])
    else:
        header += bytes([0x80 | 126]) + len(data).to_bytes(2, "big")
    s.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


class Webhook(http.server.BaseHTTPRequestHandler):
    """Alertmanager's webhook receiver: keeps every notification."""

    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        Webhook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


class Check:
    def __init__(self, bellhop):
        self.bellhop = bellhop
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="bellhop-observability."))
        self.procs = []
        self.passed = 0
        self.failed = 0
        self.ports = {k: free_port() for k in ("redis", "ws", "admin", "prometheus", "alertmanager", "webhook")}

    def ok(self, line):
        self.passed += 1
        print(f"  ok   {line}", flush=True)

    def fail(self, line):
        self.failed += 1
        print(f"  FAIL {line}", flush=True)

    def spawn(self, name, args, env=None):
        log = open(self.tmp / f"{name}.log", "w")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.tmp)
        self.procs.append((name, p))
        return p

    def log_tail(self, name, lines=20):
        path = self.tmp / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def token(self, *args):
        out = subprocess.run(
            [self.bellhop, "token", *args],
            env={"JWT_SECRET": SECRET, "PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def start(self):
        p = self.ports
        self.redis = self.spawn(
            "redis",
            ["redis-server", "--port", str(p["redis"]), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        )
        wait_for("redis-server", lambda: subprocess.run(
            ["redis-cli", "-p", str(p["redis"]), "ping"], capture_output=True, text=True).stdout.strip() == "PONG")
        env = {
            "PATH": os.environ["PATH"],
            "JWT_SECRET": SECRET,
            "BELLHOP_ENV": "production",
            "REDIS_URL": f"redis://127.0.0.1:{p['redis']}",
            "BIND_ADDR": "127.0.0.1",
            "WS_PORT": str(p["ws"]),
            "METRICS_PORT": str(p["admin"]),
            "NODE_ID": "obs-node",
            "LOG_FORMAT": "json",
            "DRAIN_SECONDS": "1",
            "RATE_LIMIT_PER_IP": "20",
            "BAN_THRESHOLD": "3",
            "TRUSTED_PROXIES": "127.0.0.1",
            "RATE_LIMIT_PUBLISHES_PER_MINUTE": "100000",
            # The slow-consumer step publishes ~27 MB in a few seconds as one service user.
            "PUBLISH_BYTES_PER_USER_PER_MINUTE": "4294967295",
        }
        self.node = self.spawn("node", [self.bellhop, "serve"], env=env)
        admin = f"http://127.0.0.1:{p['admin']}"
        def node_ready():
            if self.node.poll() is not None:
                raise AssertionError(f"the node exited:\n{self.log_tail('node')}")
            return http_get(admin + "/readyz")[0] == 200

        wait_for("the node's /readyz", node_ready)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", p["webhook"]), Webhook)
        threading.Thread(target=server.serve_forever, daemon=True).start()

        am = self.tmp / "alertmanager.yml"
        am.write_text(yaml.safe_dump({
            "route": {"receiver": "webhook", "group_by": ["alertname", "node"], "group_wait": "1s",
                      "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "webhook", "webhook_configs": [
                {"url": f"http://127.0.0.1:{p['webhook']}/alerts", "send_resolved": False}]}],
        }))
        self.spawn("alertmanager", [
            "prometheus-alertmanager", f"--config.file={am}", f"--storage.path={self.tmp / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{p['alertmanager']}", "--cluster.listen-address=",
        ])
        wait_for("Alertmanager", lambda: http_get(f"http://127.0.0.1:{p['alertmanager']}/-/ready")[0] == 200)

        rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = ALERT_FOR
        (self.tmp / "alerts.yml").write_text(yaml.safe_dump(rules))
        (self.tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(self.tmp / "alerts.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{p['alertmanager']}"]}]}]},
            "scrape_configs": [{"job_name": "bellhop", "static_configs": [{"targets": [f"127.0.0.1:{p['admin']}"]}]}],
        }))
        self.spawn("prometheus", [
            "prometheus", f"--config.file={self.tmp / 'prometheus.yml'}", f"--storage.tsdb.path={self.tmp / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{p['prometheus']}",
        ])
        wait_for("Prometheus to scrape the node", lambda: self.query("up{job=\"bellhop\"} == 1"), deadline=30)

    def query(self, expr):
        status, body = http_get(
            f"http://127.0.0.1:{self.ports['prometheus']}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        if status != 200:
            return None
        data = json.loads(body)
        return data["data"]["result"] if data.get("status") == "success" else None

    def node_metrics(self):
        return http_get(f"http://127.0.0.1:{self.ports['admin']}/metrics")[1]

    def traffic(self):
        p = self.ports
        api = f"http://127.0.0.1:{p['ws']}/api/v1/publish"
        url = f"ws://127.0.0.1:{p['ws']}/ws"
        staff = self.token("--sub", "maria", "--role", "staff", "--prop", "h1", "--depts", "housekeeping,laundry")
        service = self.token("--sub", "pms", "--role", "service", "--prop", "h1")
        # Two real clients that read.
        for i in range(2):
            self.spawn(f"client-{i}", [self.bellhop, "connect", "--url", url, "--token", staff,
                                       "--subscribe", "dept:housekeeping", "--follow"])
        wait_for("two subscribers", lambda: metric(self.node_metrics(), "bellhop_subscriptions") >= 2)
        for event in ["SERVICE_REQUEST", "ROOM_STATUS_UPDATE", "EMERGENCY_ALERT"] * 3:
            status, body = http_post(api, {"channel": "dept:housekeeping", "event": event, "payload": {"room": "101"}}, service)
            assert status == 200, f"publish {event}: {status} {body}"
        wait_for("deliveries", lambda: metric(self.node_metrics(), "bellhop_messages_delivered_total") >= 18)
        # A client error, and an upgrade with a token signed by another secret.
        status, _ = http_post(api, {"channel": "room:", "event": "SERVICE_REQUEST", "payload": {}}, service)
        assert status == 400, f"a bad channel is a bad request, got {status}"
        forged = subprocess.run([self.bellhop, "token", "--sub", "x", "--role", "staff", "--prop", "h1"],
                                env={"JWT_SECRET": "some-other-secret-0123456789abcdef", "PATH": os.environ["PATH"]},
                                capture_output=True, text=True, check=True).stdout.strip()
        status, s = upgrade(p["ws"], forged)
        s.close()
        assert status == 401, f"a forged token is refused with 401, got {status}"
        # One address floods upgrades until it is banned (RATE_LIMIT_PER_IP=20, BAN_THRESHOLD=3).
        statuses = []
        for _ in range(30):
            status, s = upgrade(p["ws"], forged, headers=["X-Forwarded-For: 203.0.113.9"])
            s.close()
            statuses.append(status)
        assert 429 in statuses, f"the flood is rate-limited: {statuses}"
        wait_for("a ban", lambda: metric(self.node_metrics(), "bellhop_bans_total") >= 1)
        # A client that subscribes and never reads, with a small receive buffer, under large
        # messages: its queue fills and it is closed with 4008.
        status, slow = upgrade(p["ws"], staff, rcvbuf=4096)
        assert status == 101, f"the slow client's upgrade: {status}"
        ws_text(slow, json.dumps({"type": "subscribe", "channel": "dept:laundry", "id": 1}))
        wait_for("the slow client's subscription", lambda: metric(self.node_metrics(), "bellhop_subscriptions") >= 3)
        big = {f"part{i}": "x" * 9000 for i in range(5)}
        for n in range(1, 601):
            status, body = http_post(api, {"channel": "dept:laundry", "event": "HOUSEKEEPING_ALERT", "payload": big}, service)
            assert status == 200, f"large publish: {status} {body[:200]}"
            if n % 25 == 0 and metric(self.node_metrics(), "bellhop_slow_consumer_disconnects_total") >= 1:
                break
        wait_for("a slow-consumer close", lambda: metric(self.node_metrics(), "bellhop_slow_consumer_disconnects_total") >= 1)
        slow.close()

    def steady_traffic(self, stop):
        """A publish of each priority, a bad request and a refused upgrade every 200 ms."""
        p = self.ports
        api = f"http://127.0.0.1:{p['ws']}/api/v1/publish"
        service = self.token("--sub", "pms", "--role", "service", "--prop", "h1")
        while not stop.is_set():
            for event in ["SERVICE_REQUEST", "ROOM_STATUS_UPDATE", "EMERGENCY_ALERT"]:
                http_post(api, {"channel": "dept:housekeeping", "event": event, "payload": {"room": "102"}}, service)
            http_post(api, {"channel": "room:", "event": "SERVICE_REQUEST", "payload": {}}, service)
            try:
                _, s = upgrade(p["ws"], "not-a-token", headers=["X-Forwarded-For: 203.0.113.9"])
                s.close()
            except OSError:
                pass
            stop.wait(0.2)

    def panels(self):
        stop = threading.Event()
        steady = threading.Thread(target=self.steady_traffic, args=(stop,), daemon=True)
        steady.start()
        try:
            self.panel_queries()
        finally:
            stop.set()
            steady.join(timeout=10)

    def panel_queries(self):
        dashboard = json.loads((ROOT / "deploy/grafana/bellhop.json").read_text())
        wait_for("Prometheus to see the slow-consumer close",
                 lambda: self.query("bellhop_slow_consumer_disconnects_total > 0"), deadline=15)
        for panel in dashboard["panels"]:
            if panel["type"] == "row":
                continue
            for target in panel["targets"]:
                expr = (target["expr"].replace("$__rate_interval", PANEL_RATE_INTERVAL)
                        .replace('"$node"', '".*"').replace("$node", ".*"))
                # rate() needs two scrapes of a series, and a histogram quantile traffic inside
                # its window: poll (while steady traffic runs) until the query answers a number.
                def numbers():
                    result = self.query(expr) or []
                    return [r for r in result if r["value"][1] not in ("NaN", "+Inf", "-Inf")]

                try:
                    result = wait_for(expr, numbers, deadline=20, every=0.25)
                except AssertionError:
                    result = None
                what = f"{panel['title']} [{target['legendFormat']}]"
                if result:
                    values = ", ".join(sorted({r["value"][1] for r in result})[:3])
                    self.ok(f"{what}: {len(result)} series ({values})")
                else:
                    counters = sorted({r["metric"]["__name__"] for r in self.query('{__name__=~"bellhop_.*"}') or []})
                    self.fail(f"{what}: no data for {expr} (series Prometheus has: {counters})")

    def alert_end_to_end(self):
        firing = lambda: [a for n in Webhook.received for a in n["alerts"]
                          if a["labels"]["alertname"] == "BellhopLiveDeliveryDown" and a["status"] == "firing"]
        assert not firing(), "live delivery is down before Redis is killed"
        self.redis.send_signal(signal.SIGKILL)
        started = time.monotonic()
        alerts = wait_for("BellhopLiveDeliveryDown at the webhook", firing, deadline=120, every=0.2)
        labels = alerts[0]["labels"]
        assert labels["node"] == "obs-node" and labels["severity"] == "critical", labels
        self.ok(f"Redis killed; BellhopLiveDeliveryDown (node={labels['node']}, severity={labels['severity']}) "
                f"reached the webhook through Prometheus and Alertmanager in {time.monotonic() - started:.1f} s")

    def stop(self):
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for name, p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.failed == 0:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            print(f"logs kept in {self.tmp}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bellhop", required=True, help="the bellhop binary")
    args = parser.parse_args()
    subprocess.run([str(ROOT / "deploy/tools.sh"), "prometheus", "alertmanager", "redis"], check=True)
    check = Check(os.path.abspath(args.bellhop))
    started = time.monotonic()
    try:
        check.start()
        check.traffic()
        check.ok("traffic: subscribers, publishes (normal, high, urgent), 401, 400, a ban, a slow-consumer close")
        check.panels()
        check.alert_end_to_end()
    except AssertionError as e:
        check.fail(str(e))
        for name in ("node", "prometheus", "alertmanager"):
            print(f"--- {name} log (tail):\n{check.log_tail(name)}")
    finally:
        check.stop()
    print(f"observability: {check.passed} passed, {check.failed} failed ({time.monotonic() - started:.0f} s)")
    sys.exit(1 if check.failed else 0)


if __name__ == "__main__":
    main()
