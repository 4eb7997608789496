-- wrk script for load-tests/bench.sh.
--
-- Requests: with no environment set, wrk's own request (the URL and -H headers). Two
-- variants, read from the environment, send the same bytes to every proxy measured:
--   BENCH_JWT=<token> BENCH_JWT_PATH=/bench-jwt/ping
--       every other request goes to BENCH_JWT_PATH with `Authorization: Bearer <token>`
--       instead of the -H headers (the API-key route and the JWT route, half each).
--   BENCH_KEYS=<n>
--       each request carries `x-bench-client: c<i>` with i cycling over n values: the
--       rate-limit key of the bench's keyed config (n=1: one key; n=1000000: a million).
-- Report: after the usual --latency text, one machine-readable line that bench.sh parses
-- (latencies in microseconds).

local jwt = os.getenv("BENCH_JWT")
local jwt_path = os.getenv("BENCH_JWT_PATH") or "/bench-jwt/ping"
local keys = tonumber(os.getenv("BENCH_KEYS") or "")

if jwt and jwt ~= "" then
  local pair
  local i = 0
  request = function()
    if not pair then
      local bearer = {}
      for k, v in pairs(wrk.headers) do
        if k:lower() ~= "x-api-key" then bearer[k] = v end
      end
      bearer["Authorization"] = "Bearer " .. jwt
      pair = { wrk.format(nil, nil, nil, nil), wrk.format("GET", jwt_path, bearer, nil) }
    end
    i = i + 1
    return pair[(i % 2) + 1]
  end
elseif keys and keys > 0 then
  local i = 0
  request = function()
    i = (i + 1) % keys
    wrk.headers["x-bench-client"] = "c" .. i
    return wrk.format(nil, nil, nil, nil)
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d rps=%.2f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d non2xx=%d connect_err=%d read_err=%d write_err=%d timeouts=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
