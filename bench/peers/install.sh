#!/usr/bin/env bash
# Installs what the peer servers of bellhop-loadgen need, when it is missing: nats-server (from
# the distribution's packages, via apt-get), and the Socket.IO server's node_modules (npm ci from
# the committed package-lock.json). Idempotent: a second run changes nothing. Needs node (>= 18)
# and npm; installing nats-server needs root or sudo. Exits non-zero, saying why, when something
# cannot be had.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sio="$here/socketio"

die() {
  echo "bench/peers/install.sh: $*" >&2
  exit 1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    die "need root (or passwordless sudo) to run: $*"
  fi
}

# --- nats-server ----------------------------------------------------------------------------
if ! command -v nats-server >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 ||
    die "nats-server is missing and apt-get is not available: install nats-server (https://github.com/nats-io/nats-server/releases) and put it on PATH"
  echo "installing nats-server (apt-get)..."
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server ||
    { as_root apt-get update -q && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server; } ||
    die "apt-get could not install nats-server"
  command -v nats-server >/dev/null 2>&1 || die "nats-server installed but not on PATH"
fi

# --- node and the Socket.IO server ----------------------------------------------------------
command -v node >/dev/null 2>&1 || die "node is missing: install Node.js 18 or later (20 recommended)"
command -v npm >/dev/null 2>&1 || die "npm is missing: install npm alongside node"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 18 ] || die "node $(node --version) is too old: Socket.IO's redis client needs node >= 18"

# node_modules is stale when package.json or package-lock.json is newer than npm's own record of
# the last install (node_modules/.package-lock.json), or when a dependency cannot be loaded.
stale=no
if [ ! -f "$sio/node_modules/.package-lock.json" ]; then
  stale=yes
elif [ "$sio/package-lock.json" -nt "$sio/node_modules/.package-lock.json" ] ||
  [ "$sio/package.json" -nt "$sio/node_modules/.package-lock.json" ]; then
  stale=yes
elif ! (cd "$sio" && node -e 'require("socket.io"); require("@socket.io/redis-adapter"); require("redis")' 2>/dev/null); then
  stale=yes
fi
if [ "$stale" = yes ]; then
  echo "installing the Socket.IO server's dependencies (npm ci)..."
  (cd "$sio" && npm ci --omit=dev --no-audit --no-fund) ||
    die "npm ci failed in $sio (is the npm registry reachable?)"
fi

# --- versions -------------------------------------------------------------------------------
echo "nats-server: $(nats-server --version)"
echo "node: $(node --version)"
echo "socket.io: $(cd "$sio" && node -p 'require("socket.io/package.json").version')"
echo "@socket.io/redis-adapter: $(cd "$sio" && node -p 'require("@socket.io/redis-adapter/package.json").version')"
echo "redis (node client): $(cd "$sio" && node -p 'require("redis/package.json").version')"
if (cd "$sio" && node -e 'require("bufferutil")' 2>/dev/null); then
  echo "bufferutil: native (ws masks and unmasks frames in C++)"
else
  echo "bufferutil: not loadable (ws falls back to JavaScript masking; slower, still correct)"
fi
