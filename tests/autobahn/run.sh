#!/usr/bin/env bash
# WebSocket conformance: the Autobahn testsuite's fuzzing client against a Bellhop node whose
# sessions echo (crates/bellhop-gateway/examples/autobahn_echo.rs). See docs/AUTOBAHN.md.
#
#   tests/autobahn/run.sh [--optional] [--doc docs/AUTOBAHN.md]
#
# Needs Python 2.7 (the suite's last release runs on nothing newer): $AUTOBAHN_PYTHON, else
# python2.7 on PATH, else pyenv's 2.7.x. wstest is installed once into a virtualenv
# ($AUTOBAHN_VENV, default ~/.cache/bellhop/autobahn-venv) from tests/autobahn/requirements.txt
# (PyPI, about two minutes the first time). With --optional (what `make test` uses), a missing
# Python 2.7 or a failed install prints why and exits 0; a failed case always fails the run.
# --doc rewrites the results section of that Markdown file with this run's.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tests/autobahn

optional=0
doc=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --optional) optional=1 ;;
    --doc) doc="$2"; shift ;;
    *) echo "usage: $0 [--optional] [--doc FILE]" >&2; exit 2 ;;
  esac
  shift
done

skip() {
  # `make test` sets BELLHOP_REQUIRE_TOOLS=1: there a missing tool is a failure, not a skip.
  if [[ $optional == 1 && "${BELLHOP_REQUIRE_TOOLS:-0}" != 1 ]]; then
    echo "autobahn: SKIPPED: $*"
    exit 0
  fi
  echo "autobahn: FAILED: $*" >&2
  exit 1
}

is_py27() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' >/dev/null 2>&1; }

# 1. Python 2.7 and a virtualenv with wstest.
venv="${AUTOBAHN_VENV:-$HOME/.cache/bellhop/autobahn-venv}"
wstest="$venv/bin/wstest"
stamp="$venv/.bellhop-requirements"
if ! [[ -x "$wstest" && -f "$stamp" ]] || ! cmp -s "$stamp" "$here/requirements.txt"; then
  py=
  for candidate in "${AUTOBAHN_PYTHON:-}" python2.7 python2 "$HOME"/.pyenv/versions/2.7*/bin/python; do
    if [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null 2>&1 && is_py27 "$candidate"; then
      py="$(command -v "$candidate")"
      break
    fi
  done
  [[ -n "$py" ]] || skip "no Python 2.7 found (set AUTOBAHN_PYTHON; the Autobahn testsuite needs 2.7)"
  echo "autobahn: creating $venv with $py and installing wstest (once, about two minutes)"
  # virtualenv itself goes into a folder of its own beside the venv, not into the user's site.
  tools="$(dirname "$venv")/virtualenv-py27"
  if ! PYTHONPATH="$tools" "$py" -m virtualenv --version >/dev/null 2>&1; then
    "$py" -m pip install --quiet --disable-pip-version-check --target "$tools" 'virtualenv<20.22' \
      >/dev/null 2>&1 || skip "could not install virtualenv for $py"
  fi
  rm -rf "$venv"
  PYTHONPATH="$tools" "$py" -m virtualenv --quiet "$venv" >/dev/null 2>&1 \
    || skip "could not create a virtualenv with $py"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-warn-script-location \
    -r "$here/requirements.txt" >"$venv.install.log" 2>&1 \
    || { tail -n 20 "$venv.install.log"; skip "could not install wstest (log: $venv.install.log)"; }
  cp "$here/requirements.txt" "$stamp"
fi

# 2. The echo node: the product's gateway with echoing sessions.
echo "autobahn: building the echo node (bellhop-gateway, feature autobahn)"
cargo build --quiet -p bellhop-gateway --features autobahn --example autobahn_echo
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
work="$(mktemp -d)"
node_pid=
cleanup() {
  if [[ -n "$node_pid" ]]; then kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
RUST_LOG=warn "$target_dir/debug/examples/autobahn_echo" >"$work/url" 2>"$work/node.log" &
node_pid=$!
for _ in $(seq 100); do
  [[ -s "$work/url" ]] && break
  kill -0 "$node_pid" 2>/dev/null || { cat "$work/node.log"; echo "autobahn: the echo node exited"; exit 1; }
  sleep 0.1
done
url="$(head -n 1 "$work/url")"
[[ "$url" == ws://* ]] || { cat "$work/node.log"; echo "autobahn: the echo node printed no URL"; exit 1; }
echo "autobahn: echo node at ${url%%\?*} (token in the query string)"

# 3. Every case of the suite against it.
cat >"$work/spec.json" <<EOF
{
  "outdir": "$work/reports",
  "servers": [{"agent": "bellhop", "url": "$url"}],
  "cases": ["*"],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
EOF
start=$(date +%s)
if ! (cd "$work" && timeout 900 "$wstest" -m fuzzingclient -s spec.json >"$work/wstest.log" 2>&1); then
  tail -n 30 "$work/wstest.log"
  echo "autobahn: wstest did not finish (exit above)"
  exit 1
fi
seconds=$(( $(date +%s) - start ))
kill -0 "$node_pid" 2>/dev/null || { cat "$work/node.log"; echo "autobahn: the echo node died during the run"; exit 1; }

# 4. Judge the report.
args=("$work/reports/index.json" --commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  --date "$(date -u +%Y-%m-%d)" --seconds "$seconds")
[[ -n "$doc" ]] && args+=(--doc "$doc")
"$venv/bin/python" "$here/summarize.py" "${args[@]}"
