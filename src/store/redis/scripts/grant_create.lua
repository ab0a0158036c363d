local x = tonumber(ARGV[4])
if x <= now then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[5]) then
  for _, h in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local k = ARGV[6] .. h
    local gx = tonumber(redis.call('HGET', k, 'x') or '0') or 0
    if gx <= now then
      redis.call('DEL', k)
      redis.call('SREM', KEYS[2], h)
    end
  end
  if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[5]) then return -2 end
end
redis.call('HSET', KEYS[1], 'j', ARGV[2], 'r', ARGV[3], 'x', ARGV[4])
redis.call('EXPIREAT', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
extend(KEYS[2], x, now)
return 1
