-- Claim one history interval for an experiment (state/history.py): at most one recorder
-- (API replica or alerter) records each interval, and intervals only move forward.
--
-- KEYS[1] the experiment's history meta hash. ARGV[1] the interval number (slot).
-- Returns nil when that slot (or a later one) was already claimed, else
-- {time of the last recorded snapshot or nil, time of the first snapshot or nil}.
local cur = redis.call('HGET', KEYS[1], 'slot')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then
  return nil
end
redis.call('HSET', KEYS[1], 'slot', ARGV[1])
return redis.call('HMGET', KEYS[1], 'ts', 'first')
