-- Move a partition's stored offsets (the operator's `liftstream offsets reset`, or the worker
-- with LIFTSTREAM_OFFSET_RESET=earliest), atomically and only from the offsets the caller saw.
--
-- Compare-and-set: every stored offset must still be the one the caller read, so a batch an
-- owner applied meanwhile is never skipped or re-read; the owner's own next batch, fenced on
-- its expected offsets (apply_batch.lua), is then refused and the owner seeks to the new ones.
-- On success the partition-wide condition `offsets_out_of_range` is cleared, `offsets_reset`
-- records the gap (kept: the numbers stay incomplete) and the counter `offsets_reset` rises.
--
-- KEYS[1] offsets, KEYS[2] counters, KEYS[3] partition warnings, KEYS[4] out-of-range topics.
-- ARGV: n, then n × (field, expected stored offset or "" if none, new offset), then detail.
-- Returns {1} on success, {0, 'offset', field=stored} when an offset moved meanwhile.

local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local field, expected = ARGV[2 + 3 * i], ARGV[3 + 3 * i]
  local stored = redis.call('HGET', KEYS[1], field) or ''
  if stored ~= expected then
    return {0, 'offset', field .. '=' .. stored}
  end
end
for i = 0, n - 1 do
  redis.call('HSET', KEYS[1], ARGV[2 + 3 * i], ARGV[4 + 3 * i])
end
redis.call('HDEL', KEYS[3], 'offsets_out_of_range')
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[3], 'offsets_reset', ARGV[2 + 3 * n])
redis.call('HINCRBY', KEYS[2], 'offsets_reset', 1)
return {1}
