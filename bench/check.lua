-- wrk script: GET /v1/check for uniformly random IPv4 addresses.
-- usage: PALISADE_KEY=... wrk -t2 -c64 -d15s -s bench/check.lua http://127.0.0.1:8080
local key = os.getenv("PALISADE_KEY") or ""
math.randomseed(os.time())
request = function()
  local ip = string.format("%d.%d.%d.%d", math.random(1, 223), math.random(0, 255), math.random(0, 255), math.random(0, 255))
  return wrk.format("GET", "/v1/check?ip=" .. ip, { ["Authorization"] = "Bearer " .. key })
end
