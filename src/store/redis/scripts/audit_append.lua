local node = ARGV[1]
local last = 0
local cur = redis.call('HGET', KEYS[2], node)
if cur then last = tonumber(string.match(cur, '^(%d+) ')) or 0 end
local seq = nil
local added = 0
for i = 5, #ARGV, 3 do
  local s = tonumber(ARGV[i])
  if s and s > last then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'rec', ARGV[i + 2])
    -- moved with each record: a script stopped by an error half-way
    -- leaves a checkpoint that matches the stream
    redis.call('HSET', KEYS[2], node, ARGV[i] .. ' ' .. ARGV[i + 1])
    last = s
    seq = ARGV[i]
    added = added + 1
  end
end
local ttl = tonumber(ARGV[3])
if seq then
  redis.call('ZADD', KEYS[3], now, node)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - ttl)
  local over = redis.call('ZCARD', KEYS[3]) - #gone - tonumber(ARGV[4])
  if over > 0 then
    local more = redis.call('ZRANGE', KEYS[3], #gone, #gone + over - 1)
    for _, n in ipairs(more) do gone[#gone + 1] = n end
  end
  for _, n in ipairs(gone) do
    redis.call('HDEL', KEYS[2], n)
    redis.call('ZREM', KEYS[3], n)
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ttl) end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ttl) end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], ttl) end
return added
