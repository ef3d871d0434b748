#!/usr/bin/env bash
# Benchmark (not a test): how fast a revocation reaches every replica (issue 16). Three release
# `gatehouse serve` replicas run examples/replicas/gatehouse.yaml unchanged behind nginx
# (round-robin) on a fresh PostgreSQL database and Redis. For each of REVOCATIONS (default 50)
# machine clients with a live token, `gatehouse admin revoke --client` runs; the clock starts
# when it returns and stops when the last replica answers the token with 401. Then the token
# endpoint's throughput through nginx with one replica behind it and with three (wrk,
# client_credentials, PostgreSQL). Last line:
#   revocation_p50_ms=X revocation_p99_ms=Y
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/gatehouse/target}"
N="${REVOCATIONS:-50}"
DURATION="${DURATION:-10s}"
scripts/setup >/dev/null
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
if [ -z "${GATEHOUSE_BIN:-}" ]; then cargo build --release --locked -p gatehouse --bin gatehouse >&2; fi
bin="${GATEHOUSE_BIN:-$CARGO_TARGET_DIR/release/gatehouse}"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; return 1; }
work=$(mktemp -d)
db="gatehouse_bench_rev_$$"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  for c in "$work"/nginx-*.conf; do [ -f "$c" ] && "$nginx_bin" -c "$c" -p "$work" -s stop 2>/dev/null; done
  wait 2>/dev/null
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db" >/dev/null
mkdir -p "$work/logs"

# nginx NAME PORT BACKEND_PORTS...: round-robin, no affinity.
nginx_up() {
  local name=$1 port=$2; shift 2
  local servers=""
  for p in "$@"; do servers+="server 127.0.0.1:$p;"; done
  cat > "$work/nginx-$name.conf" <<CONF
worker_processes 1;
error_log $work/logs/error-$name.log;
pid $work/nginx-$name.pid;
events { worker_connections 4096; }
http {
  access_log off;
  upstream replicas { $servers keepalive 64; }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Host \$http_host;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
CONF
  "$nginx_bin" -c "$work/nginx-$name.conf" -p "$work"
  wait_port "$port"
}

LB=$(free_port); LB1=$(free_port)
export GATEHOUSE_DATABASE="postgres://postgres@127.0.0.1:5432/$db"
export GATEHOUSE_REDIS_URL="redis://127.0.0.1:6379"
export GATEHOUSE_PUBLIC_URL="http://127.0.0.1:$LB"
# Never contacted: a refused token stops at the guard, an accepted one at the unknown session.
export GATEHOUSE_UPSTREAM_URL="http://127.0.0.1:9/mcp"
ports=()
for _ in 1 2 3; do
  p=$(free_port); ports+=("$p")
  GATEHOUSE_LOG=warn "$bin" serve --config examples/replicas/gatehouse.yaml --listen "127.0.0.1:$p" >/dev/null 2>&1 &
  pids+=($!)
done
for p in "${ports[@]}"; do wait_port "$p"; done
nginx_up three "$LB" "${ports[@]}"
nginx_up one "$LB1" "${ports[0]}"

{
python3 - "$bin" "$GATEHOUSE_DATABASE" "$GATEHOUSE_PUBLIC_URL" "$N" "${ports[@]}" <<'PY'
import concurrent.futures, json, statistics, subprocess, sys, time, urllib.error, urllib.parse, urllib.request, base64
bin, db, public, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ports = sys.argv[5:]
resource = public + "/servers/echo/mcp"

def add_client(name):
    out = subprocess.run([bin, "admin", "--db", db, "clients", "add", "--name", name, "--confidential",
                          "--grant", "client_credentials", "--scope", "mcp:basic"], check=True, capture_output=True, text=True).stdout
    get = lambda k: next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith(k))
    return get("client_id:"), get("client_secret:")

def token(cid, secret):
    body = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": "mcp:basic", "resource": resource}).encode()
    req = urllib.request.Request(public + "/token", data=body, headers={
        "Authorization": "Basic " + base64.b64encode(f"{cid}:{secret}".encode()).decode()})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)["access_token"]

def status(port, tok):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/servers/echo/mcp", method="POST",
        data=b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
        headers={"Authorization": "Bearer " + tok, "Content-Type": "application/json",
                 "Accept": "application/json, text/event-stream", "Mcp-Session-Id": "no-such-session"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code

clients = []
for i in range(n):
    cid, secret = add_client(f"rev{i}")
    clients.append((cid, secret, token(cid, secret)))
# Let the clients' first uses settle, then check every replica accepts every token.
for cid, _, tok in clients:
    for p in ports:
        s = status(p, tok)
        assert s != 401, f"replica {p} refused a live token ({s})"

def until_refused(port, tok, t0):
    while True:
        if status(port, tok) == 401:
            return time.monotonic() - t0
        if time.monotonic() - t0 > 10:
            return float("inf")

lat = []
with concurrent.futures.ThreadPoolExecutor(len(ports)) as pool:
    for cid, _, tok in clients:
        subprocess.run([bin, "admin", "--db", db, "revoke", "--client", cid], check=True, capture_output=True)
        t0 = time.monotonic()
        lat.append(max(pool.map(lambda p: until_refused(p, tok, t0), ports)) * 1000)
lat.sort()
p = lambda q: lat[min(len(lat) - 1, int(round(q * (len(lat) - 1))))]
print(json.dumps({"replicas": len(ports), "revocations": n, "p50_ms": round(p(0.5), 1),
                  "p99_ms": round(p(0.99), 1), "max_ms": round(lat[-1], 1)}))
PY
} > "$work/revocation.json"
cat "$work/revocation.json"

# Token endpoint throughput on PostgreSQL: nginx with one replica behind it, then three.
creds=$("$bin" admin --db "$GATEHOUSE_DATABASE" clients add --name throughput --confidential --grant client_credentials --scope mcp:basic)
cid=$(sed -n 's/^client_id: *//p' <<<"$creds"); csec=$(sed -n 's/^client_secret: *//p' <<<"$creds")
auth=$(printf '%s:%s' "$cid" "$csec" | base64 -w0)
res=$(python3 -c 'import sys,urllib.parse;print(urllib.parse.quote(sys.argv[1],safe=""))' "$GATEHOUSE_PUBLIC_URL/servers/echo/mcp")
cat > "$work/token.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic $auth"
wrk.body = "grant_type=client_credentials&scope=mcp%3Abasic&resource=$res"
LUA
rps() { # PORT -> requests per second (non-2xx answers make the run invalid)
  local out
  out=$(wrk -t2 -c32 -d"$DURATION" -s "$work/token.lua" "http://127.0.0.1:$1/token")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx answers: $out" >&2; exit 1; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
one=$(rps "$LB1")
three=$(rps "$LB")
python3 - "$one" "$three" <<'PY'
import json, sys
one, three = float(sys.argv[1]), float(sys.argv[2])
print(json.dumps({"token_rps_1_replica": round(one), "token_rps_3_replicas": round(three), "ratio_3_to_1": round(three / one, 2)}))
PY
python3 - "$work/revocation.json" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(f"revocation_p50_ms={r['p50_ms']} revocation_p99_ms={r['p99_ms']}")
PY
