#!/usr/bin/env bash
# Benchmark (not a test): memory per MCP session. A release `gatehouse serve` as a gateway in front
# of one HTTP upstream (a constant nginx answer with a session id), and one serving the guarded
# demo MCP server; each with the embedded authorization server for its token. N sessions
# (default 10k) are opened with `initialize`, 16 at a time, with one client_credentials token,
# and the RSS is read before and after. The session caps (issue 20) are raised to N for the run
# when the binary has them (this measures memory, not caps). Last line:
#   gateway_idle_mib=X gateway_kib_per_session=Y guard_demo_kib_per_session=Z
#   SESSIONS=10000 bench/sessions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/gatehouse/target}"
N="${SESSIONS:-10000}"
scripts/setup >/dev/null
command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }
# GATEHOUSE_BIN: measure that binary (e.g. an earlier build) instead of building this tree.
if [ -z "${GATEHOUSE_BIN:-}" ]; then cargo build --release --locked -p gatehouse --bin gatehouse >&2; fi
bin="${GATEHOUSE_BIN:-$CARGO_TARGET_DIR/release/gatehouse}"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; return 1; }
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; nginx -c "$work/nginx.conf" -p "$work" -s stop 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
ST=$(free_port); GW=$(free_port); DM=$(free_port)

cat > "$work/nginx.conf" <<CONF
worker_processes 1;
error_log $work/nginx-error.log;
pid $work/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$ST;
    location / {
      default_type application/json;
      add_header Mcp-Session-Id static-session always;
      return 200 '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"static","version":"1"}}}';
    }
  }
}
CONF
nginx -c "$work/nginx.conf" -p "$work"
wait_port "$ST"

start() { # NAME PORT RESOURCE_PATH EXTRA_YAML -> S_PID S_URL S_TOKEN
  local dir="$work/$1"; mkdir -p "$dir"
  local db="sqlite://$dir/as.db"
  printf 'listen: 127.0.0.1:%s\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: %s\n%s' "$2" "$db" "$4" > "$dir/gatehouse.yaml"
  printf 'limits:\n  sessions_per_subject: %s\n  sessions_total: %s\n' "$N" "$((N + 1))" > "$dir/limits.yaml"
  cat "$dir/gatehouse.yaml" "$dir/limits.yaml" > "$dir/with-limits.yaml"
  if "$bin" config check "$dir/with-limits.yaml" >/dev/null 2>&1; then mv "$dir/with-limits.yaml" "$dir/gatehouse.yaml"; fi
  local creds cid csec
  creds=$("$bin" admin --db "$db" clients add --name sessions --confidential --grant client_credentials --scope "mcp:basic")
  cid=$(sed -n 's/^client_id: *//p' <<<"$creds"); csec=$(sed -n 's/^client_secret: *//p' <<<"$creds")
  GATEHOUSE_LOG=warn "$bin" serve --config "$dir/gatehouse.yaml" >/dev/null 2>&1 &
  S_PID=$!; pids+=($S_PID)
  wait_port "$2"
  S_URL="http://127.0.0.1:$2$3"
  S_TOKEN=$(curl -fsS -u "$cid:$csec" -d grant_type=client_credentials -d scope=mcp:basic --data-urlencode "resource=$S_URL" "http://127.0.0.1:$2/token" | python3 -c 'import json,sys;print(json.load(sys.stdin)["access_token"])')
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# Private memory alone: the rest of the RSS is the executable's code paged in from the file
# (shared, dropped under pressure).
anon_kib() { awk '/RssAnon/ {print $2}' "/proc/$1/status"; }
open_sessions() { # URL TOKEN N -> how many initialize answers carried a session id
  python3 - "$1" "$2" "$3" <<'PY'
import concurrent.futures, json, sys, urllib.request
url, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "sessions", "version": "1"}}}).encode()
def one(_):
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return 1 if r.headers.get("mcp-session-id") else 0
    except Exception:
        return 0
with concurrent.futures.ThreadPoolExecutor(16) as ex:
    print(sum(ex.map(one, range(n))))
PY
}

start gateway "$GW" /servers/static/mcp "gateway:
  upstreams:
    - name: static
      url: http://127.0.0.1:$ST/mcp
"
gw_pid=$S_PID; gw_url=$S_URL; gw_token=$S_TOKEN
start demo "$DM" /mcp ""
dm_pid=$S_PID; dm_url=$S_URL; dm_token=$S_TOKEN
sleep 1
gw_idle=$(rss_kib "$gw_pid"); dm_idle=$(rss_kib "$dm_pid"); gw_idle_anon=$(anon_kib "$gw_pid")
gw_opened=$(open_sessions "$gw_url" "$gw_token" "$N"); sleep 1; gw_after=$(rss_kib "$gw_pid")
dm_opened=$(open_sessions "$dm_url" "$dm_token" "$N"); sleep 1; dm_after=$(rss_kib "$dm_pid")
echo "{\"sessions\":$N,\"gateway\":{\"opened\":$gw_opened,\"idle_kib\":$gw_idle,\"idle_anon_kib\":$gw_idle_anon,\"after_kib\":$gw_after},\"guard_demo\":{\"opened\":$dm_opened,\"idle_kib\":$dm_idle,\"after_kib\":$dm_after}}"
python3 - "$gw_opened" "$gw_idle" "$gw_after" "$dm_opened" "$dm_after" "$dm_idle" <<'PY'
import sys
gn, gi, ga, dn, da, di = (int(a) for a in sys.argv[1:])
print(f"gateway_idle_mib={gi/1024:.1f} gateway_kib_per_session={(ga-gi)/max(gn,1):.1f} guard_demo_kib_per_session={(da-di)/max(dn,1):.1f}")
PY
