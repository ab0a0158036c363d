local f = redis.call('HMGET', KEYS[1], 's', 'x')
if not f[1] then return 'missing' end
if (tonumber(f[2] or '0') or 0) + tonumber(ARGV[5]) <= tonumber(ARGV[3]) then return 'missing' end
if f[1] ~= 'pending' then return f[1] end
if (tonumber(f[2] or '0') or 0) <= tonumber(ARGV[3]) then return 'expired' end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'b', ARGV[2], 't', ARGV[3], 'w', ARGV[4])
return 'ok'
