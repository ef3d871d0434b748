#!/usr/bin/env bash
# Benchmark (not a test): token-endpoint throughput for code exchange and refresh rotation,
# Gatehouse (release build, `gatehouse dev`, SQLite) against oidc-provider (npm, in-memory) on
# this machine in the same run. Last line: `code_exchange/oidc-provider=R refresh/oidc-provider=R`.
#   N=40000 DURATION=2 CONNECTIONS=16 bench/token-endpoint.sh   (load generator: wrk, installed if missing)
# GATEHOUSE_BIN: measure that binary (e.g. an earlier build, to compare two in one session).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/gatehouse/target}"
scripts/setup >/dev/null
(cd bench && { [ -d node_modules/autocannon ] || npm ci --no-audit --no-fund --loglevel=error; })
# wrk (C, epoll) is the load generator: on 2 cores a Node generator takes a core the servers need.
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
if [ -z "${GATEHOUSE_BIN:-}" ]; then cargo build --release --locked -p gatehouse >&2; fi
bin="${GATEHOUSE_BIN:-$CARGO_TARGET_DIR/release/gatehouse}"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
GH_PORT=$(free_port); OP_PORT=$(free_port)
data=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$data"' EXIT
export GATEHOUSE_DEV_USER=bench GATEHOUSE_DEV_PASSWORD=bench-password GATEHOUSE_LOG=warn
"$bin" dev --listen "127.0.0.1:$GH_PORT" --data-dir "$data" >/dev/null &
pids+=($!)
node bench/oidc-provider-bench.mjs "$OP_PORT" >/dev/null 2>&1 &
pids+=($!)
for p in "$GH_PORT" "$OP_PORT"; do
  for _ in $(seq 1 100); do curl -fs -o /dev/null "http://127.0.0.1:$p/.well-known/openid-configuration" && break; sleep 0.1; done
done
node bench/token-endpoint.mjs "http://127.0.0.1:$GH_PORT" "http://127.0.0.1:$OP_PORT"
