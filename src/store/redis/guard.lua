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
-- 13 a tripped streak holds ('1'/'0'), 14 cooldown, 15 lease: extra
-- exchanges wanted, 16 unused leased exchanges given back, 17 the bucket
-- they were counted in.
-- Returns for 'c' {code, a, b, c}: 0 admitted (counted); 1 streak, a = seconds
-- left; 2 rate, 3 learned rate: a = prev, b = cur, c = limit; 4 new audience;
-- 5 admitted (counted) and settled (audience known, no streak), a = extra
-- exchanges leased (counted now, used by the caller without asking again).
-- For 'i': 0. For 'r': 1 when this refusal completes a streak, else 0.
--
-- Cost: only the fields that changed are written back (an admitted check
-- in a known bucket writes one), and the TTLs are refreshed once per
-- keep/16 (field 'x'), each time to keep + keep/16, so a key always lives
-- at least `keep` after its identity's last call.
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

local NAMES = {'W', 'b', 'c', 'p', 'e', 'n', 'k', 'l', 's', 't', 'q', 'x'}
local f = redis.call('HMGET', st, unpack(NAMES))
local s = {b = 0, c = 0, p = 0, e = 0, n = 0, k = 0, l = 0}
-- Counters kept under another window length mean nothing under this one.
if num(f[1]) == w then
  s.b, s.c, s.p, s.e, s.n, s.k, s.l =
    num(f[2]), num(f[3]), num(f[4]), num(f[5]), num(f[6]), num(f[7]), num(f[8])
end
s.s, s.t, s.q, s.x = num(f[9]), num(f[10]), num(f[11]), num(f[12])

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

-- Writes back the fields that changed (an absent field reads as 0), and
-- refreshes the TTLs when due.
local function save()
  -- 'l': seen under this window (0: never); kept from the first call.
  if s.l == 0 then s.l = now end
  local refresh = s.x == 0 or math.abs(now - s.x) >= math.floor(keep / 16)
  if refresh then s.x = now end
  local new = {int(w), int(s.b), int(s.c), int(s.p), string.format('%.17g', s.e), int(s.n),
    int(s.k), int(s.l), int(s.s), int(s.t), int(s.q), int(s.x)}
  local args = {}
  for i = 1, #NAMES do
    local old = f[i]
    if (old or '0') ~= new[i] and not (old == false and new[i] == '0' and i > 1) then
      args[#args + 1] = NAMES[i]
      args[#args + 1] = new[i]
    end
  end
  if #args > 0 then redis.call('HSET', st, unpack(args)) end
  if refresh then
    local ttl = keep + math.floor(keep / 16)
    redis.call('EXPIRE', st, ttl)
    redis.call('EXPIRE', au, ttl)
  end
end

-- Leased exchanges the caller did not use: out of the bucket they were
-- counted in (before rolling, so a completed window learns the true count).
local back, bb = tonumber(ARGV[16] or '0') or 0, tonumber(ARGV[17] or '0') or 0
if back > 0 then
  if bb == s.b then
    s.c = math.max(s.c - back, 0)
  elseif bb + 1 == s.b then
    s.p = math.max(s.p - back, 0)
  end
end
roll()
if op == 'c' then
  local out = {0, 0, 0, 0}
  local mr = tonumber(ARGV[5])
  local ll = nil
  if s.t > now and ARGV[13] == '1' then
    out = {1, s.t - now, 0, 0}
  else
    local mult = tonumber(ARGV[6])
    if mult > 0 and s.n >= tonumber(ARGV[7]) then
      ll = math.max(math.ceil(s.e * mult), tonumber(ARGV[8]))
    end
    if mr > 0 and not admits(mr) then
      out = {2, s.p, s.c, mr}
    elseif ll and not admits(ll) then
      s.k = 1
      out = {3, s.p, s.c, ll}
    end
    local known = nil
    if out[1] == 0 and ARGV[9] == '1' then
      known = redis.call('ZSCORE', au, ARGV[10])
      if not known and redis.call('ZCARD', au) > 0 then out = {4, 0, 0, 0} end
    end
    if out[1] == 0 then
      s.c = s.c + 1
      -- Settled: an issuance now would change nothing (its record may be
      -- skipped; rolling to a later time is the same as rolling later).
      if s.s == 0 then
        if known == nil then known = redis.call('ZSCORE', au, ARGV[10]) end
        if known then
          out = {5, 0, 0, 0}
          -- A lease: extra exchanges counted now, only while the sliding
          -- count stays within half of every limit in force.
          local room = tonumber(ARGV[15] or '0') or 0
          local e = now % w
          local function fit(limit)
            local r = math.floor((math.floor(limit / 2) * w - s.p * (w - e)) / w) - s.c
            if r < room then room = r end
          end
          if room > 0 and mr > 0 then fit(mr) end
          if room > 0 and ll then fit(ll) end
          if room > 0 then
            s.c = s.c + room
            out[2] = room
          end
        end
      end
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
    -- A new set has no TTL yet.
    if n == 0 then s.x = 0 end
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
