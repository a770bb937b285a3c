#!/usr/bin/env bash
# Builds the container image (make image): the release binary, stripped, into target/image/ (the
# build context), then deploy/Dockerfile on a Debian base. Starts dockerd when none answers
# (its log: .tools/dockerd.log). Without BASE, the local base deploy/base-image.sh makes is used,
# since this machine cannot pull; with BASE=debian:bookworm-slim, the registry's.
#
#   IMAGE=bellhop:dev BASE=... deploy/image.sh
set -euo pipefail

cd "$(dirname "$0")/.."
IMAGE="${IMAGE:-bellhop:dev}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET_DIR/release/bellhop"
[ -x "$BIN" ] || { echo "$BIN is missing: run 'cargo build --release -p bellhop' first" >&2; exit 1; }

deploy/tools.sh docker
if ! docker info >/dev/null 2>&1; then
  mkdir -p .tools
  echo "starting dockerd (log: .tools/dockerd.log)"
  nohup dockerd >.tools/dockerd.log 2>&1 &
  for _ in $(seq 1 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
  docker info >/dev/null 2>&1 || { tail -20 .tools/dockerd.log >&2; echo "dockerd did not start" >&2; exit 1; }
fi
if [ -z "${BASE:-}" ]; then
  BASE=bellhop-base:bookworm
  deploy/base-image.sh "$BASE"
fi

mkdir -p "$TARGET_DIR/image"
# Line tables help backtraces on a developer's machine; the image keeps the symbols only.
strip --strip-debug -o "$TARGET_DIR/image/bellhop" "$BIN"
docker build -q -f deploy/Dockerfile --build-arg BASE="$BASE" -t "$IMAGE" "$TARGET_DIR/image" >/dev/null
size="$(docker image inspect --format '{{.Size}}' "$IMAGE")"
echo "image $IMAGE built: $((size / 1024 / 1024)) MiB ($size bytes), base $BASE"
