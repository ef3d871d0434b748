-- wrk script for bench/gateway.sh: POSTs one MCP tools/call on an established session; with
-- RATE set (requests/s over all connections), a fixed-rate run: requests leave one every
-- 1000/RATE ms on a shared schedule, whichever connection is free takes the next slot, so
-- arrivals are evenly spaced rather than in bursts of one per connection.
-- Prints one JSON line at the end.
local rate = tonumber(os.getenv("RATE") or "0")
local headers = {
  ["Content-Type"] = "application/json",
  ["Accept"] = "application/json, text/event-stream",
  ["MCP-Protocol-Version"] = "2025-11-25",
  ["Mcp-Session-Id"] = os.getenv("SESSION"),
}
if os.getenv("TOKEN") and os.getenv("TOKEN") ~= "" then
  headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
end
-- With PROOFS (a file of DPoP proofs, one per line, each used once): the DPoP scheme.
local proofs, next_proof = nil, 1
if os.getenv("PROOFS") and os.getenv("PROOFS") ~= "" then
  proofs = {}
  for line in io.lines(os.getenv("PROOFS")) do table.insert(proofs, line) end
  headers["Authorization"] = "DPoP " .. os.getenv("TOKEN")
end
local body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"bench"}}}'
non200 = 0

function request()
  if proofs then
    headers["DPoP"] = proofs[next_proof] or "exhausted"
    next_proof = next_proof + 1
  end
  return wrk.format("POST", nil, headers, body)
end

function response(status)
  if status ~= 200 then non200 = non200 + 1 end
end

if rate > 0 then
  -- wrk runs LuaJIT: a monotonic clock through the FFI.
  local ffi = require("ffi")
  ffi.cdef[[
    typedef struct { long tv_sec; long tv_nsec; } gh_timespec;
    int clock_gettime(int clk_id, gh_timespec *tp);
  ]]
  local ts = ffi.new("gh_timespec")
  local function now_ms()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  local interval = 1000 / rate
  local slot = nil
  -- Called before each request of a connection; wrk's timers count whole milliseconds.
  function delay()
    local t = now_ms()
    if slot == nil or slot < t then slot = t end
    local wait = slot - t
    slot = slot + interval
    return math.floor(wait + 0.5)
  end
end

local threads = {}
function setup(thread) table.insert(threads, thread) end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + t:get("non200") end
  io.write(string.format('{"requests":%d,"non200":%d,"rps":%.0f,"p50_ms":%.3f,"p99_ms":%.3f}\n',
    summary.requests, bad, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
