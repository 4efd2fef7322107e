-- One replica's sync with the shared store: what it counted since the last sync goes in, what
-- the other replicas counted comes back. Atomic, one round trip, for every entry at once.
--
-- KEYS: one hash per deployment (the first ARGV[4]), then one per caller.
-- ARGV: now (unix ms), replica id, ms after which a silent replica's in-flight count is
-- dropped, number of deployment keys, number of failure kinds; then one string per key with
-- that entry's arguments, separated by spaces. The reply is one such string per key: few
-- values to frame both ways, whatever the number of counts.
--
-- A counter group (usage `u`, failures `f`, spend `s`) counts in a window (a minute, a budget
-- period) and a generation (a cooldown starts failures' counting afresh); its tag is
-- "window:generation:epoch". A replica sends its window, the tag its own counts were last in, those
-- counts, and what it counted since; it gets back the tag, the others' counts and its own.
-- A tag also names the key's epoch (who made it, when): a key that was lost (a restarted
-- Redis) and made again is seeded again with each replica's own counts of the current window.

local now = tonumber(ARGV[1])
local rid = ARGV[2]
local stale = tonumber(ARGV[3])
local ndep = tonumber(ARGV[4])
local nkinds = tonumber(ARGV[5])
local toks, pos = {}, 1
local out = {}

local function arg()
  local v = toks[pos]
  pos = pos + 1
  return v
end

local function nums(n)
  local t = {}
  for i = 1, n do t[i] = tonumber(arg()) end
  return t
end

local function fmt(v, float)
  if float then return string.format('%.17g', v) end
  return string.format('%d', v)
end

local function merge(key, epoch, p, n, float)
  local win = tonumber(arg())
  local seen = arg()
  if seen == '-' then seen = '' end
  local own = nums(n)
  local delta = nums(n)
  local seen_win, seen_epoch = string.match(seen, '^(%d+):%d+:(.*)$')
  -- The store lost what this replica had counted in the current window (a restarted Redis
  -- made the key again): it is counted again.
  local lost = seen_win ~= nil and tonumber(seen_win) == win and seen_epoch ~= epoch
  local stored = redis.call('HGET', key, p .. 'w')
  local gen = tonumber(redis.call('HGET', key, p .. 'g') or '0')
  local counts, mine = {}, {}
  for i = 1, n do counts[i] = 0; mine[i] = 0 end
  if (not stored) or tonumber(stored) < win then
    -- A new window: counted from zero.
    redis.call('HSET', key, p .. 'w', fmt(win, false), p .. 'g', 0)
    for i = 1, n do redis.call('HDEL', key, p .. i) end
    gen = 0
  else
    local fields = {}
    for i = 1, n do fields[i] = p .. i end
    local got = redis.call('HMGET', key, unpack(fields))
    for i = 1, n do counts[i] = tonumber(got[i] or '0') or 0 end
    if seen == fmt(tonumber(stored), false) .. ':' .. fmt(gen, false) .. ':' .. epoch then
      for i = 1, n do mine[i] = own[i] end
    end
    if tonumber(stored) > win then
      -- This replica's counts are of a window that has ended here: dropped.
      for i = 1, n do delta[i] = 0 end
      lost = false
    end
    win = tonumber(stored)
  end
  if lost then
    for i = 1, n do delta[i] = delta[i] + own[i] end
  end
  for i = 1, n do
    if delta[i] ~= 0 then
      if float then
        counts[i] = tonumber(redis.call('HINCRBYFLOAT', key, p .. i, fmt(delta[i], true)))
      else
        counts[i] = redis.call('HINCRBY', key, p .. i, fmt(delta[i], false))
      end
      mine[i] = mine[i] + delta[i]
    end
  end
  return win, gen, counts, mine
end

local function others(counts, mine, n)
  local o = {}
  for i = 1, n do
    o[i] = counts[i] - mine[i]
    if o[i] < 0 then o[i] = 0 end
  end
  return o
end

local function push_group(reply, epoch, win, gen, counts, mine, n, float)
  table.insert(reply, fmt(win, false) .. ':' .. fmt(gen, false) .. ':' .. epoch)
  local o = others(counts, mine, n)
  for i = 1, n do table.insert(reply, fmt(o[i], float)) end
  for i = 1, n do table.insert(reply, fmt(mine[i], float)) end
end

-- This replica's attempts in flight, and the sum of the others' that were heard from lately.
local function in_flight(key, mine)
  if mine > 0 then
    redis.call('HSET', key, 'i:' .. rid, fmt(mine, false), 'h:' .. rid, fmt(now, false))
  else
    redis.call('HDEL', key, 'i:' .. rid, 'h:' .. rid)
  end
  local all = redis.call('HGETALL', key)
  local heard, count = {}, {}
  for i = 1, #all, 2 do
    local f = all[i]
    local kind, who = string.sub(f, 1, 2), string.sub(f, 3)
    if kind == 'h:' then heard[who] = tonumber(all[i + 1]) end
    if kind == 'i:' then count[who] = tonumber(all[i + 1]) end
  end
  local sum = 0
  for who, n in pairs(count) do
    local at = heard[who]
    if (not at) or now - at > stale then
      redis.call('HDEL', key, 'i:' .. who, 'h:' .. who)
    elseif who ~= rid then
      sum = sum + n
    end
  end
  return sum
end

local function keep(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, fmt(ms, false)) end
end

for k = 1, #KEYS do
  local key = KEYS[k]
  toks, pos = {}, 1
  for w in string.gmatch(ARGV[5 + k], '%S+') do toks[#toks + 1] = w end
  local reply = {}
  -- Who made the key and when: a key made again (after Redis lost it) has another.
  local epoch = redis.call('HGET', key, 'e')
  if not epoch then
    epoch = rid .. '-' .. fmt(now, false)
    redis.call('HSET', key, 'e', epoch)
  end
  if k <= ndep then
    local uw, ug, uc, um = merge(key, epoch, 'u', 2, false)
    local fw, fg, fc, fm = merge(key, epoch, 'f', nkinds + 1, false)
    local cool = tonumber(arg())
    local mine = tonumber(arg())
    local ttl = tonumber(arg())
    local cu = tonumber(redis.call('HGET', key, 'cu') or '0')
    if cool > cu then
      -- A cooldown entered (or made longer) by this replica: every replica honours it, and
      -- failures count afresh from it.
      cu = cool
      redis.call('HSET', key, 'cu', fmt(cu, false))
      fg = redis.call('HINCRBY', key, 'fg', 1)
      for i = 1, nkinds + 1 do
        redis.call('HDEL', key, 'f' .. i)
        fc[i] = 0
        fm[i] = 0
      end
    end
    local sum = in_flight(key, mine)
    push_group(reply, epoch, uw, ug, uc, um, 2, false)
    push_group(reply, epoch, fw, fg, fc, fm, nkinds + 1, false)
    table.insert(reply, fmt(cu, false))
    table.insert(reply, fmt(sum, false))
    if cu - now + 60000 > ttl then ttl = cu - now + 60000 end
    keep(key, ttl)
  else
    local uw, ug, uc, um = merge(key, epoch, 'u', 2, false)
    local sw, sg, sc, sm = merge(key, epoch, 's', 1, true)
    local mine = tonumber(arg())
    local ttl = tonumber(arg())
    local sum = in_flight(key, mine)
    push_group(reply, epoch, uw, ug, uc, um, 2, false)
    push_group(reply, epoch, sw, sg, sc, sm, 1, true)
    table.insert(reply, fmt(sum, false))
    keep(key, ttl)
  end
  out[k] = table.concat(reply, ' ')
end
return out
