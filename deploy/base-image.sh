#!/usr/bin/env bash
# Builds the local base image the Dockerfile's staging stage starts from, for machines that cannot
# pull from a registry: a minimal Debian bookworm made with debootstrap from the Debian mirror apt
# already uses, with ca-certificates, imported with `docker import`. Nothing of it reaches the
# runtime image except the shared libraries the binary links, the CA bundle and passwd entries.
#
#   deploy/base-image.sh [image]     (default bellhop-base:bookworm; does nothing if it exists)
#
# Where a registry is reachable, `debian:bookworm-slim` serves the same purpose:
#   docker build --build-arg BASE=debian:bookworm-slim ...  (it needs ca-certificates installed).
set -euo pipefail

IMAGE="${1:-bellhop-base:bookworm}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE exists"
  exit 0
fi
if ! command -v debootstrap >/dev/null; then
  echo "debootstrap is missing: installing it"
  apt-get install -y -qq debootstrap >/dev/null
fi
ROOTFS="$(mktemp -d /tmp/bellhop-base.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
echo "debootstrap $SUITE into $ROOTFS (a few minutes, once)"
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || {
  tail -20 "$ROOTFS.log" >&2
  echo "debootstrap failed; see $ROOTFS.log" >&2
  exit 1
}
rm -f "$ROOTFS.log"
# Package lists and caches are not needed to copy files out of it.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | docker import \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap --variant=minbase --include=ca-certificates $SUITE" - "$IMAGE" >/dev/null
echo "base image $IMAGE built: $(docker image inspect --format '{{.Size}}' "$IMAGE") bytes"
