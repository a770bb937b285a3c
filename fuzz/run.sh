#!/usr/bin/env bash
# Runs every fuzz target for a while (cargo-fuzz, libFuzzer). See docs/FUZZING.md.
#
#   fuzz/run.sh [--smoke] [SECONDS_PER_TARGET] [TARGET...]
#
# Needs a nightly toolchain (cargo-fuzz builds with sanitizer flags only nightly accepts); a
# nightly is never downloaded here. cargo-fuzz itself is installed from crates.io when missing
# (`cargo install cargo-fuzz --locked`, a few minutes once per machine); FUZZ_INSTALL=0 forbids
# that. With --smoke (what `make test` uses), a missing nightly or a failed install prints why
# and exits 0: an absent tool never fails the test run, a crash always does.
# Each target starts from the committed seeds (fuzz/seeds/<target>) plus what earlier runs
# found (fuzz/corpus/<target>, not committed); a crash input is saved under
# fuzz/artifacts/<target>/ and the run fails.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
if [[ "${1:-}" == "--smoke" ]]; then
  smoke=1
  shift
fi
seconds="${1:-${FUZZ_SECONDS:-60}}"
shift || true
targets=("$@")
toolchain="${FUZZ_TOOLCHAIN:-nightly}"

skip() {
  # `make test` sets BELLHOP_REQUIRE_TOOLS=1: there a missing tool is a failure, not a skip.
  if [[ $smoke == 1 && "${BELLHOP_REQUIRE_TOOLS:-0}" != 1 ]]; then
    echo "fuzz: SKIPPED: $*"
    exit 0
  fi
  echo "fuzz: FAILED: $*" >&2
  exit 1
}

if ! cargo "+$toolchain" --version >/dev/null 2>&1; then
  skip "no '$toolchain' Rust toolchain on this machine (cargo-fuzz needs one: rustup toolchain install nightly)"
fi
if ! cargo "+$toolchain" fuzz --version >/dev/null 2>&1; then
  if [[ "${FUZZ_INSTALL:-1}" == 0 ]]; then
    skip "cargo-fuzz is not installed and FUZZ_INSTALL=0 (cargo install cargo-fuzz --locked)"
  fi
  echo "fuzz: installing cargo-fuzz from crates.io (once per machine, a few minutes)"
  if ! cargo install cargo-fuzz --locked --quiet; then
    skip "cargo-fuzz could not be installed"
  fi
fi
if [[ ${#targets[@]} == 0 ]]; then
  mapfile -t targets < <(cargo "+$toolchain" fuzz list)
fi

echo "fuzz: building ${targets[*]} with $(cargo "+$toolchain" --version) (the first build takes a few minutes)"
build_log="$(mktemp)"
for t in "${targets[@]}"; do
  if ! cargo "+$toolchain" fuzz build "$t" >"$build_log" 2>&1; then
    tail -n 40 "$build_log"
    rm -f "$build_log"
    echo "fuzz: FAILED to build $t"
    exit 1
  fi
done
rm -f "$build_log"

summary=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log="$(mktemp)"
  echo "fuzz: $t for ${seconds}s"
  if ! cargo "+$toolchain" fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $t FAILED: the input is saved under fuzz/artifacts/$t/ (reproduce: cargo +$toolchain fuzz run $t <file>)"
    rm -f "$log"
    exit 1
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  cov="$(grep -E '^#[0-9]+' "$log" | tail -n 1 | sed -n 's/.*cov: \([0-9]*\).*/\1/p')"
  corpus="$(find "fuzz/corpus/$t" -type f | wc -l)"
  line="$t: ${runs:-?} executions in ${seconds}s, coverage ${cov:-?} edges, corpus ${corpus} inputs, no crash"
  echo "fuzz: $line"
  summary+=("$line")
  rm -f "$log"
done
echo "fuzz: all targets passed:"
printf '  %s\n' "${summary[@]}"
