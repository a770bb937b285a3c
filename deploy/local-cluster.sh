#!/usr/bin/env bash
# A local Bellhop cluster for trying multi-node behaviour by hand: one Redis server, three nodes,
# and (when nginx is available) nginx as a WebSocket load balancer in front of them.
#
#   deploy/local-cluster.sh up     start everything, print the endpoints
#   deploy/local-cluster.sh down   stop exactly what `up` started (by the pid files it wrote)
#
# State, logs and pid files live in .bellhop/cluster/. Ports (override in the environment):
#   CLUSTER_REDIS_PORT=6380  nodes 3101-3103 (admin 9101-9103)  CLUSTER_LB_PORT=3100
set -euo pipefail

cd "$(dirname "$0")/.."
DIR="$PWD/.bellhop/cluster"
BIN="${BELLHOP_BIN:-$PWD/target/release/bellhop}"
REDIS_PORT="${CLUSTER_REDIS_PORT:-6380}"
LB_PORT="${CLUSTER_LB_PORT:-3100}"
NODES=(1 2 3)

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_port() { # host port what
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$2 did not open port $1; see $DIR" >&2
  return 1
}

up() {
  mkdir -p "$DIR"
  if running "$DIR/redis.pid"; then echo "already running: run '$0 down' first" >&2; exit 1; fi
  command -v redis-server >/dev/null || { echo "redis-server is missing (apt-get install redis-server)" >&2; exit 1; }
  [ -x "$BIN" ] || { echo "$BIN is missing: run 'make build' first" >&2; exit 1; }

  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DIR" --appendonly yes \
    --appendfsync everysec --save "" --daemonize yes --pidfile "$DIR/redis.pid" \
    --logfile "$DIR/redis.log"
  wait_port "$REDIS_PORT" redis-server

  export JWT_SECRET="${JWT_SECRET:-local-cluster-secret-0123456789abcdef}"
  for i in "${NODES[@]}"; do
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT" NODE_ID="node-$i" WS_PORT="310$i" \
      METRICS_PORT="910$i" BIND_ADDR=127.0.0.1 DRAIN_SECONDS=2 \
      nohup "$BIN" serve >"$DIR/node-$i.log" 2>&1 &
    echo $! >"$DIR/node-$i.pid"
  done
  for i in "${NODES[@]}"; do wait_port "310$i" "node-$i"; done

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
    server 127.0.0.1:3101 max_fails=1 fail_timeout=5s;
    server 127.0.0.1:3102 max_fails=1 fail_timeout=5s;
    server 127.0.0.1:3103 max_fails=1 fail_timeout=5s;
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
    nginx -c "$DIR/nginx.conf" -p "$DIR"
    wait_port "$LB_PORT" nginx
    lb="ws://127.0.0.1:$LB_PORT/ws  (nginx, round robin over the three nodes)"
  fi

  cat <<INFO
Bellhop local cluster is up (state and logs in $DIR)
  load balancer: $lb
  nodes:         ws://127.0.0.1:3101/ws  ws://127.0.0.1:3102/ws  ws://127.0.0.1:3103/ws
  admin:         http://127.0.0.1:9101/readyz  (9102, 9103)
  redis:         redis://127.0.0.1:$REDIS_PORT  (AOF on)
  tokens:        JWT_SECRET=$JWT_SECRET $BIN token --sub s1 --role staff --prop h1 --depts housekeeping
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
