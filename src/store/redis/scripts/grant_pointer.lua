local x = tonumber(ARGV[3])
if x <= now then return 0 end
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return -1 end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if (not cur) and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return -2 end
redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
extend(KEYS[2], x, now)
return 1
