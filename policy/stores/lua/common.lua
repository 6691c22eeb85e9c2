-- Shared by consume.lua and report.lua (prepended to each when the store loads them).
-- Mirrors tollway.policy.windows: bucket indices and calendar periods depend only on
-- the whole unix second, so this file and windows.py agree exactly.

-- When the call runs, from its clock argument (ARGV[1] of every script): '' for Redis
-- TIME; 'D<µs>' for Redis TIME with a deadline (unix µs on Redis's clock) past which the
-- caller no longer waits, so the script must write nothing; or a unix second (a test-only
-- override). Returns the whole second, the microseconds, and whether it is too late.
local function now_parts(clock)
  if clock ~= '' and string.sub(clock, 1, 1) ~= 'D' then
    return tonumber(clock), 0, false
  end
  local tm = redis.call('TIME')
  local sec, usec = tonumber(tm[1]), tonumber(tm[2])
  local late = clock ~= '' and sec * 1000000 + usec > tonumber(string.sub(clock, 2))
  return sec, usec, late
end

-- Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- The date of a day number (inverse of days_from_civil).
local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

-- Label and end (unix seconds) of the UTC day / ISO week / month holding second `sec`.
local function calendar_period(kind, sec)
  local days = math.floor(sec / 86400)
  if kind == 'day' then
    local y, m, d = civil_from_days(days)
    return string.format('%04d-%02d-%02d', y, m, d), (days + 1) * 86400
  elseif kind == 'week' then
    local monday = days - (days + 3) % 7   -- 1970-01-01 was a Thursday
    local ty = civil_from_days(monday + 3)  -- the ISO year is the year of the week's Thursday
    local week = math.floor((monday + 3 - days_from_civil(ty, 1, 1)) / 7) + 1
    return string.format('%04d-W%02d', ty, week), (monday + 7) * 86400
  end
  local y, m = civil_from_days(days)
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return string.format('%04d-%02d', y, m), days_from_civil(ny, nm, 1) * 86400
end

-- Where window `code` ('<seconds>' or 'day'/'week'/'month') writes at `sec`:
-- field, oldest counted bucket (nil for calendar), finish (second it stops counting).
local function slot(code, bucket, sec)
  local w = tonumber(code)
  if w then
    local current = math.floor(sec / bucket)
    return tostring(current), math.floor((sec - w) / bucket), (current + 1) * bucket + w
  end
  local label, finish = calendar_period(code, sec)
  return label, nil, finish
end

-- Integers as Redis arguments: tostring() would print 1e+15 for large doubles.
local function int(n)
  return string.format('%d', n)
end

-- Make sure `key` lives at least until second `finish` (relative, so test-time overrides are safe).
local function keep_until(key, finish, sec)
  local want = finish - sec
  local ttl = redis.call('TTL', key)
  if ttl < want then redis.call('EXPIRE', key, want) end
end

-- Integers stay exact in Lua numbers (doubles) up to 2**53 - 1: a field saturates there
-- (windows.MAX_UNITS), so no sum of reports can make a counter inexact.
local MAX_UNITS = 9007199254740991

-- Add `delta` units to one field, never below zero (a field at zero is removed) and
-- never above MAX_UNITS.
local function add(key, field, delta)
  if delta == 0 then return end
  local value = redis.call('HINCRBY', key, field, int(delta))
  if value <= 0 then
    redis.call('HDEL', key, field)
  elseif value > MAX_UNITS then
    redis.call('HSET', key, field, int(MAX_UNITS))
  end
end

-- Every field of the hash that can never count again.
local function stale_fields(pairs_list, field, first)
  local stale = {}
  for j = 1, #pairs_list, 2 do
    local f = pairs_list[j]
    if first then
      local idx = tonumber(f)
      if idx == nil or idx < first then stale[#stale + 1] = f end
    elseif f ~= field then
      stale[#stale + 1] = f
    end
  end
  return stale
end

-- Fail before any write when a key holds something other than a hash (no partial updates).
local function need_hash(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'hash' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. kind .. ', not a counter hash')
  end
  return nil
end

-- Sliding counters keep, beside their bucket fields, two fields of their own: 't', the
-- sum of every bucket field in the hash, and 'lo', the smallest bucket index present
-- (absent when none is). Reading a window is then one HMGET whatever its number of
-- buckets; the buckets that left the window since the last read are found between 'lo'
-- and the window's oldest bucket, taken out of 't' and deleted. A hash without 't' (a
-- counter written before these fields existed, or one whose sum could not be kept exact)
-- is summed once from all its fields.
local RESCAN = 130  -- more bucket indexes than this between 'lo' and now: read it all

-- Sum the bucket fields of `key` from `first` on; the stale ones come back to delete.
local function sliding_rescan(key, first)
  local all = redis.call('HGETALL', key)
  local t, lo, stale = 0, nil, {}
  for j = 1, #all, 2 do
    local f = all[j]
    if f ~= 't' and f ~= 'lo' then
      local idx = tonumber(f)
      if idx == nil or idx < first then
        stale[#stale + 1] = f
      else
        t = t + tonumber(all[j + 1])
        if lo == nil or idx < lo then lo = idx end
      end
    end
  end
  return t, lo, stale
end

-- The window's state at (first, current): the units it counts, its oldest bucket (nil
-- when empty), the stale fields to delete and whether 't'/'lo' must be written back.
local function sliding_read(key, first, current)
  local got = redis.call('HMGET', key, 't', 'lo')
  local t, lo = tonumber(got[1]), tonumber(got[2])
  if t == nil then
    if redis.call('EXISTS', key) == 0 then return 0, nil, {}, false end
    local st, slo, stale = sliding_rescan(key, first)
    return st, slo, stale, true
  end
  if lo == nil or lo >= first then return t, lo, {}, false end
  if current - lo > RESCAN then
    local st, slo, stale = sliding_rescan(key, first)
    return st, slo, stale, true
  end
  -- the buckets that left the window since the last read: out of 't'
  local names = {}
  for f = lo, first - 1 do names[#names + 1] = int(f) end
  local values = redis.call('HMGET', key, unpack(names))
  local gone, stale = 0, {}
  for j = 1, #names do
    if values[j] then
      gone = gone + tonumber(values[j])
      stale[#stale + 1] = names[j]
    end
  end
  -- the new oldest bucket: probed from the window's start, a few fields at a time
  local oldest = nil
  local from = first
  while oldest == nil and from <= current do
    local upto = math.min(from + 7, current)
    names = {}
    for f = from, upto do names[#names + 1] = int(f) end
    values = redis.call('HMGET', key, unpack(names))
    for j = 1, #names do
      if values[j] then
        oldest = from + j - 1
        break
      end
    end
    from = upto + 1
  end
  return t - gone, oldest, stale, true
end

-- Write back what sliding_read found (stale fields out, 't' and 'lo' as they are now).
local function sliding_store(key, t, lo, stale)
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  if lo == nil then
    redis.call('HDEL', key, 'lo')
    redis.call('HSET', key, 't', int(t))
  else
    redis.call('HSET', key, 't', int(t), 'lo', int(lo))
  end
end

-- Add `amount` (> 0) units to bucket `field` of a window read as (t, lo); the key lives
-- until `finish`. Past MAX_UNITS the bucket saturates and 't' is dropped (summed again
-- on the next read).
local function sliding_add(key, field, amount, t, lo, finish, sec)
  local value = redis.call('HINCRBY', key, field, int(amount))
  if value > MAX_UNITS or t + amount > MAX_UNITS then
    if value > MAX_UNITS then redis.call('HSET', key, field, int(MAX_UNITS)) end
    redis.call('HDEL', key, 't')
  elseif lo == nil or tonumber(field) < lo then
    redis.call('HSET', key, 't', int(t + amount), 'lo', field)
  else
    redis.call('HINCRBY', key, 't', int(amount))
  end
  if value == amount then
    redis.call('EXPIRE', key, finish - sec)  -- a new field: live as long as it counts
  else
    keep_until(key, finish, sec)  -- never shorter than that, whatever shortened it
  end
end

-- Change bucket `field` of a sliding counter by `delta` (a report replacing a
-- reservation by the actuals), never below zero; 't' and 'lo' follow. A bucket that
-- empties or saturates, or a counter without 't', drops 't' (summed on the next read).
local function sliding_adjust(key, field, delta)
  if delta == 0 then return end
  local got = redis.call('HMGET', key, 't', 'lo')
  local value = redis.call('HINCRBY', key, field, int(delta))
  if value <= 0 or value > MAX_UNITS or not got[1] then
    if value <= 0 then
      redis.call('HDEL', key, field)
    elseif value > MAX_UNITS then
      redis.call('HSET', key, field, int(MAX_UNITS))
    end
    redis.call('HDEL', key, 't')
    return
  end
  redis.call('HINCRBY', key, 't', int(delta))
  local lo = tonumber(got[2])
  if lo == nil or tonumber(field) < lo then redis.call('HSET', key, 'lo', field) end
end

-- Replace one reserved amount by the actual one: `delta` units into `field` of `key`
-- while the bucket still counts (`sec` < `finish`).
local function settle_part(key, field, delta, finish, sec)
  if sec >= finish then return end
  if tonumber(field) then sliding_adjust(key, field, delta) else add(key, field, delta) end
  if delta > 0 then keep_until(key, finish, sec) end
end
