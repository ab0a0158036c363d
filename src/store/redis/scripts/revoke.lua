local ra = tonumber(ARGV[1])
local xa = tonumber(ARGV[2])
local old = redis.call('GET', KEYS[1])
if old then
  local ora, oxa = string.match(old, '^(%d+) (%d+)$')
  if ora then
    ora = tonumber(ora)
    oxa = tonumber(oxa)
    if ora > ra then ra = ora end
    if oxa > xa then xa = oxa end
  end
end
local ras = string.format('%d', ra)
local xas = string.format('%d', xa)
if xa > now then
  redis.call('SET', KEYS[1], ras .. ' ' .. xas, 'EXAT', xas)
else
  redis.call('DEL', KEYS[1])
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*',
  'k', ARGV[3], 'v', ARGV[4], 'r', ras, 'x', xas)
extend(KEYS[2], xa, now)
return id
