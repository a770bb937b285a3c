#!/usr/bin/env python3
"""From rendered chart manifests to a serving container, without Kubernetes (none runs on this
project's machines): renders helm/bellhop, takes the Deployment's container as the kubelet would
(image, args, env with the Secret and the pod name resolved, user, read-only root filesystem,
dropped capabilities, no privilege escalation, the tmp emptyDir as a tmpfs), runs it with docker
next to a real redis-server, polls its startup and readiness probes as declared, and has a client
receive a message through it. Prints the time from `docker run` to each probe passing.

One deviation, said here and in the output: the container shares the host's network (nothing
leaves loopback), so BIND_ADDR is 127.0.0.1 instead of the manifest's 0.0.0.0, and the ports are
free ones set through the chart's values.

    python3 deploy/checks/manifest-run.py --image bellhop:dev --bellhop target/release/bellhop
"""

import argparse
import base64
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status
    except Exception as e:  # noqa: BLE001 - any failure is "not yet"
        return getattr(e, "code", None)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default="bellhop:dev")
    parser.add_argument("--bellhop", default=str(ROOT / "target/release/bellhop"))
    args = parser.parse_args()
    ws, admin, redis_port = free_port(), free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
                             stdout=subprocess.DEVNULL)
    repo, _, tag = args.image.rpartition(":")
    started = time.monotonic()
    rendered = subprocess.run(
        [str(ROOT / ".tools/bin/helm"), "template", "bellhop", str(ROOT / "helm/bellhop"),
         "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
         "--set", "redis.host=127.0.0.1", "--set", f"redis.port={redis_port}",
         "--set", f"config.wsPort={ws}", "--set", f"config.metricsPort={admin}"],
        capture_output=True, text=True, check=True).stdout
    render_s = time.monotonic() - started
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    pod_name = "bellhop-7c9d5b6f4-x2x9q"
    env = {}
    for e in c["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = base64.b64decode(secrets[ref["name"]]["data"][ref["key"]]).decode()
        elif e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name":
            env[e["name"]] = pod_name
    env["BIND_ADDR"] = "127.0.0.1"  # the deviation: host network
    sc, psc = c["securityContext"], pod["securityContext"]
    cmd = ["docker", "run", "-d", "--rm", "--name", f"bellhop-manifest-{os.getpid()}", "--network", "host",
           "--user", f"{psc['runAsUser']}:{psc['runAsGroup']}"]
    if sc.get("readOnlyRootFilesystem"):
        cmd.append("--read-only")
    if sc.get("capabilities", {}).get("drop") == ["ALL"]:
        cmd += ["--cap-drop", "ALL"]
    if sc.get("allowPrivilegeEscalation") is False:
        cmd += ["--security-opt", "no-new-privileges"]
    for m in c["volumeMounts"]:
        if m["name"] == "tmp":
            cmd += ["--tmpfs", f"{m['mountPath']}:size=16m"]
    for k, v in env.items():
        cmd += ["-e", f"{k}={v}"]
    cmd += [c["image"], *c.get("args", [])]
    t0 = time.monotonic()
    container = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    try:
        times = {}
        for probe in ("startupProbe", "readinessProbe"):
            path = c[probe]["httpGet"]["path"]
            deadline = time.monotonic() + 30
            while status(f"http://127.0.0.1:{admin}{path}") != 200:
                if time.monotonic() > deadline:
                    logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True)
                    sys.exit(f"{probe} {path} never passed:\n{logs.stdout}{logs.stderr}")
                time.sleep(0.02)
            times[probe] = time.monotonic() - t0
        secret_env = {"JWT_SECRET": env["JWT_SECRET"], "PATH": os.environ["PATH"]}
        mint = lambda *a: subprocess.run([args.bellhop, "token", *a], env=secret_env, capture_output=True,
                                         text=True, check=True).stdout.strip()
        staff = mint("--sub", "maria", "--role", "staff", "--prop", "h1", "--depts", "housekeeping")
        service = mint("--sub", "pms", "--role", "service", "--prop", "h1")
        client = subprocess.Popen([args.bellhop, "connect", "--url", f"ws://127.0.0.1:{ws}{env['WS_PATH']}",
                                   "--token", staff, "--subscribe", "dept:housekeeping", "--follow"],
                                  stdout=subprocess.PIPE, text=True)
        lines = [client.stdout.readline(), client.stdout.readline()]
        req = urllib.request.Request(
            f"http://127.0.0.1:{ws}/api/v1/publish", method="POST",
            data=json.dumps({"channel": "dept:housekeeping", "event": "ROOM_STATUS_UPDATE",
                             "payload": {"room": "101", "status": "clean"}}).encode(),
            headers={"authorization": f"Bearer {service}", "content-type": "application/json"})
        urllib.request.urlopen(req, timeout=5).read()
        lines.append(client.stdout.readline())
        client.terminate()
        welcome = json.loads(lines[0])
        message = json.loads(lines[2])
        assert welcome["node"] == pod_name, welcome
        assert message["type"] == "message" and message["message"]["event"] == "ROOM_STATUS_UPDATE", message
        print(f"helm template: {render_s * 1000:.0f} ms; docker run (the Deployment's container, "
              f"BIND_ADDR=127.0.0.1 for the host network) to startup probe {c['startupProbe']['httpGet']['path']} "
              f"200: {times['startupProbe'] * 1000:.0f} ms, to readiness probe {c['readinessProbe']['httpGet']['path']} "
              f"200: {times['readinessProbe'] * 1000:.0f} ms")
        print(f"a client on node {welcome['node']} (NODE_ID from metadata.name) received "
              f"{message['message']['event']} at offset {message['offset']}, through Redis on port {redis_port}")
    finally:
        subprocess.run(["docker", "stop", "-t", "5", container], capture_output=True)
        redis.terminate()
        redis.wait()


if __name__ == "__main__":
    main()
