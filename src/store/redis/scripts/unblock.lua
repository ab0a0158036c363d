local old = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if old > now then return 1 end
return 0
