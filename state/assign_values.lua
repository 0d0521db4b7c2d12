-- Keep a dimension's values first come, first kept, up to a cap (DESIGN §2, slices).
-- KEYS[1] the dimension's value hash (ls:dv:{<exp>}:<dim>): value -> order it was kept.
-- ARGV[1] max_values, ARGV[2..] values in arrival order. Returns 1 (kept) or 0 (beyond the
-- cap: the caller maps it to "(other)") per value. One key: safe in Redis Cluster.
local most = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV do
  local v = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], v) == 1 then
    out[#out + 1] = 1
  else
    local n = redis.call('HLEN', KEYS[1])
    if n < most then
      redis.call('HSET', KEYS[1], v, n + 1)
      out[#out + 1] = 1
    else
      out[#out + 1] = 0
    end
  end
end
return out
