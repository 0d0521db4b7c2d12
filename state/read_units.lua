-- Read the unit states and held events a batch needs, in one round trip.
-- KEYS: bucket hashes, then the pending hash last.
-- ARGV: for each bucket key in order: count, then that many unit ids; then count and the
-- unit ids to look up in the pending hash. Returns one flat list of values (false = absent)
-- in argument order.
local out = {}
local argi = 1
for k = 1, #KEYS - 1 do
  local n = tonumber(ARGV[argi])
  argi = argi + 1
  local fields = {}
  for i = 1, n do
    fields[i] = ARGV[argi]
    argi = argi + 1
  end
  local vals = redis.call('HMGET', KEYS[k], unpack(fields))
  for i = 1, n do
    out[#out + 1] = vals[i]
  end
end
local n = tonumber(ARGV[argi])
argi = argi + 1
if n > 0 then
  local fields = {}
  for i = 1, n do
    fields[i] = ARGV[argi]
    argi = argi + 1
  end
  local vals = redis.call('HMGET', KEYS[#KEYS], unpack(fields))
  for i = 1, n do
    out[#out + 1] = vals[i]
  end
end
return out
