local function extend(k, t, now)
  if redis.call('TTL', k) == -1 then
    if t <= now then t = now + 1 end
    redis.call('EXPIREAT', k, t)
  else
    redis.call('EXPIREAT', k, t, 'GT')
  end
end
local now = tonumber(redis.call('TIME')[1])
