local u = tonumber(ARGV[1])
local old = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if old > u then u = old end
if u <= now then return 0 end
redis.call('SET', KEYS[1], string.format('%d', u), 'EXAT', string.format('%d', u))
redis.call('HSET', KEYS[2], ARGV[2], string.format('%d', u))
extend(KEYS[2], u, now)
if redis.call('HLEN', KEYS[2]) > tonumber(ARGV[3]) then
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    if (tonumber(all[i + 1]) or 0) <= now then redis.call('HDEL', KEYS[2], all[i]) end
  end
end
return u
