-- wrk script for bench/checkin.py: device check-ins as a fleet makes them.
--
-- Each request is one enrolled device's check-in: its own bearer credential,
-- the ETag of the desired state it already holds (If-None-Match), and the
-- inventory/installed report it made last time, so the server answers 304 and
-- writes nothing, as for almost every poll in production.
--
-- Usage: wrk ... -s checkin.lua http://HOST:PORT/v1/devices/checkin -- DEVICES_FILE
-- DEVICES_FILE (written by checkin.py): a line "<bodies> <devices>", then one
-- JSON body per line, then one "<credential>\t<etag>\t<body index>" per device.
-- Thread k of n plays devices k, k+n, k+2n, ... and pre-builds their requests
-- (wrk's advice: building requests in request() costs more than the server does).
-- done() prints one line "MODELFLEET_WRK {json}" that checkin.py parses.

local threads = {}

function setup(thread)
   -- Every setup() runs before any thread starts, so the last call leaves the right stride in all.
   thread:set("id", #threads)
   table.insert(threads, thread)
   for _, t in ipairs(threads) do
      t:set("stride", #threads)
   end
end

function init(args)
   local path = args[1]
   local file = assert(io.open(path, "r"), "cannot open devices file " .. tostring(path))
   local counts = file:read("*l")
   local n_bodies, n_devices = counts:match("^(%d+) (%d+)$")
   n_bodies, n_devices = tonumber(n_bodies), tonumber(n_devices)
   local bodies = {}
   for b = 1, n_bodies do
      bodies[b] = file:read("*l")
   end
   local headers = { ["Content-Type"] = "application/json" }
   local path_ = wrk.path
   requests_ = {}
   for d = 0, n_devices - 1 do
      local line = file:read("*l")
      if d % stride == id then
         local credential, etag, body = line:match("^([^\t]+)\t([^\t]*)\t(%d+)$")
         headers["Authorization"] = "Bearer " .. credential
         headers["If-None-Match"] = etag ~= "" and etag or nil
         table.insert(requests_, wrk.format("POST", path_, headers, bodies[tonumber(body) + 1]))
      end
   end
   file:close()
   cursor = 0
   status_200, status_304, status_4xx, status_5xx, status_other = 0, 0, 0, 0, 0
end

function request()
   cursor = cursor % #requests_ + 1
   return requests_[cursor]
end

function response(status, headers, body)
   if status == 304 then
      status_304 = status_304 + 1
   elseif status == 200 then
      status_200 = status_200 + 1
   elseif status >= 500 then
      status_5xx = status_5xx + 1
   elseif status >= 400 then
      status_4xx = status_4xx + 1
   else
      status_other = status_other + 1
   end
end

function done(summary, latency, requests)
   local s = { ["200"] = 0, ["304"] = 0, ["4xx"] = 0, ["5xx"] = 0, other = 0 }
   for _, thread in ipairs(threads) do
      s["200"] = s["200"] + thread:get("status_200")
      s["304"] = s["304"] + thread:get("status_304")
      s["4xx"] = s["4xx"] + thread:get("status_4xx")
      s["5xx"] = s["5xx"] + thread:get("status_5xx")
      s.other = s.other + thread:get("status_other")
   end
   local e = summary.errors
   io.write(string.format(
      'MODELFLEET_WRK {"requests": %d, "duration_us": %d, "bytes": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
         .. '"status": {"200": %d, "304": %d, "4xx": %d, "5xx": %d, "other": %d}, '
         .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      s["200"], s["304"], s["4xx"], s["5xx"], s.other,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean
   ))
end
