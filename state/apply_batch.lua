-- Apply one partition batch atomically, or nothing (DESIGN §2, "exactly-once effect").
--
-- Commit order: (1) fence on the owner epoch, (2) fence on every topic-partition offset: the
-- stored offset must be exactly the one the owner last wrote (or saw at assignment), so a
-- replayed batch, or a Redis that lost its tail (AOF restart), sends the owner back to seek,
-- (3) check every moment matrix's shift, then and only then (4) write unit states, pending
-- events and matrix increments, (5) counters, (6) the new offsets. Steps 1-3 write nothing
-- but a refusal counter, so a refused (zombie or replayed) batch changes no statistics.
--
-- KEYS[1] epoch, KEYS[2] offsets, KEYS[3] counters, KEYS[4..] data keys addressed by index.
-- ARGV: epoch, then sections, each "count" followed by its tuples:
--   offsets   (field, expected_stored_offset or "" if none stored yet, next_offset)
--   matrices  (key_index, field, d, blob)   blob = shift (d doubles) .. upper-triangle delta
--   hset      (key_index, field, value)
--   hdel      (key_index, field)
--   zadd      (key_index, score, member)
--   zrem      (key_index, member)
--   counters  (field, increment)
--   last event time (number, or "" for none)
--   per-experiment last event times (field "<experiment>:last_event_ts", number): maxima
-- Returns {1} on success, {0, reason, detail} on refusal.

local argi = 1
local function nextarg()
  local v = ARGV[argi]
  argi = argi + 1
  return v
end

local epoch = nextarg()
local stored_epoch = redis.call('GET', KEYS[1])
if stored_epoch ~= epoch then
  redis.call('HINCRBY', KEYS[3], 'refused_epoch', 1)
  return {0, 'epoch', stored_epoch or ''}
end

local n = tonumber(nextarg())
local offsets = {}
for i = 1, n do
  local field, expected, nxt = nextarg(), nextarg(), nextarg()
  local stored = redis.call('HGET', KEYS[2], field) or ''
  if stored ~= expected then
    redis.call('HINCRBY', KEYS[3], 'refused_offset', 1)
    return {0, 'offset', field .. '=' .. stored}
  end
  offsets[#offsets + 1] = {field, nxt}
end

n = tonumber(nextarg())
local mats = {}
for i = 1, n do
  local key, field, d, blob = KEYS[tonumber(nextarg())], nextarg(), tonumber(nextarg()), nextarg()
  local cur = redis.call('HGET', key, field)
  if cur and string.sub(cur, 1, 8 * d) ~= string.sub(blob, 1, 8 * d) then
    redis.call('HINCRBY', KEYS[3], 'refused_shift', 1)
    return {0, 'shift', key .. '/' .. field}
  end
  mats[#mats + 1] = {key, field, d, blob, cur}
end

for _, m in ipairs(mats) do
  local key, field, d, blob, cur = m[1], m[2], m[3], m[4], m[5]
  if not cur then
    redis.call('HSET', key, field, blob)
  else
    local head = 8 * d
    local count = (string.len(blob) - head) / 8
    local out = {string.sub(cur, 1, head)}
    for j = 0, count - 1 do
      local pos = head + 8 * j + 1
      out[#out + 1] = struct.pack('<d', struct.unpack('<d', cur, pos) + struct.unpack('<d', blob, pos))
    end
    redis.call('HSET', key, field, table.concat(out))
  end
end

n = tonumber(nextarg())
for i = 1, n do
  local key, field, value = KEYS[tonumber(nextarg())], nextarg(), nextarg()
  redis.call('HSET', key, field, value)
end
n = tonumber(nextarg())
for i = 1, n do
  local key, field = KEYS[tonumber(nextarg())], nextarg()
  redis.call('HDEL', key, field)
end
n = tonumber(nextarg())
for i = 1, n do
  local key, score, member = KEYS[tonumber(nextarg())], nextarg(), nextarg()
  redis.call('ZADD', key, score, member)
end
n = tonumber(nextarg())
for i = 1, n do
  local key, member = KEYS[tonumber(nextarg())], nextarg()
  redis.call('ZREM', key, member)
end
n = tonumber(nextarg())
for i = 1, n do
  local field, incr = nextarg(), nextarg()
  redis.call('HINCRBY', KEYS[3], field, incr)
end
local last = nextarg()
if last and last ~= '' then
  local cur = tonumber(redis.call('HGET', KEYS[3], 'last_event_ts') or '0')
  if tonumber(last) > cur then
    redis.call('HSET', KEYS[3], 'last_event_ts', last)
  end
end
n = tonumber(nextarg() or '0')
for i = 1, n do
  local field, ts = nextarg(), nextarg()
  if tonumber(ts) > tonumber(redis.call('HGET', KEYS[3], field) or '0') then
    redis.call('HSET', KEYS[3], field, ts)
  end
end

for _, o in ipairs(offsets) do
  redis.call('HSET', KEYS[2], o[1], o[2])
end
return {1}
