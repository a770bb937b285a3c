#!/usr/bin/env bash
# The fan-out profile of docs/BENCHMARKS.md ("Profiles"): Bellhop, then NATS, at 800 messages/s
# to 2,000 subscribers (1.6 million deliveries/s offered), with the server's write syscalls
# counted (perf stat on the syscall tracepoints) and, for Bellhop, a perf profile with call
# graphs. Needs perf (apt-get install linux-perf), nats-server, and the release binaries
# (cargo build --release -p bellhop -p bellhop-loadgen). Output in ${OUT:-target/profile-fanout}.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf"; exit 1; }
out=${OUT:-target/profile-fanout}
rm -rf "$out"; mkdir -p "$out"
ulimit -n 20000
for sys in bellhop nats; do
  target/release/bellhop-loadgen bench --bellhop target/release/bellhop --systems "$sys" \
    --scenarios fanout --fanout-rates 800 --fanout-step-seconds 20 --runs 1 \
    --doc "$out/$sys.md" --out "$out/$sys" --scratch "$out/scratch-$sys" >"$out/$sys.log" 2>&1 &
  loadgen=$!
  if [ "$sys" = bellhop ]; then pattern="release/bellhop serve"; else pattern="nats-server"; fi
  pid=
  # The load generator's own child: a nats-server or bellhop the machine runs anyway is not it.
  for _ in $(seq 1 240); do pid=$(pgrep -P "$loadgen" -f "$pattern" | head -1 || true); [ -n "$pid" ] && break; sleep 0.5; done
  [ -n "$pid" ] || { echo "$sys did not start (see $out/$sys.log)"; exit 1; }
  # Until the 2,000 subscribers are connected, then past the settling and the warm-up.
  for _ in $(seq 1 240); do [ "$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)" -gt 1990 ] && break; sleep 0.5; done
  sleep 6
  perf stat -e 'syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendmsg' \
    -p "$pid" -- sleep 4 2>"$out/$sys.syscalls"
  if [ "$sys" = bellhop ]; then
    perf record -F 999 -g -p "$pid" -o "$out/bellhop.perf.data" -- sleep 6 2>/dev/null
  fi
  wait "$loadgen"
done
grep -h "| 1 | 2000 |" "$out"/*.md
cat "$out"/*.syscalls
echo "perf report -i $out/bellhop.perf.data --no-children --sort sym"
