#!/usr/bin/env bash
# Checks that the OpenAPI document tells the truth: a bounded schemathesis run against a real
# `muster server` (the debug binary `cargo test` built), failing on any failure.
#
# It installs schemathesis (pinned) into a virtualenv under target/ when missing, starts the server
# on loopback with a fresh data directory and bootstrap key on free ports, without its built-in
# worker (the fuzzed scripts of POST …/tasks and …/runbookRuns must never run: they stay Queued),
# and always stops it.
#
# Environment: MUSTER_BIN (default target/debug/muster), SCHEMATHESIS_EXAMPLES (per operation,
# default 10), SCHEMATHESIS_SEED (default 1), SCHEMATHESIS_WORKERS (default 1: with two, Hypothesis
# parsing sources in two threads at once can hit a CPython 3.11 bug, "AST constructor recursion
# depth mismatch", which fails the run now and then).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.32.5
VENV=target/schemathesis-venv
BIN=${MUSTER_BIN:-target/debug/muster}
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-10}
SEED=${SCHEMATHESIS_SEED:-1}
WORKERS=${SCHEMATHESIS_WORKERS:-1}

if [ ! -x "$BIN" ]; then
  echo "$BIN is missing: build it first (cargo build -p muster)" >&2
  exit 1
fi

st="$VENV/bin/schemathesis"
if ! "$st" --version 2>/dev/null | grep -qF "$VERSION"; then
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "schemathesis needs python3-venv: install it, or run this script as root." >&2
      exit 1
    fi
    echo "Installing python3-venv…"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  echo "Installing schemathesis $VERSION into $VENV…"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$VERSION"
fi

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

work=$(mktemp -d "${TMPDIR:-/tmp}/muster-schemathesis.XXXXXX")
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

key="API-$(python3 -c 'import secrets, string; print("".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(32)))')"
port=$(free_port)
comms=$(free_port)
while [ "$comms" = "$port" ]; do comms=$(free_port); done
base="http://127.0.0.1:$port"

MUSTER_BOOTSTRAP_API_KEY="$key" "$BIN" server --data-dir "$work/data" \
  --listen "127.0.0.1:$port" --comms-listen "127.0.0.1:$comms" --no-builtin-worker \
  >"$work/server.log" 2>&1 &
server_pid=$!

for _ in $(seq 1 100); do
  if curl -fsS "$base/api" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "muster server did not start:" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
  sleep 0.1
done

# Hypothesis keeps its caches (never examples: the configuration turns its database off) under
# target/, not in the working tree.
export HYPOTHESIS_STORAGE_DIRECTORY=target/hypothesis
started=$(date +%s)
status=0
"$st" --config-file scripts/schemathesis.toml --no-color run "$base/api/openapi.json" \
  --header "X-Octopus-ApiKey: $key" \
  --max-examples "$EXAMPLES" --seed "$SEED" --workers "$WORKERS" \
  --exclude-checks ignored_auth || status=$?
echo "schemathesis took $(($(date +%s) - started)) s"
if [ "$status" -ne 0 ]; then
  echo "--- the server's log ---" >&2
  tail -n 50 "$work/server.log" >&2
fi
exit "$status"
