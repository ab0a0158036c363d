-- The anomaly guard's state of one identity (issue 17 item 6), one atomic
-- step: the rule of src/exchange/guard.rs (`Entry::roll`, `Entry::learn`,
-- `Entry::step`, `issued`, `refused`) applied to the state kept in Redis.
-- Both engines are run side by side by `redis::guard::tests`.
--
-- KEYS[1]: state hash; KEYS[2]: known audiences (sorted set, member = audience
-- digest, score = insertion order). Both share one hash tag (one slot).
-- ARGV: 1 op ('c' check, 'i' issued, 'r' refused), 2 now (the broker's
-- clock), 3 window, 4 keep (TTL, seconds), 5 max_rate (0: off), 6 learned
-- multiplier (0: off), 7 learned warm-up, 8 learned floor, 9 new audience
-- checked ('1'/'0'), 10 audience digest, 11 max audiences, 12 refusal streak,
-- 13 a tripped streak holds ('1'/'0'), 14 cooldown.
-- Returns for 'c' {code, a, b, c}: 0 admitted (counted); 1 streak, a = seconds
-- left; 2 rate, 3 learned rate: a = prev, b = cur, c = limit; 4 new audience;
-- 5 admitted (counted) and settled (audience known, no streak).
-- For 'i': 0. For 'r': 1 when this refusal completes a streak, else 0.
local st, au = KEYS[1], KEYS[2]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local w = tonumber(ARGV[3])
local keep = tonumber(ARGV[4])
local ALPHA = 0.3
local MAX_IDLE = 64
local U32 = 4294967295

local function num(x) return tonumber(x or '0') or 0 end
local function int(x) return string.format('%d', x) end

local f = redis.call('HMGET', st, 'W', 'b', 'c', 'p', 'e', 'n', 'k', 'l', 's', 't', 'q')
local s = {b = 0, c = 0, p = 0, e = 0, n = 0, k = 0, l = 0}
-- Counters kept under another window length mean nothing under this one.
if num(f[1]) == w then
  s.b, s.c, s.p, s.e, s.n, s.k, s.l =
    num(f[2]), num(f[3]), num(f[4]), num(f[5]), num(f[6]), num(f[7]), num(f[8])
end
s.s, s.t, s.q = num(f[9]), num(f[10]), num(f[11])

local function learn(sample)
  if s.n == 0 then
    s.e = sample
  else
    s.e = ALPHA * sample + (1.0 - ALPHA) * s.e
  end
  if s.n < U32 then s.n = s.n + 1 end
end

local function roll()
  local b = math.floor(now / w)
  if b <= s.b then return end
  if s.l > 0 then
    if s.k == 0 then learn(s.c) end
    local idle = math.min(b - s.b - 1, MAX_IDLE)
    for _ = 1, idle do learn(0) end
  end
  if b == s.b + 1 then s.p = s.c else s.p = 0 end
  s.c = 0
  s.k = 0
  s.b = b
end

local function admits(limit)
  local e = now % w
  return s.p * (w - e) + (s.c + 1) * w <= limit * w
end

local function save()
  redis.call('HSET', st, 'W', int(w), 'b', int(s.b), 'c', int(s.c), 'p', int(s.p),
    'e', string.format('%.17g', s.e), 'n', int(s.n), 'k', int(s.k), 'l', int(now),
    's', int(s.s), 't', int(s.t), 'q', int(s.q))
  redis.call('EXPIRE', st, keep)
  redis.call('EXPIRE', au, keep)
end

roll()
if op == 'c' then
  local out = {0, 0, 0, 0}
  if s.t > now and ARGV[13] == '1' then
    out = {1, s.t - now, 0, 0}
  else
    local mr = tonumber(ARGV[5])
    local mult = tonumber(ARGV[6])
    if mr > 0 and not admits(mr) then
      out = {2, s.p, s.c, mr}
    elseif mult > 0 and s.n >= tonumber(ARGV[7]) then
      local l = math.max(math.ceil(s.e * mult), tonumber(ARGV[8]))
      if not admits(l) then
        s.k = 1
        out = {3, s.p, s.c, l}
      end
    end
    if out[1] == 0 and ARGV[9] == '1' and redis.call('ZCARD', au) > 0
        and not redis.call('ZSCORE', au, ARGV[10]) then
      out = {4, 0, 0, 0}
    end
    if out[1] == 0 then
      s.c = s.c + 1
      -- Settled: an issuance now would change nothing (its record may be
      -- skipped; rolling to a later time is the same as rolling later).
      if s.s == 0 and redis.call('ZSCORE', au, ARGV[10]) then out = {5, 0, 0, 0} end
    end
  end
  save()
  return out
elseif op == 'i' then
  s.s = 0
  if not redis.call('ZSCORE', au, ARGV[10]) then
    local cap = tonumber(ARGV[11])
    local n = redis.call('ZCARD', au)
    if n >= cap then redis.call('ZPOPMIN', au, n - cap + 1) end
    s.q = s.q + 1
    redis.call('ZADD', au, int(s.q), ARGV[10])
  end
  save()
  return 0
elseif op == 'r' then
  local tripped = 0
  s.s = s.s + 1
  if s.s >= tonumber(ARGV[12]) then
    s.s = 0
    if ARGV[13] == '1' then s.t = now + tonumber(ARGV[14]) end
    tripped = 1
  end
  save()
  return tripped
end
return redis.error_reply('unknown guard op')
