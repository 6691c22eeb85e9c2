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
-- Returns {sec, usec, admitted (1/0; -1: too late, nothing read or written), event (1
-- appended, -1 dropped: the stream is full, 0 none), per counter {used, idx, units, idx,
-- units, ...}}:
-- the counted total and live buckets (> 0) come back so that the caller computes
-- retry_after and resets_at with the same code as the memory store. A counter whose
-- amount fits needs only the index of its oldest live bucket for that, so only that one
-- comes back (with 1 for its units: a short reply); an exceeded counter returns them all.
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
local tonumber = tonumber
local plans, states = {}, {}
local admitted = 1
local appended = 0
for i = 1, n do
  local base = 4 + (i - 1) * 5
  local key = KEYS[i]
  local field, first, finish = slot(ARGV[base + 1], tonumber(ARGV[base + 2]), sec)
  local limit, amount = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local plan = {field = field, finish = finish, amount = amount, metric = ARGV[base + 5],
                first = first, stale = {}}
  local used, state = 0, nil
  if first then
    -- a sliding window: its total and oldest bucket (common.lua), one HMGET
    local t, lo, stale, changed = sliding_read(key, first, tonumber(field))
    used, plan.t, plan.lo, plan.stale, plan.changed = t, t, lo, stale, changed
    state = {used}
    if lo then state[2], state[3] = lo, 1 end
  else
    local all = redis.call('HGETALL', key)
    for j = 1, #all, 2 do
      if all[j] == field then used = used + tonumber(all[j + 1])
      else plan.stale[#plan.stale + 1] = all[j] end
    end
    state = {used}
  end
  local fits = (amount == 0 and used < limit) or (amount > 0 and used + amount <= limit)
  plan.fits, plan.limit, plan.used = fits, limit, used
  if not fits then
    admitted = 0
    if first then
      -- every live bucket comes back: the caller walks them for retry_after
      state = {used}
      local all = redis.call('HGETALL', key)
      local current = tonumber(field)
      for j = 1, #all, 2 do
        local idx = tonumber(all[j])
        if idx and idx >= first and idx <= current then
          state[#state + 1] = idx
          state[#state + 1] = tonumber(all[j + 1])
        end
      end
    end
  end
  plans[i] = plan
  states[i] = state
end

local spends, kbase = {}, n + (hold_ttl > 0 and 1 or 0)
if spending and nb > 0 then
  if redis.call('EXISTS', KEYS[kbase + nb + 1]) == 0 then return {sec, usec, -2, 0} end
  admitted, spends = spend_check(plans, n, nb, ARGV, #ARGV - tail, kbase, sec)
end

if consume then
  local held = {}
  for i = 1, n do
    local p = plans[i]
    local adding = admitted == 1 and p.amount > 0
    if p.first then
      if p.changed then sliding_store(KEYS[i], p.t, p.lo, p.stale) end
      if adding then sliding_add(KEYS[i], p.field, p.amount, p.t, p.lo, p.finish, sec) end
    else
      if #p.stale > 0 then redis.call('HDEL', KEYS[i], unpack(p.stale)) end
      if adding then
        local value = redis.call('HINCRBY', KEYS[i], p.field, int(p.amount))
        if value == p.amount then
          redis.call('EXPIRE', KEYS[i], p.finish - sec)  -- a new field: live as long as it counts
        else
          keep_until(KEYS[i], p.finish, sec)
        end
      end
    end
    held[i] = {KEYS[i], p.field, p.metric, int(p.amount), int(p.finish)}
  end
  local parts = nil
  if spending and nb > 0 then
    parts = spend_write(spends, admitted, ARGV[#ARGV - 1], sec + hold_ttl)
  end
  if admitted == 1 and hold_ttl > 0 then
    redis.call('SET', KEYS[n + 1], cjson.encode({o = ARGV[4], c = held, b = parts}), 'EX', hold_ttl)
  end
  if admitted == 1 and has_event then appended = event_append(KEYS[#KEYS], ARGV, 5 + 5 * n) end
end

if spending and nb > 0 then return spend_states(spends, {sec, usec, admitted, appended, unpack(states)}) end
return {sec, usec, admitted, appended, unpack(states)}
