-- kwbench's wrk script: POST /v1/progress for a pool of users, each request
-- carrying its own user's token, so the server sees many distinct players
-- (as in production) rather than one hot token.
--
-- Arguments (after "--"): TOKENS_FILE VIDEOS_PER_USER
-- Every request is built once in init(); request() only picks the next one,
-- so wrk spends its time sending, not formatting.

local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

function init(args)
  local file, videos = args[1], tonumber(args[2] or "1")
  local headers_host = wrk.headers["Host"]
  reqs = {}
  local i = 0
  for tok in io.lines(file) do
    if tok ~= "" then
      local body = '{"video_id":"video-' .. (i % videos) ..
        '","percent":42.5,"position":1234.5,"duration":2700,"ts":1732240000000,"sent_at":1732240000350}'
      reqs[#reqs + 1] = wrk.format("POST", "/v1/progress", {
        ["Host"] = headers_host,
        ["Content-Type"] = "application/json",
        ["Authorization"] = "Bearer " .. tok,
      }, body)
      i = i + 1
    end
  end
  n = #reqs
  -- Threads start at different places in the pool.
  idx = ((tid or 0) * 7919) % n
end

function request()
  idx = idx + 1
  if idx > n then idx = 1 end
  return reqs[idx]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'KWBENCH {"duration_us":%d,"requests":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
