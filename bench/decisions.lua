-- wrk script: GET /v1/decisions?ip= for uniformly random IPv4 addresses, keyed as bouncers key
-- their requests (X-Api-Key).
-- usage: PALISADE_KEY=... wrk -t2 -c64 -d15s -s bench/decisions.lua http://127.0.0.1:8080
local key = os.getenv("PALISADE_KEY") or ""
math.randomseed(os.time())
request = function()
  local ip = string.format("%d.%d.%d.%d", math.random(1, 223), math.random(0, 255), math.random(0, 255), math.random(0, 255))
  return wrk.format("GET", "/v1/decisions?ip=" .. ip, { ["X-Api-Key"] = key })
end
