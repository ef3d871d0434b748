#!/usr/bin/env bash
# Benchmark (not a test): MCP tools/call through (a) the upstream directly, (b) nginx as a plain
# reverse proxy, (c) the Gatehouse gateway with JWT validation, Cedar policy, rate limiting and the audit log
# on — all on this machine in one run, with wrk. The upstream is @modelcontextprotocol/
# server-everything (Streamable HTTP). Prints throughput and p50/p99 per target, paced runs at
# about 1k requests/s for the added p99 (over server-everything, and over a constant nginx answer
# that isolates the gateway's own latency: the last line's figure; and a bare axum+reqwest proxy
# over that same upstream, the floor of the gateway's stack), the cost of DPoP proof validation
# per call (line "dpop: …"), the gateway's RSS idle and loaded, and last:
#   gateway/direct=R gateway/nginx=R p99_added_ms=X
#   DURATION=5 PACED_DURATION=10 CONNECTIONS=16 bench/gateway.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/gatehouse/target}"
DURATION="${DURATION:-5}"; CONNECTIONS="${CONNECTIONS:-16}"
# Paced runs last longer: their p99 is the 100th-worst of 10k calls rather than of 5k.
PACED_DURATION="${PACED_DURATION:-10}"
scripts/setup >/dev/null
for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null; }
done
cargo build --release --locked -p gatehouse --bin gatehouse --example bare_proxy >&2
bin="$CARGO_TARGET_DIR/release/gatehouse"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
UP=$(free_port); NG=$(free_port); GW=$(free_port); ST=$(free_port); NS=$(free_port); BP=$(free_port)
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; nginx -c "$work/nginx.conf" -p "$work" -s stop 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; return 1; }

# (a) the upstream
PORT=$UP node interop/node_modules/@modelcontextprotocol/server-everything/dist/index.js streamableHttp >/dev/null 2>&1 &
pids+=($!)
wait_port "$UP"

