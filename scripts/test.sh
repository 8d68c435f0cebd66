#!/usr/bin/env bash
# Runs every test of Muster: formatting, lints, unit and integration tests.
# It installs what the tests need when it is missing (Debian packages, with apt-get, as root).
set -euo pipefail
cd "$(dirname "$0")/.."

# The tests run real programs: bash and python3 for scripts, procps for `kill`.
missing=()
command -v bash >/dev/null 2>&1 || missing+=(bash)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v kill >/dev/null 2>&1 || missing+=(procps)
command -v date >/dev/null 2>&1 || missing+=(coreutils)
# openssl s_client proves the comms port refuses TLS 1.2.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# curl makes the seed blog's raw REST calls.
command -v curl >/dev/null 2>&1 || missing+=(curl)
# prlimit lowers a running agent's or server's descriptor limit (the flood tests).
command -v prlimit >/dev/null 2>&1 || missing+=(util-linux)
# The SSH worker tests start their own OpenSSH sshd (/usr/sbin, not always on PATH) and make keys.
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
# Several nodes behind one comms address: nginx's stream module balances the agents' connections.
[ -x /usr/sbin/nginx ] || missing+=(nginx-core)
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
# The Kubernetes stand-in's wire format is checked with the real kubectl.
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "The tests need: ${missing[*]}. Install them, or run this script as root." >&2
    exit 1
  fi
  echo "Installing ${missing[*]}…"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The store's tests (and a server smoke test) run on PostgreSQL as well as SQLite: a cluster on this
# machine, installed and started when needed, with a test role (see scripts/test-postgres.sh).
if [ -z "${MUSTER_TEST_POSTGRES_URL:-}" ]; then
  MUSTER_TEST_POSTGRES_URL=$(scripts/test-postgres.sh)
fi
export MUSTER_TEST_POSTGRES_URL

if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "rustfmt is not installed: skipping the format check" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --all-targets --locked -- -D warnings
else
  echo "clippy is not installed: skipping lints" >&2
fi
cargo test --workspace --locked
# Sharing, permissions, runbooks with child runs, the blog's end-to-end tests and a dynamic pool's
# burst again, each on three nodes on one PostgreSQL database (the harness's cluster mode: requests
# go to each node in turn).
MUSTER_TEST_NODES=3 cargo test --locked -p muster --test it -- sharing:: permissions:: runbooks:: blog:: dynamic::a_process_pool
# The OpenAPI document tells the truth: a bounded schemathesis run against the debug binary that
# `cargo test` built (installs schemathesis into target/schemathesis-venv when missing).
./scripts/schemathesis.sh
