-- consume.lua: check every counter of one decision, then add all amounts or none.
-- KEYS[1..n]  counter hashes {prefix}q:{quota}:{key} (fields: bucket index or period
--             label; a sliding window's hash also holds 't' and 'lo', see common.lua)
-- KEYS[n+1]   reservation record {prefix}h:{hold_id}, only when ARGV[3] ~= '0'
-- KEYS[last]  the usage event stream, only when the event's values end ARGV
-- ARGV[1]     the clock: '', 'D<deadline µs>' or a unix second (now_parts, common.lua)
-- ARGV[2]     '1' to consume, '0' to only read (explain, dry runs)
-- ARGV[3]     reservation TTL in seconds, '0' for no reservation
-- ARGV[4]     whom the reservation is for (owner key u=…, g=…/u=…): a report must match it
-- ARGV[5..]   5 values per counter: window code, bucket seconds, limit units,
--             amount units, metric
-- then        optionally the 2 values of event_append (lua/events.lua, prepended): the
--             decision's usage event, appended only when admitted and consumed
-- Returns one flat list: sec, usec, admitted (1/0; -1: too late, nothing read or
-- written), event (1 appended, -1 dropped: the stream is full, 0 none), then per counter
-- its used units, the number k of live buckets that follow and k pairs (index, units).
local sec, usec, late = now_parts(ARGV[1])
if late then return {sec, usec, -1, 0} end  -- past the caller's deadline: nothing written
local consume = ARGV[2] == '1'
local hold_ttl = tonumber(ARGV[3])
-- the spending variant (balances.lua): ARGV end with 6 values per balance, the hold id
-- and the number of balances; KEYS with the balances and {prefix}bl before the stream
local nb = spending and tonumber(ARGV[#ARGV]) or 0
local tail = spending and 6 * nb + 2 or 0
-- ARGV holds 4 values, 5 per counter, then 2 when there is an event
local has_event = (#ARGV - tail - 4) % 5 == 2
local n = (#ARGV - tail - 4 - (has_event and 2 or 0)) / 5

-- Reads first: a WRONGTYPE error stops the script before anything was written.
local call, tonumber, floor = redis.call, tonumber, math.floor
local plans = {}
local admitted = 1
local appended = 0
local reply = {sec, usec, 1, 0}
for i = 1, n do
  local base = 4 + (i - 1) * 5
  local key = KEYS[i]
  local code = ARGV[base + 1]
  local limit, amount = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local w = tonumber(code)
  local plan = {amount = amount, metric = ARGV[base + 5]}
  local used
  if w then
    -- a sliding window (common.lua): one HMGET reads its total, its oldest bucket and
    -- the bucket this decision writes to
    local bucket = tonumber(ARGV[base + 2])
    local current = floor(sec / bucket)
    local first = floor((sec - w) / bucket)
    local field = int(current)
    plan.field, plan.first, plan.finish = field, first, (current + 1) * bucket + w
    local got = call('HMGET', key, 't', 'lo', field)
    local t, lo = tonumber(got[1]), tonumber(got[2])
    if t and (lo == nil or lo >= first) then
      plan.t, plan.lo, plan.value, plan.changed = t, lo, tonumber(got[3]), false
    else  -- buckets left the window, or a hash without its total: the general read
      local st, slo, stale, changed = sliding_read(key, first, current)
      t, lo = st, slo
      plan.t, plan.lo, plan.stale, plan.changed = st, slo, stale, changed
    end
    used = t
    plan.used = used
    plan.oldest = lo
  else
    local field, _, finish = slot(code, 0, sec)
    plan.field, plan.finish = field, finish
    used = 0
    local stale = {}
    local all = call('HGETALL', key)
    for j = 1, #all, 2 do
      if all[j] == field then used = used + tonumber(all[j + 1])
      else stale[#stale + 1] = all[j] end
    end
    plan.stale, plan.used = stale, used
  end
  local fits = (amount == 0 and used < limit) or (amount > 0 and used + amount <= limit)
  plan.fits, plan.limit = fits, limit
  if not fits then
    admitted = 0
    plan.exceeded = true
  end
  plans[i] = plan
end

local spends, kbase = {}, n + (hold_ttl > 0 and 1 or 0)
if spending and nb > 0 then
  if call('EXISTS', KEYS[kbase + nb + 1]) == 0 then return {sec, usec, -2, 0} end
  admitted, spends = spend_check(plans, n, nb, ARGV, #ARGV - tail, kbase, sec)
end

-- The reply: per counter its counted total, then how many live buckets follow and the
-- buckets (index, units). The caller computes retry_after and resets_at from them with
-- the same code as the memory store: a counter whose amount fits needs only its oldest
-- live bucket (with 1 for its units: a short reply); an exceeded counter gets them all.
for i = 1, n do
  local p = plans[i]
  reply[#reply + 1] = p.used
  if p.first and p.exceeded then
    local all = call('HGETALL', KEYS[i])
    local current = tonumber(p.field)
    local at = #reply + 1
    reply[at] = 0
    for j = 1, #all, 2 do
      local idx = tonumber(all[j])
      if idx and idx >= p.first and idx <= current then
        reply[#reply + 1] = idx
        reply[#reply + 1] = tonumber(all[j + 1])
        reply[at] = reply[at] + 1
      end
    end
  elseif p.first and p.oldest then
    reply[#reply + 1] = 1
    reply[#reply + 1] = p.oldest
    reply[#reply + 1] = 1
  else
    reply[#reply + 1] = 0
  end
end
reply[3] = admitted

if consume then
  local held = {}
  for i = 1, n do
    local p = plans[i]
    local key = KEYS[i]
    local adding = admitted == 1 and p.amount > 0
    if p.first then
      if p.changed then
        sliding_store(key, p.t, p.lo, p.stale)
        if adding then sliding_add(key, p.field, p.amount, p.t, p.lo, p.finish, sec) end
      elseif adding then
        -- the fast path of sliding_add: the bucket and the total in one HSET
        local t, value = p.t, (p.value or 0) + p.amount
        if value > MAX_UNITS or t + p.amount > MAX_UNITS then
          sliding_add(key, p.field, p.amount, t, p.lo, p.finish, sec)
        else
          if p.lo == nil or tonumber(p.field) < p.lo then
            call('HSET', key, p.field, int(value), 't', int(t + p.amount), 'lo', p.field)
          else
            call('HSET', key, p.field, int(value), 't', int(t + p.amount))
          end
          if p.value == nil then
            call('EXPIRE', key, p.finish - sec)  -- a new field: live as long as it counts
          else
            keep_until(key, p.finish, sec)  -- never shorter than that, whatever shortened it
          end
        end
      end
    else
      if #p.stale > 0 then call('HDEL', key, unpack(p.stale)) end
      if adding then
        local value = call('HINCRBY', key, p.field, int(p.amount))
        if value == p.amount then
          call('EXPIRE', key, p.finish - sec)  -- a new field: live as long as it counts
        else
          keep_until(key, p.finish, sec)
        end
      end
    end
    held[i] = {key, p.field, p.metric, int(p.amount), int(p.finish)}
  end
  local parts = nil
  if spending and nb > 0 then
    parts = spend_write(spends, admitted, ARGV[#ARGV - 1], sec + hold_ttl)
  end
  if admitted == 1 and hold_ttl > 0 then
    call('SET', KEYS[n + 1], cjson.encode({o = ARGV[4], c = held, b = parts}), 'EX', hold_ttl)
  end
  if admitted == 1 and has_event then appended = event_append(KEYS[#KEYS], ARGV, 5 + 5 * n) end
end
reply[4] = appended
if spending and nb > 0 then spend_states(spends, reply) end
return reply
