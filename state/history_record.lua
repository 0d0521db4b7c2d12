-- Record one history snapshot (state/history.py decides where it goes; this only applies it).
--
-- Compare-and-set on the last recorded time, so a recorder that claimed an older interval
-- but finished late cannot write out of order.
--
-- KEYS[1] meta hash, KEYS[2..] the level sorted sets (level i is KEYS[2 + i]).
-- ARGV: expected last time ("" if none), time, level, snapshot blob, then sections, each
-- "count" followed by its tuples:
--   remove  (level, member)          members dropped by a coarsening of the last level
--   add     (level, score, member)   members moved to another level by that coarsening
--   trim    (level, cutoff)          members with score <= cutoff leave the level
-- Returns 1 when recorded, 0 when another recorder wrote in between.
local prev = redis.call('HGET', KEYS[1], 'ts') or ''
if prev ~= ARGV[1] then
  return 0
end
local ts, level, blob = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local i = 5
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('ZREM', KEYS[2 + tonumber(ARGV[i])], ARGV[i + 1]); i = i + 2
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('ZADD', KEYS[2 + tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2]); i = i + 3
end
redis.call('ZADD', KEYS[2 + level], ts, blob)
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[2 + tonumber(ARGV[i])], '-inf', ARGV[i + 1])
  i = i + 2
end
redis.call('HSET', KEYS[1], 'ts', ts)
redis.call('HSETNX', KEYS[1], 'first', ts)
return 1
