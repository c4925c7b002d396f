-- wrk script of scripts/bench. Arguments (after `--`):
--   1: file of request bodies, one per line, sent in turn (`-` for none: a bodiless request)
--   2: text every good response body contains (`-`: any 2xx is good)
--   3: milliseconds to wait before each request (0: none)
-- Requests are POSTs of the bodies (GETs when there are none) with wrk's -H headers; `done` prints
-- one line `BENCH-JSON {...}` with the counts and latency percentiles (microseconds).

local threads = {}
local requests = {}
local cursor = 0
local expect = nil
local pause = 0
bad = 0

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local bodies, method = args[1], "GET"
   if bodies ~= "-" then
      method = "POST"
      for line in io.lines(bodies) do
         table.insert(requests, wrk.format(method, nil, nil, line))
      end
   end
   if #requests == 0 then
      table.insert(requests, wrk.format(method, nil, nil, nil))
   end
   if args[2] ~= "-" then
      expect = args[2]
   end
   pause = tonumber(args[3])
   if pause > 0 then
      function delay()
         return pause
      end
   end
end

function request()
   cursor = cursor % #requests + 1
   return requests[cursor]
end

function response(status, headers, body)
   if status < 200 or status > 299 or (expect and not string.find(body, expect, 1, true)) then
      bad = bad + 1
   end
end

function done(summary, latency, _)
   local mismatched = 0
   for _, thread in ipairs(threads) do
      mismatched = mismatched + thread:get("bad")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH-JSON {"requests": %d, "duration_us": %d, "socket_errors": %d, "bad_responses": %d, '
         .. '"p50_us": %d, "p99_us": %d, "max_us": %d}\n',
      summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
      mismatched, latency:percentile(50), latency:percentile(99), latency.max
   ))
end
