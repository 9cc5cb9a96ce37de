-- wrk script for scripts/bench.sh: POSTs one JSON body to /v1/tools/code and checks every
-- response.
--   BENCH_BODY    file holding the JSON request body
--   BENCH_EXPECT  substrings (separated by a TAB) that every response body must contain
--   BENCH_LABEL   free text copied into the result line
-- done() prints one JSON line (prefixed "BENCHRESULT ") with p50/p99 in ms, requests/s and
-- the count of responses that were not 200 or missed an expected substring.

local function read_file(path)
  local f = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
  local s = f:read("*a")
  f:close()
  return s
end

wrk.method = "POST"
wrk.path = "/v1/tools/code"
wrk.body = read_file(os.getenv("BENCH_BODY"))
wrk.headers["Content-Type"] = "application/json"

local expect = {}
for piece in string.gmatch(os.getenv("BENCH_EXPECT") or "", "[^\t]+") do
  table.insert(expect, piece)
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  checked = 0
  bad = 0
  first_bad = ""
end

function response(status, headers, body)
  checked = checked + 1
  local ok = (status == 200)
  if ok then
    for _, want in ipairs(expect) do
      if not string.find(body, want, 1, true) then
        ok = false
        break
      end
    end
  end
  if not ok then
    bad = bad + 1
    if first_bad == "" then
      first_bad = tostring(status) .. " " .. string.sub(body or "", 1, 300)
    end
  end
end

local function json_string(s)
  s = string.gsub(s, '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. s .. '"'
end

function done(summary, latency, requests)
  local checked_all, bad_all, first = 0, 0, ""
  for _, t in ipairs(threads) do
    checked_all = checked_all + (t:get("checked") or 0)
    bad_all = bad_all + (t:get("bad") or 0)
    local fb = t:get("first_bad") or ""
    if first == "" then first = fb end
  end
  local e = summary.errors
  local socket_errors = e.connect + e.read + e.write + e.timeout
  local secs = summary.duration / 1e6
  io.write(string.format(
    'BENCHRESULT {"label":%s,"requests":%d,"seconds":%.3f,"rps":%.2f,'
      .. '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,"mean_ms":%.3f,'
      .. '"checked":%d,"bad":%d,"socket_errors":%d,"status_errors":%d,"first_bad":%s}\n',
    json_string(os.getenv("BENCH_LABEL") or ""), summary.requests, secs,
    summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000,
    checked_all, bad_all, socket_errors, e.status, json_string(first)))
end
