#!/usr/bin/env bash
# Runs the image (make image first) and serves a client through it: starts a container in the
# host's network namespace, bound to 127.0.0.1 on free ports (nothing leaves loopback), waits for /readyz (printing how long that took), then
# `bellhop connect` subscribes through the container while the HTTP API publishes, and the
# message must arrive. Stops the container at the end.
#
#   IMAGE=bellhop:dev deploy/image-smoke.sh     (make image-smoke)
set -euo pipefail

cd "$(dirname "$0")/.."
IMAGE="${IMAGE:-bellhop:dev}"
B="${BELLHOP_BIN:-${CARGO_TARGET_DIR:-target}/release/bellhop}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WS="$(free_port)"; ADMIN="$(free_port)"
export JWT_SECRET="image-smoke-secret-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
name="bellhop-smoke-$$"
start=$(date +%s%N)
docker run -d --rm --name "$name" --read-only --cap-drop ALL --security-opt no-new-privileges \
  -e JWT_SECRET -e BELLHOP_ENV=production -e NODE_ID=smoke -e DRAIN_SECONDS=1 \
  -e BIND_ADDR=127.0.0.1 -e WS_PORT="$WS" -e METRICS_PORT="$ADMIN" --network host "$IMAGE" >/dev/null
trap 'docker stop -t 5 "$name" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 200); do
  curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break
  sleep 0.05
done
curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null || { docker logs "$name" >&2; echo "the container never became ready" >&2; exit 1; }
ready_ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "docker run to /readyz 200: ${ready_ms} ms"

HK="$($B token --sub maria --role staff --prop h1 --depts housekeeping)"
SVC="$($B token --sub pms --role service --prop h1)"
out="$(mktemp)"
timeout 20 "$B" connect --url "ws://127.0.0.1:$WS/ws" --token "$HK" --subscribe dept:housekeeping --follow >"$out" 2>&1 &
client=$!
for _ in $(seq 1 100); do grep -q '"type":"subscribed"' "$out" && break; sleep 0.05; done
curl -sf -X POST "http://127.0.0.1:$WS/api/v1/publish" -H "authorization: Bearer $SVC" \
  -H 'content-type: application/json' \
  -d '{"channel":"dept:housekeeping","event":"ROOM_STATUS_UPDATE","payload":{"room":"101","status":"clean"}}' >/dev/null
for _ in $(seq 1 100); do grep -q '"type":"message"' "$out" && break; sleep 0.05; done
kill "$client" 2>/dev/null || true
if ! grep -q '"ROOM_STATUS_UPDATE"' "$out"; then cat "$out" >&2; echo "no message through the container" >&2; exit 1; fi
grep '"type":"welcome"' "$out" | head -1
grep '"type":"message"' "$out" | head -1 | cut -c1-160
echo "image $IMAGE ($(( $(docker image inspect --format '{{.Size}}' "$IMAGE") / 1024 / 1024 )) MiB) served a client: welcome, subscribed, message"
rm -f "$out"
