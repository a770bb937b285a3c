#!/usr/bin/env bash
# A local Bellhop cluster for trying multi-node behaviour by hand: one Redis server, three nodes,
# and (when nginx is available) nginx as a WebSocket load balancer in front of them.
#
#   deploy/local-cluster.sh up     start everything, print the endpoints
#   deploy/local-cluster.sh down   stop exactly what `up` started (by the pid files it wrote)
#
# State, logs and pid files live in .bellhop/cluster/. Everything listens on 127.0.0.1. Ports
# (override in the environment; `up` refuses to start if one is taken, naming it):
#   CLUSTER_REDIS_PORT=6380  CLUSTER_LB_PORT=3100
#   CLUSTER_WS_BASE=3101     nodes on 3101, 3102, 3103
#   CLUSTER_ADMIN_BASE=9101  their admin ports 9101, 9102, 9103
# Tokens: the nodes verify with JWT_SECRET (default below, printed by `up`); mint with the same:
#   export JWT_SECRET=local-cluster-secret-0123456789abcdef
set -euo pipefail

cd "$(dirname "$0")/.."
DIR="$PWD/.bellhop/cluster"
BIN="${BELLHOP_BIN:-$PWD/target/release/bellhop}"
REDIS_PORT="${CLUSTER_REDIS_PORT:-6380}"
LB_PORT="${CLUSTER_LB_PORT:-3100}"
WS_BASE="${CLUSTER_WS_BASE:-3101}"
ADMIN_BASE="${CLUSTER_ADMIN_BASE:-9101}"
NODES=(1 2 3)
ws_port() { echo $((WS_BASE + $1 - 1)); }
admin_port() { echo $((ADMIN_BASE + $1 - 1)); }

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port what
  for _ in $(seq 1 100); do
    if port_taken "$1"; then return 0; fi
    sleep 0.1
  done
  echo "$2 did not open port $1; see $DIR" >&2
  return 1
}

fail_up() { # message: stop what was started, say why, exit 1
  echo "local cluster NOT started: $1" >&2
  down >/dev/null 2>&1 || true
  exit 1
}

# Waits until node $1 answers /readyz as itself, or fails loudly if its process died (a port in
# use, a bad setting) with the end of its log.
wait_node() {
  local i="$1" admin pid
  admin="$(admin_port "$i")"
  pid="$(cat "$DIR/node-$i.pid")"
  for _ in $(seq 1 150); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "node-$i exited during startup; the end of $DIR/node-$i.log:" >&2
      tail -5 "$DIR/node-$i.log" | sed 's/^/    /' >&2
      return 1
    fi
    if curl -sf "http://127.0.0.1:$admin/readyz" 2>/dev/null | grep -q "\"node\":\"node-$i\""; then
      return 0
    fi
    sleep 0.1
  done
  echo "node-$i did not become ready on http://127.0.0.1:$admin/readyz within 15 s; see $DIR/node-$i.log" >&2
  return 1
}