# (b) nginx, a plain streaming reverse proxy with upstream keep-alive
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
error_log $work/nginx-error.log;
pid $work/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  upstream mcp { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$NG;
    location / {
      proxy_pass http://mcp;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
  upstream st { server 127.0.0.1:$ST; keepalive 64; }
  server {
    listen 127.0.0.1:$NS;
    location / {
      proxy_pass http://st;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
  # A constant MCP answer with a session id: an upstream with no jitter of its own, to isolate
  # the latency a proxy adds (the Node upstream's GC pauses dominate its p99).
  server {
    listen 127.0.0.1:$ST;
    location / {
      default_type application/json;
      add_header Mcp-Session-Id static-session always;
      return 200 '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"Echo: bench"}]}}';
    }
  }
}
CONF
nginx -c "$work/nginx.conf" -p "$work"
wait_port "$NG"

# The floor: a bare proxy on the gateway's own stack (axum + reqwest, nothing else) in front of
# the constant upstream; what it adds, no gateway on this stack and machine can add less.
"$CARGO_TARGET_DIR/release/examples/bare_proxy" "127.0.0.1:$BP" "http://127.0.0.1:$ST/mcp" >/dev/null 2>&1 &
pids+=($!)
wait_port "$BP"

# (c) the gateway: embedded authorization server, JWT validation, Cedar policy (with a
# compiled scope rule and a rule over arguments), rate limit, audit log. With BASELINE_BIN (a
# gatehouse binary built from an earlier commit), the same gateway is started from it too, on its
# own port and data, and measured in the same run, interleaved with the current one.
cat > "$work/policy.cedar" <<'CEDAR'
@id("bench callers")
permit(principal, action, resource) when { principal.scopes.contains("mcp:basic") };
@id("no environment dumps")
forbid(principal, action == Action::"tools/call", resource == Tool::"everything/get-env");
@id("no secrets through echo")
forbid(principal, action == Action::"tools/call", resource == Tool::"everything/echo")
when { resource.hasTag("message") && resource.getTag("message") like "*password*" };
CEDAR
start_gateway() { # BIN PORT NAME -> G_PID G_URL G_TOKEN G_ST_URL G_ST_TOKEN G_AUDIT
  local gbin="$1" port="$2" name="$3" dir="$work/$3"
  mkdir -p "$dir"; cp "$work/policy.cedar" "$dir/policy.cedar"
  local db="sqlite://$dir/as.db"
  cat > "$dir/gatehouse.yaml" <<CONF
listen: 127.0.0.1:$port
guard:
  required_scopes: [mcp:basic]
authorization_server:
  database: $db
gateway:
  audit_log: $dir/audit.jsonl
  policy: {file: policy.cedar}
  rate_limit: {per_minute: 100000000, burst: 1000000}
  upstreams:
    - name: everything
      url: http://127.0.0.1:$UP/mcp
      tool_scopes: {get-sum: [mcp:math]}
    - name: static
      url: http://127.0.0.1:$ST/mcp
CONF
  local creds cid csec
  creds=$("$gbin" admin --db "$db" clients add --name bench --confidential --grant client_credentials --scope mcp:basic)
  cid=$(sed -n 's/^client_id: *//p' <<<"$creds"); csec=$(sed -n 's/^client_secret: *//p' <<<"$creds")
  GATEHOUSE_LOG=warn "$gbin" serve --config "$dir/gatehouse.yaml" >/dev/null 2>&1 &
  G_PID=$!; pids+=($G_PID)
  wait_port "$port"
  G_URL="http://127.0.0.1:$port/servers/everything/mcp"
  G_TOKEN=$(curl -fsS -u "$cid:$csec" -d grant_type=client_credentials -d scope=mcp:basic --data-urlencode "resource=$G_URL" "http://127.0.0.1:$port/token" | python3 -c 'import json,sys;print(json.load(sys.stdin)["access_token"])')
  G_ST_URL="http://127.0.0.1:$port/servers/static/mcp"
  G_ST_TOKEN=$(curl -fsS -u "$cid:$csec" -d grant_type=client_credentials -d scope=mcp:basic --data-urlencode "resource=$G_ST_URL" "http://127.0.0.1:$port/token" | python3 -c 'import json,sys;print(json.load(sys.stdin)["access_token"])')
  G_AUDIT="$dir/audit.jsonl"
  G_CID=$cid; G_CSEC=$csec; G_PORT=$port
}
start_gateway "$bin" "$GW" current
gwpid=$G_PID; gw_url=$G_URL; token=$G_TOKEN; st_url=$G_ST_URL; st_token=$G_ST_TOKEN; audit_log=$G_AUDIT
# A DPoP-bound token for the constant upstream's route (issue 17): the proof at /token by a key
# of this run; each call then carries a fresh proof by that key.
dpop_key="$work/dpop.jwk"
node bench/dpop-proofs.mjs key "$dpop_key"
dpop_token=$(curl -fsS -u "$G_CID:$G_CSEC" -H "DPoP: $(node bench/dpop-proofs.mjs proof "$dpop_key" "http://127.0.0.1:$G_PORT/token")" \
  -d grant_type=client_credentials -d scope=mcp:basic --data-urlencode "resource=$st_url" "http://127.0.0.1:$G_PORT/token" \
  | python3 -c 'import json,sys;v=json.load(sys.stdin);assert v["token_type"]=="DPoP",v;print(v["access_token"])')
if [ -n "${BASELINE_BIN:-}" ]; then
  GWB=$(free_port)
  start_gateway "$BASELINE_BIN" "$GWB" baseline
  b_pid=$G_PID; b_url=$G_URL; b_token=$G_TOKEN; b_st_url=$G_ST_URL; b_st_token=$G_ST_TOKEN
fi
rss() { awk '/VmRSS/ {print $2}' "/proc/$gwpid/status"; }
idle_rss=$(rss)

session() { # URL [TOKEN [DPOP_KEY]] -> an initialized MCP session id
  local auth=()
  if [ -n "${3:-}" ]; then auth=(-H "Authorization: DPoP $2"); elif [ -n "${2:-}" ]; then auth=(-H "Authorization: Bearer $2"); fi
  # With a key, each request carries a fresh proof (a harmless header otherwise).
  proof_header() { if [ -n "${3:-}" ]; then printf 'DPoP: %s' "$(node bench/dpop-proofs.mjs proof "$3" "$1" "$2")"; else printf 'X-Bench: 1'; fi; }
  local sid
  sid=$(curl -fsS -D - -o /dev/null "${auth[@]}" -H "$(proof_header "$@")" -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
    -d '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}' "$1" \
    | tr -d '\r' | sed -n 's/^[Mm]cp-[Ss]ession-[Ii]d: //p')
  curl -fsS -o /dev/null "${auth[@]}" -H "$(proof_header "$@")" -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
    -H "Mcp-Session-Id: $sid" -H 'MCP-Protocol-Version: 2025-11-25' -d '{"jsonrpc":"2.0","method":"notifications/initialized"}' "$1"
  echo "$sid"
}
run() { # NAME URL TOKEN [RATE CONNS]
  local sid; sid=$(session "$2" "$3")
  local secs="$DURATION"; [ "${4:-0}" -gt 0 ] && secs="$PACED_DURATION"
  SESSION="$sid" TOKEN="$3" RATE="${4:-0}" wrk -t1 -c"${5:-$CONNECTIONS}" -d"${secs}s" --timeout 10s \
    -s bench/mcp-call.lua "$2" | tail -1
}
# Paced: 1k requests/s, evenly spaced, over 10 connections, for the latency added. First over the
# constant upstream while the Node upstream is idle (it has served nothing yet), so nothing it
# does after a load run shares the two cores with these.
static_paced=$(run static-paced "http://127.0.0.1:$ST/mcp" "" 1000 10)
nginx_static_paced=$(run nginx-static-paced "http://127.0.0.1:$NS/mcp" "" 1000 10)
gateway_static_paced=$(run gateway-static-paced "$st_url" "$st_token" 1000 10)
bare_static_paced=$(run bare-static-paced "http://127.0.0.1:$BP/mcp" "" 1000 10)
direct=$(run direct "http://127.0.0.1:$UP/mcp" "")
proxy=$(run nginx "http://127.0.0.1:$NG/mcp" "")
gateway=$(run gateway "$gw_url" "$token")
loaded_rss=$(rss)
direct_paced=$(run direct-paced "http://127.0.0.1:$UP/mcp" "" 1000 10)
gateway_paced=$(run gateway-paced "$gw_url" "$token" 1000 10)
echo "{\"target\":\"direct\",\"result\":$direct}"
echo "{\"target\":\"nginx\",\"result\":$proxy}"
echo "{\"target\":\"gateway\",\"result\":$gateway}"
echo "{\"target\":\"direct@1k\",\"result\":$direct_paced}"
echo "{\"target\":\"gateway@1k\",\"result\":$gateway_paced}"
echo "{\"target\":\"static@1k\",\"result\":$static_paced}"
echo "{\"target\":\"nginx-static@1k\",\"result\":$nginx_static_paced}"
echo "{\"target\":\"gateway-static@1k\",\"result\":$gateway_static_paced}"
echo "{\"target\":\"bare-proxy-static@1k\",\"result\":$bare_static_paced}"
# DPoP (issue 17): the same calls over the constant upstream with a DPoP-bound token and a fresh
# proof each (made ahead of the run by node, each used once), against the same token as Bearer;
# ABBA rounds; the gateway's CPU time per call is the figure that isolates proof validation (a
# signature check, a thumbprint, the replay cache). Short runs: the guard remembers every proof
# for its 65 s window (at most 100,000 per process).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
cpu_run() { # NAME URL TOKEN PROOFS RATE SECS -> the run's JSON with cpu_us_per_call added
  local before after out sid
  if [ -n "$4" ]; then sid=$(session "$2" "$3" "$dpop_key"); else sid=$(session "$2" "$3"); fi
  before=$(ticks "$gwpid")
  out=$(SESSION="$sid" TOKEN="$3" PROOFS="$4" RATE="$5" wrk -t1 -c"$([ "$5" -gt 0 ] && echo 10 || echo "$CONNECTIONS")" -d"${6}s" --timeout 10s -s bench/mcp-call.lua "$2" | tail -1)
  after=$(ticks "$gwpid")
  python3 -c 'import json,sys,os; r=json.loads(sys.argv[1]); t=int(sys.argv[3])-int(sys.argv[2]); hz=os.sysconf("SC_CLK_TCK"); r["cpu_us_per_call"]=t*1e6/hz/max(r["requests"],1); print(json.dumps(r))' "$out" "$before" "$after"
}
DPOP_SECS="${DPOP_SECS:-3}"
dpop_runs=(); bearer_runs=()
for i in 1 2; do
  proofs="$work/proofs-$i.txt"
  node bench/dpop-proofs.mjs many "$dpop_key" "$st_url" "$dpop_token" $((9000 * DPOP_SECS)) > "$proofs"
  if [ "$i" -eq 1 ]; then
    bearer_runs+=("$(cpu_run bearer "$st_url" "$st_token" "" 0 "$DPOP_SECS")")
    dpop_runs+=("$(cpu_run dpop "$st_url" "$dpop_token" "$proofs" 0 "$DPOP_SECS")")
  else
    dpop_runs+=("$(cpu_run dpop "$st_url" "$dpop_token" "$proofs" 0 "$DPOP_SECS")")
    bearer_runs+=("$(cpu_run bearer "$st_url" "$st_token" "" 0 "$DPOP_SECS")")
  fi
done
node bench/dpop-proofs.mjs many "$dpop_key" "$st_url" "$dpop_token" 11000 > "$work/proofs-paced.txt"
dpop_paced=$(cpu_run dpop-paced "$st_url" "$dpop_token" "$work/proofs-paced.txt" 1000 10)
python3 - "${bearer_runs[*]}" "${dpop_runs[*]}" "$gateway_static_paced" "$dpop_paced" <<'PY'
import json, statistics, sys
runs = lambda a: [json.loads(x) for x in a.replace("} {", "}\n{").splitlines() if x.strip()]
b, d = runs(sys.argv[1]), runs(sys.argv[2])
bp, dp = json.loads(sys.argv[3]), json.loads(sys.argv[4])
for name, rs in (("bearer", b), ("dpop", d), ("dpop@1k", [dp])):
    bad = sum(r["non200"] for r in rs)
    if bad:
        print(f"{name}: {bad} answers were not 200", file=sys.stderr)
    print(f"  {name}: " + ", ".join(f"{r['rps']:.0f} req/s p50 {r['p50_ms']:.3f} p99 {r['p99_ms']:.3f} cpu {r['cpu_us_per_call']:.0f} us" for r in rs))
med = lambda rs, k: statistics.median(r[k] for r in rs)
bc, dc = med(b, "cpu_us_per_call"), med(d, "cpu_us_per_call")
print(f"dpop: gateway CPU per call {dc:.0f} us with a proof vs {bc:.0f} us as Bearer: proof validation costs {dc-bc:.0f} us per call "
      f"(dpop/bearer={dc/bc:.2f}); throughput {med(d, 'rps'):.0f} vs {med(b, 'rps'):.0f} req/s; "
      f"at 1k req/s p50 {dp['p50_ms']:.3f} vs {bp['p50_ms']:.3f} ms, p99 {dp['p99_ms']:.3f} vs {bp['p99_ms']:.3f} ms")
PY
echo "{\"gateway_rss_kib\":{\"idle\":$idle_rss,\"loaded\":$loaded_rss},\"audit_records\":$(wc -l <"$audit_log")}"
if [ -n "${BASELINE_BIN:-}" ]; then
  # Current and baseline, alternately (ABBA: the order flips every round, so a drift of the
  # machine or of the Node upstream favours neither), ROUNDS times each: throughput over
  # server-everything, the paced added latency over the constant upstream, and each gateway's
  # CPU time per call (user + system, from /proc), the figure least moved by a noisy machine.
  ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  measured() { # PID NAME URL TOKEN [RATE CONNS] -> the run's JSON with cpu_us_per_call added
    local before after out
    before=$(ticks "$1")
    out=$(run "$2" "$3" "$4" "${5:-0}" "${6:-$CONNECTIONS}")
    after=$(ticks "$1")
    python3 -c 'import json,sys,os; r=json.loads(sys.argv[1]); t=int(sys.argv[3])-int(sys.argv[2]); hz=os.sysconf("SC_CLK_TCK"); r["cpu_us_per_call"]=t*1e6/hz/max(r["requests"],1); print(json.dumps(r))' "$out" "$before" "$after"
  }
  cur_t=(); base_t=(); cur_p=(); base_p=()
  for i in $(seq 1 "${ROUNDS:-4}"); do
    if [ $((i % 2)) -eq 1 ]; then
      cur_t+=("$(measured "$gwpid" gateway "$gw_url" "$token")")
      base_t+=("$(measured "$b_pid" baseline "$b_url" "$b_token")")
      base_p+=("$(measured "$b_pid" baseline-static-paced "$b_st_url" "$b_st_token" 1000 10)")
      cur_p+=("$(measured "$gwpid" gateway-static-paced "$st_url" "$st_token" 1000 10)")
    else
      base_t+=("$(measured "$b_pid" baseline "$b_url" "$b_token")")
      cur_t+=("$(measured "$gwpid" gateway "$gw_url" "$token")")
      cur_p+=("$(measured "$gwpid" gateway-static-paced "$st_url" "$st_token" 1000 10)")
      base_p+=("$(measured "$b_pid" baseline-static-paced "$b_st_url" "$b_st_token" 1000 10)")
    fi
  done
  python3 - "$static_paced" "${cur_t[*]}" "${base_t[*]}" "${cur_p[*]}" "${base_p[*]}" <<'PY'
import json, statistics, sys
sp = json.loads(sys.argv[1])
def runs(a):
    return [json.loads(x) for x in a.replace("} {", "}\n{").splitlines() if x.strip()]
ct, bt, cp, bp = (runs(a) for a in sys.argv[2:])
for name, rs in (("current", ct), ("baseline", bt), ("current@1k", cp), ("baseline@1k", bp)):
    bad = sum(r["non200"] for r in rs)
    if bad:
        print(f"{name}: {bad} answers were not 200", file=sys.stderr)
med = lambda rs, k: statistics.median(r[k] for r in rs)
c_rps, b_rps = med(ct, "rps"), med(bt, "rps")
c_p99, b_p99 = med(cp, "p99_ms") - sp["p99_ms"], med(bp, "p99_ms") - sp["p99_ms"]
c_p50, b_p50 = med(cp, "p50_ms") - sp["p50_ms"], med(bp, "p50_ms") - sp["p50_ms"]
c_cpu, b_cpu = med(ct + cp, "cpu_us_per_call"), med(bt + bp, "cpu_us_per_call")
for name, rs in (("current", ct), ("baseline", bt), ("current@1k", cp), ("baseline@1k", bp)):
    print(f"  {name}: " + ", ".join(f"{r['rps']:.0f} req/s p50 {r['p50_ms']:.3f} p99 {r['p99_ms']:.3f} cpu {r['cpu_us_per_call']:.0f} us" for r in rs))
print(f"baseline in the same run ({len(ct)} rounds, medians): throughput current {c_rps:.0f} req/s, baseline {b_rps:.0f} req/s, current/baseline={c_rps/b_rps:.3f}; "
      f"added over the constant upstream at 1k req/s: p50 {c_p50:.3f} vs {b_p50:.3f} ms, p99 {c_p99:.3f} vs {b_p99:.3f} ms; "
      f"gateway CPU per call {c_cpu:.0f} vs {b_cpu:.0f} us (current/baseline={c_cpu/b_cpu:.3f})")
PY
fi
python3 - "$direct" "$proxy" "$gateway" "$direct_paced" "$gateway_paced" "$static_paced" "$gateway_static_paced" "$nginx_static_paced" "$bare_static_paced" <<'PY'
import json, sys
d, n, g, dp, gp, sp, gsp, nsp, bsp = (json.loads(a) for a in sys.argv[1:])
for name, r in (("direct", d), ("nginx", n), ("gateway", g), ("direct@1k", dp), ("gateway@1k", gp), ("static@1k", sp), ("gateway-static@1k", gsp), ("nginx-static@1k", nsp), ("bare-proxy-static@1k", bsp)):
    if r["non200"]:
        print(f"{name}: {r['non200']} answers were not 200", file=sys.stderr)
print(f"p99 added at 1k req/s: {gp['p99_ms']-dp['p99_ms']:.3f} ms over server-everything (its own jitter included), "
      f"{gsp['p99_ms']-sp['p99_ms']:.3f} ms over the constant upstream; p50 added {gsp['p50_ms']-sp['p50_ms']:.3f} ms; "
      f"nginx adds {nsp['p50_ms']-sp['p50_ms']:.3f} ms p50, {nsp['p99_ms']-sp['p99_ms']:.3f} ms p99 there; "
      f"a bare axum+reqwest proxy (the floor of this stack) adds {bsp['p50_ms']-sp['p50_ms']:.3f} ms p50, {bsp['p99_ms']-sp['p99_ms']:.3f} ms p99")
# The added p99 is the gateway's own: measured over the constant upstream.
print(f"gateway/direct={g['rps']/d['rps']:.2f} gateway/nginx={g['rps']/n['rps']:.2f} p99_added_ms={gsp['p99_ms']-sp['p99_ms']:.3f}")
PY
