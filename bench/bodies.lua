-- wrk script for bench/token-endpoint.mjs: every request POSTs the next prepared form body (a
-- distinct code or refresh token) from the file $BODIES, split across wrk's threads. The run
-- lasts wrk's -d; a thread that runs out of bodies stops and the result says `exhausted` (then
-- the figure is a lower bound: prepare more bodies). Prints one JSON line at the end.
local bodies, sent = {}, 0
local threads = {}
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
-- Globals, so that done() can read them from each thread.
answered, failed, exhausted = 0, 0, 0

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  local nthreads = tonumber(os.getenv("THREADS") or "1")
  local k = 0
  for line in io.lines(os.getenv("BODIES")) do
    if k % nthreads == tid then table.insert(bodies, line) end
    k = k + 1
  end
end

function request()
  sent = sent + 1
  return wrk.format("POST", nil, headers, bodies[math.min(sent, #bodies)])
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 then failed = failed + 1 end
  if answered >= #bodies then
    exhausted = 1
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local ok, bad, ex = 0, 0, 0
  for _, t in ipairs(threads) do
    ok = ok + t:get("answered") - t:get("failed")
    bad = bad + t:get("failed")
    ex = ex + t:get("exhausted")
  end
  local secs = summary.duration / 1e6
  io.write(string.format(
    '{"ok":%d,"failed":%d,"secs":%.3f,"rps":%d,"exhausted":%s,"p50_ms":%.2f,"p99_ms":%.2f}\n',
    ok, bad, secs, math.floor(ok / secs), ex > 0 and "true" or "false",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
