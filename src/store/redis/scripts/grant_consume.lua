local idx = KEYS[1]
local kp = ARGV[1]
local at = tonumber(ARGV[2])
local has_task = ARGV[5] == '1'
local best, best_x, best_j, best_r = nil, nil, nil, nil
for _, h in ipairs(redis.call('SMEMBERS', idx)) do
  local k = kp .. h
  local f = redis.call('HMGET', k, 'j', 'r', 'x')
  local j, r, x = f[1], f[2], tonumber(f[3] or '')
  if not j or not x then
    if redis.call('EXISTS', k) == 0 then redis.call('SREM', idx, h) end
  elseif x <= now then
    -- expired by the server clock but still here (its TTL was lost)
    redis.call('DEL', k)
    redis.call('SREM', idx, h)
  elseif x > at then
    local n = nil
    if r ~= 'u' then n = tonumber(r) end
    if r == 'u' or (n and n > 0) then
      local ok, g = pcall(cjson.decode, j)
      if ok and type(g) == 'table' and g.subject == ARGV[3] and g.audience == ARGV[4]
          and type(g.scopes) == 'table' then
        local task_ok = true
        if type(g.task) == 'string' then task_ok = has_task and g.task == ARGV[6] end
        if task_ok then
          local have = {}
          for _, s in ipairs(g.scopes) do
            if type(s) == 'string' then have[s] = true end
          end
          local all = true
          for i = 7, #ARGV do
            if not have[ARGV[i]] then all = false break end
          end
          if all and (best == nil or x < best_x or (x == best_x and h < best)) then
            best, best_x, best_j, best_r = h, x, j, r
          end
        end
      end
    end
  end
end
if best == nil then return false end
if best_r ~= 'u' then redis.call('HINCRBY', kp .. best, 'r', -1) end
return {best_j, best_r}