up() {
  mkdir -p "$DIR"
  if running "$DIR/redis.pid"; then echo "already running: run '$0 down' first" >&2; exit 1; fi
  command -v redis-server >/dev/null || { echo "redis-server is missing (apt-get install redis-server)" >&2; exit 1; }
  command -v curl >/dev/null || { echo "curl is missing (apt-get install curl)" >&2; exit 1; }
  [ -x "$BIN" ] || { echo "$BIN is missing: run 'make build' first" >&2; exit 1; }
  local ports=("$REDIS_PORT:CLUSTER_REDIS_PORT")
  for i in "${NODES[@]}"; do
    ports+=("$(ws_port "$i"):CLUSTER_WS_BASE (node-$i)" "$(admin_port "$i"):CLUSTER_ADMIN_BASE (node-$i admin)")
  done
  command -v nginx >/dev/null && ports+=("$LB_PORT:CLUSTER_LB_PORT")
  for entry in "${ports[@]}"; do
    if port_taken "${entry%%:*}"; then
      echo "port ${entry%%:*} on 127.0.0.1 is already in use: stop what holds it, or choose other ports with ${entry#*:}" >&2
      exit 1
    fi
  done

  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DIR" --appendonly yes \
    --appendfsync everysec --save "" --daemonize yes --pidfile "$DIR/redis.pid" \
    --logfile "$DIR/redis.log"
  wait_port "$REDIS_PORT" redis-server || fail_up "redis-server did not start (see $DIR/redis.log)"

  export JWT_SECRET="${JWT_SECRET:-local-cluster-secret-0123456789abcdef}"
  for i in "${NODES[@]}"; do
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT" NODE_ID="node-$i" WS_PORT="$(ws_port "$i")" \
      METRICS_PORT="$(admin_port "$i")" BIND_ADDR=127.0.0.1 DRAIN_SECONDS=2 \
      nohup "$BIN" serve >"$DIR/node-$i.log" 2>&1 &
    echo $! >"$DIR/node-$i.pid"
  done
  for i in "${NODES[@]}"; do wait_node "$i" || fail_up "node-$i is not running"; done

  local lb="none (nginx not installed: apt-get install nginx)"
  if command -v nginx >/dev/null; then
    mkdir -p "$DIR/nginx"
    cat >"$DIR/nginx.conf" <<NGINX
worker_processes 1;
pid $DIR/nginx.pid;
error_log $DIR/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $DIR/nginx/body;
  proxy_temp_path $DIR/nginx/proxy;
  fastcgi_temp_path $DIR/nginx/fastcgi;
  uwsgi_temp_path $DIR/nginx/uwsgi;
  scgi_temp_path $DIR/nginx/scgi;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream bellhop {
    server 127.0.0.1:$(ws_port 1) max_fails=1 fail_timeout=5s;
    server 127.0.0.1:$(ws_port 2) max_fails=1 fail_timeout=5s;
    server 127.0.0.1:$(ws_port 3) max_fails=1 fail_timeout=5s;
  }
  server {
    listen 127.0.0.1:$LB_PORT;
    location / {
      proxy_pass http://bellhop;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_read_timeout 120s;
    }
  }
}
NGINX
    nginx -c "$DIR/nginx.conf" -p "$DIR" || fail_up "nginx did not start (see $DIR/nginx-error.log)"
    wait_port "$LB_PORT" nginx || fail_up "nginx did not open port $LB_PORT"
    lb="ws://127.0.0.1:$LB_PORT/ws  (nginx, round robin over the three nodes)"
  fi

  cat <<INFO
Bellhop local cluster is up (state and logs in $DIR)
  load balancer: $lb
  nodes:         ws://127.0.0.1:$(ws_port 1)/ws  ws://127.0.0.1:$(ws_port 2)/ws  ws://127.0.0.1:$(ws_port 3)/ws
  admin:         http://127.0.0.1:$(admin_port 1)/readyz  ($(admin_port 2), $(admin_port 3))
  redis:         redis://127.0.0.1:$REDIS_PORT  (AOF on)
  tokens:        the nodes verify with this secret; mint with the same one:
                   export JWT_SECRET=$JWT_SECRET
                   $BIN token --sub s1 --role staff --prop h1 --depts housekeeping
Stop it with: make cluster-down
INFO
}

down() {
  local stopped=0
  if running "$DIR/nginx.pid"; then nginx -c "$DIR/nginx.conf" -p "$DIR" -s quit && stopped=$((stopped + 1)); fi
  for i in "${NODES[@]}"; do
    if running "$DIR/node-$i.pid"; then kill -TERM "$(cat "$DIR/node-$i.pid")" && stopped=$((stopped + 1)); fi
  done
  for i in "${NODES[@]}"; do
    for _ in $(seq 1 100); do running "$DIR/node-$i.pid" || break; sleep 0.1; done
    rm -f "$DIR/node-$i.pid"
  done
  if running "$DIR/redis.pid"; then kill -TERM "$(cat "$DIR/redis.pid")" && stopped=$((stopped + 1)); fi
  for _ in $(seq 1 100); do running "$DIR/redis.pid" || break; sleep 0.1; done
  echo "stopped $stopped processes"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
