-- wrk script for bench/gateway.sh: POSTs one MCP tools/call on an established session; with
-- RATE_PER_CONN set, each connection waits between requests (a paced, fixed-rate run).
-- Prints one JSON line at the end.
local rate = tonumber(os.getenv("RATE_PER_CONN") or "0")
local headers = {
  ["Content-Type"] = "application/json",
  ["Accept"] = "application/json, text/event-stream",
  ["MCP-Protocol-Version"] = "2025-11-25",
  ["Mcp-Session-Id"] = os.getenv("SESSION"),
}
if os.getenv("TOKEN") and os.getenv("TOKEN") ~= "" then
  headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
end
local body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"bench"}}}'
non200 = 0

function request()
  return wrk.format("POST", nil, headers, body)
end

function response(status)
  if status ~= 200 then non200 = non200 + 1 end
end

if rate > 0 then
  function delay() return 1000 / rate end
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
