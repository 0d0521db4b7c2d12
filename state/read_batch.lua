-- Every read a partition batch needs before its apply, in one round trip (stream/batch.py).
-- KEYS: bucket hashes (B of them), then the pending hash, the pending queue, the maturity set,
-- then the matrices hashes of the experiments whose stored matrices the owner has not cached.
-- ARGV[1]: one msgpack array of strings (state/store.py packs it), holding:
--   B                                   number of bucket keys
--   for each bucket key: count, that many unit ids
--   count, unit ids to look up in the pending hash (held events)
--   expired cutoff ("" = none): pending units first held before it ...
--   expired limit                       ... at most this many, oldest first
--   max pending (-1: none), new held at most   oldest held units eviction may need
--   maturity cutoff ("" = none), limit  members whose outcome window closed by the cutoff
-- Returns {values, pending count, expired, oldest, matured, matrices}: values is one flat list
-- (false = absent) in argument order, matrices one HGETALL reply per matrices key.
local args = cmsgpack.unpack(ARGV[1])
local argi = 1
local function nextarg()
  local v = args[argi]
  argi = argi + 1
  return v
end

local function hmget(key, n, out)
  if n == 0 then
    return
  end
  local fields = {}
  for i = 1, n do
    fields[i] = nextarg()
  end
  local vals = redis.call('HMGET', key, unpack(fields))
  for i = 1, n do
    out[#out + 1] = vals[i]
  end
end

local buckets = tonumber(nextarg())
local values = {}
for k = 1, buckets do
  hmget(KEYS[k], tonumber(nextarg()), values)
end
local pending, queue, maturity = KEYS[buckets + 1], KEYS[buckets + 2], KEYS[buckets + 3]
hmget(pending, tonumber(nextarg()), values)

local expired = {}
local cutoff, limit = nextarg(), tonumber(nextarg())
if cutoff ~= '' then
  expired = redis.call('ZRANGEBYSCORE', queue, '-inf', '(' .. cutoff, 'LIMIT', 0, limit)
end

local count = redis.call('HLEN', pending)
local max_pending, new_max = tonumber(nextarg()), tonumber(nextarg())
local oldest = {}
if max_pending >= 0 and count + new_max > max_pending then
  oldest = redis.call('ZRANGE', queue, 0, count + new_max - max_pending - 1)
end

local matured = {}
local mcut, mlimit = nextarg(), tonumber(nextarg())
if mcut ~= '' then
  matured = redis.call('ZRANGEBYSCORE', maturity, '-inf', mcut, 'LIMIT', 0, mlimit)
end

local matrices = {}
for k = buckets + 4, #KEYS do
  matrices[#matrices + 1] = redis.call('HGETALL', KEYS[k])
end
return {values, count, expired, oldest, matured, matrices}
