local f = redis.call('HMGET', KEYS[1], 'r', 'h', 's', 'x', 'p')
if not f[1] or f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then return {'invalid'} end
local s = f[3]
local x = tonumber(f[4] or '0') or 0
local at = tonumber(ARGV[4])
if x + tonumber(ARGV[5]) <= at then return {'invalid'} end
if s == 'consumed' then return {'invalid'} end
if s == 'denied' then return {'denied'} end
if x <= at then return {'expired'} end
if s == 'approved' then
  redis.call('HSET', KEYS[1], 's', 'consumed')
  local d = redis.call('HMGET', KEYS[1], 'j', 'b', 't', 'w')
  return {'redeemed', d[1] or '', d[2] or '', d[3] or '', d[4] or ''}
end
if s ~= 'pending' then return {'invalid'} end
local p = tonumber(f[5] or '0') or 0
redis.call('HSET', KEYS[1], 'p', ARGV[4])
if at < p + tonumber(ARGV[3]) then return {'slow_down'} end
return {'pending'}
