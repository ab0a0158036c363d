local x = tonumber(ARGV[3])
local keep = tonumber(ARGV[4])
local at = tonumber(ARGV[7])
if keep <= now then return {'0'} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'-1'} end
local d = redis.call('HMGET', KEYS[4], 'i', 'd')
if d[1] and d[2] then
  local f = redis.call('HMGET', ARGV[10] .. d[2], 's', 'x', 'r', 'h')
  if f[1] == 'pending' and (tonumber(f[2] or '0') or 0) > at
    and f[3] == ARGV[5] and f[4] == ARGV[6] then
    return {'=', d[1]}
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[7])
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[8]) then return {'-2'} end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[9]) then return {'-3'} end
redis.call('HSET', KEYS[1], 'j', ARGV[2], 's', 'pending', 'p', ARGV[7], 'x', ARGV[3],
  'r', ARGV[5], 'h', ARGV[6])
redis.call('EXPIREAT', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
extend(KEYS[2], keep, now)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
extend(KEYS[3], x, now)
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[4], 'i', ARGV[1], 'd', ARGV[11])
if x <= now then x = now + 1 end
redis.call('EXPIREAT', KEYS[4], x)
return {'1'}
