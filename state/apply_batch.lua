-- Apply one partition batch atomically, or nothing (DESIGN §2, "exactly-once effect").
--
-- Commit order: (1) fence on the owner epoch, (2) fence on every topic-partition offset: the
-- stored offset must be exactly the one the owner last wrote (or saw at assignment), so a
-- replayed batch, or a Redis that lost its tail (AOF restart), sends the owner back to seek,
-- (3) check every moment matrix's shift (or its re-centring base), then and only then (4) write
-- unit states, pending
-- events and matrix increments, (5) counters, (6) the new offsets. Steps 1-3 write nothing
-- but a refusal counter, so a refused (zombie or replayed) batch changes no statistics.
--
-- KEYS[1] epoch, KEYS[2] offsets, KEYS[3] counters, KEYS[4..] data keys addressed by index.
-- ARGV[1]: one msgpack array of strings (state/store.py packs it: one Redis argument instead of
-- hundreds of thousands), holding the epoch, then sections, each "count" followed by its tuples:
--   offsets   (field, expected_stored_offset or "" if none stored yet, next_offset)
--   matrices  (key_index, field, d, blob, base)   blob = shift (d doubles) .. upper-triangle
--             delta around that shift; base = "" (the stored shift must equal the blob's) or the
--             stored shift (d doubles) the matrix is first re-centred from (stream/shifts.py):
--             with dd = shift - base, S'0j = S0j - n*ddj, S'ij = Sij - ddi*S'0j - ddj*S0i.
--   hset      (key_index, field, value)
--   hdel      (key_index, field)
--   zadd      (key_index, score, member)
--   zrem      (key_index, member)
--   counters  (field, increment)
--   last event time (number, or "" for none)
--   per-experiment last event times (field "<experiment>:last_event_ts", number): maxima
--   histograms (key_index, field, increment): quantile bucket counts (estimators/quantiles.py);
--             a field whose count reaches 0 is deleted
-- Returns {1} on success, {0, reason, detail} on refusal.

local args = cmsgpack.unpack(ARGV[1])
local argi = 1
local function nextarg()
  local v = args[argi]
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
  local key, field = KEYS[tonumber(nextarg())], nextarg()
  local d, blob, base = tonumber(nextarg()), nextarg(), nextarg()
  local cur = redis.call('HGET', key, field)
  local expected = base
  if base == '' then
    expected = string.sub(blob, 1, 8 * d)
  end
  if (cur and string.sub(cur, 1, 8 * d) ~= expected) or (not cur and base ~= '') then
    redis.call('HINCRBY', KEYS[3], 'refused_shift', 1)
    return {0, 'shift', key .. '/' .. field}
  end
  mats[#mats + 1] = {key, field, d, blob, cur, base}
end

-- the stored sums (upper triangle of the (d+1)x(d+1) matrix, row-major) as numbers
local function unpack_sums(cur, d)
  local s, pos = {}, 8 * d + 1
  for j = 1, (string.len(cur) - 8 * d) / 8 do
    s[j] = struct.unpack('<d', cur, pos)
    pos = pos + 8
  end
  return s
end

-- the same sums around the blob's shift instead of the stored one (exact algebra)
local function recentre(s, cur, blob, d)
  local dd = {[0] = 0.0}
  for k = 1, d do
    local at = 8 * (k - 1) + 1
    dd[k] = struct.unpack('<d', blob, at) - struct.unpack('<d', cur, at)
  end
  local row0, new0, idx = {}, {}, {}
  local t = 1
  for i = 0, d do
    idx[i] = t - i  -- s[idx[i] + j] is entry (i, j) for j >= i
    t = t + d + 1 - i
  end
  local n = s[1]
  for j = 0, d do
    row0[j] = s[idx[0] + j]
    new0[j] = row0[j] - n * dd[j]
  end
  new0[0] = n
  local out = {}
  for i = 0, d do
    for j = i, d do
      out[idx[i] + j] = s[idx[i] + j] - dd[i] * new0[j] - dd[j] * row0[i]
    end
  end
  return out
end

for _, m in ipairs(mats) do
  local key, field, d, blob, cur, base = m[1], m[2], m[3], m[4], m[5], m[6]
  if not cur then
    redis.call('HSET', key, field, blob)
  else
    local head = 8 * d
    local s = unpack_sums(cur, d)
    if base ~= '' then
      s = recentre(s, cur, blob, d)
    end
    local out = {string.sub(blob, 1, head)}
    for j = 1, #s do
      out[#out + 1] = struct.pack('<d', s[j] + struct.unpack('<d', blob, head + 8 * (j - 1) + 1))
    end
    redis.call('HSET', key, field, table.concat(out))
  end
end

-- one section: its count, then that many tuples of `width` (2 or 3) arguments, each handed
-- to `apply` (read in place: no table per tuple)
local function section(count, width, apply)
  for _ = 1, count do
    local a, b, c = args[argi], args[argi + 1], nil
    if width == 3 then
      c = args[argi + 2]
    end
    argi = argi + width
    apply(a, b, c)
  end
end

-- a section whose tuples are (key_index, one or two args) for one Redis command on that key
local function on_key(command, width)
  if width == 2 then
    return function(k, a)
      redis.call(command, KEYS[tonumber(k)], a)
    end
  end
  return function(k, a, b)
    redis.call(command, KEYS[tonumber(k)], a, b)
  end
end

section(tonumber(nextarg()), 3, on_key('HSET', 3))
section(tonumber(nextarg()), 2, on_key('HDEL', 2))
section(tonumber(nextarg()), 3, on_key('ZADD', 3))
section(tonumber(nextarg()), 2, on_key('ZREM', 2))
section(tonumber(nextarg()), 2, function(field, incr)
  redis.call('HINCRBY', KEYS[3], field, incr)
end)
local last = nextarg()
if last and last ~= '' then
  local cur = tonumber(redis.call('HGET', KEYS[3], 'last_event_ts') or '0')
  if tonumber(last) > cur then
    redis.call('HSET', KEYS[3], 'last_event_ts', last)
  end
end
section(tonumber(nextarg() or '0'), 2, function(field, ts)
  if tonumber(ts) > tonumber(redis.call('HGET', KEYS[3], field) or '0') then
    redis.call('HSET', KEYS[3], field, ts)
  end
end)

-- quantile histograms: integer bucket counts (a unit's value change moves one count)
section(tonumber(nextarg() or '0'), 3, function(k, field, incr)
  local key = KEYS[tonumber(k)]
  if redis.call('HINCRBY', key, field, incr) == 0 then
    redis.call('HDEL', key, field)
  end
end)

for _, o in ipairs(offsets) do
  redis.call('HSET', KEYS[2], o[1], o[2])
end
return {1}
