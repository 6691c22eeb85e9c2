-- consume.lua: check every counter of one decision, then add all amounts or none.
-- KEYS[1..n]  counter hashes {prefix}q:{quota}:{key} (fields: bucket index or period label)
-- KEYS[n+1]   reservation record {prefix}h:{hold_id}, only when ARGV[3] ~= '0'
-- ARGV[1]     the clock: '', 'D<deadline µs>' or a unix second (now_parts, common.lua)
-- ARGV[2]     '1' to consume, '0' to only read (explain, dry runs)
-- ARGV[3]     reservation TTL in seconds, '0' for no reservation
-- ARGV[4..]   5 values per counter: window code, bucket seconds, limit units,
--             amount units, metric
-- then        optionally the 5 values of usage_request (lua/usage.lua, prepended): the
--             request counted in the usage aggregates, only when admitted and consumed
-- Returns {sec, usec, admitted (1/0; -1: too late, nothing read or written), per counter {used, idx, units, idx, units, ...}}:
-- the counted total and live buckets (> 0) come back so that the caller computes
-- retry_after and resets_at with the same code as the memory store. A counter whose
-- amount fits needs only its oldest live bucket for that, so only that one comes back
-- (a short reply); an exceeded counter returns them all.
local sec, usec, late = now_parts(ARGV[1])
if late then return {sec, usec, -1} end  -- past the caller's deadline: nothing written
local consume = ARGV[2] == '1'
local hold_ttl = tonumber(ARGV[3])
local n = #KEYS
if hold_ttl > 0 then n = n - 1 end

-- Reads first: a WRONGTYPE error stops the script before anything was written.
local tonumber = tonumber
local plans, states = {}, {}
local admitted = 1
for i = 1, n do
  local base = 3 + (i - 1) * 5
  local field, first, finish = slot(ARGV[base + 1], tonumber(ARGV[base + 2]), sec)
  local limit, amount = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local all = redis.call('HGETALL', KEYS[i])
  local used, stale = 0, {}
  local oldest, oldest_value, current = nil, 0, nil
  if first then
    current = tonumber(field)
    for j = 1, #all, 2 do
      local idx = tonumber(all[j])
      if idx == nil or idx < first then
        stale[#stale + 1] = all[j]
      elseif idx <= current then
        local value = tonumber(all[j + 1])
        used = used + value
        if value > 0 and (oldest == nil or idx < oldest) then oldest, oldest_value = idx, value end
      end
    end
  else
    for j = 1, #all, 2 do
      if all[j] == field then used = used + tonumber(all[j + 1]) else stale[#stale + 1] = all[j] end
    end
  end
  local fits = (amount == 0 and used < limit) or (amount > 0 and used + amount <= limit)
  if not fits then admitted = 0 end
  local state = {used}
  if first and fits then
    if oldest then state[2], state[3] = oldest, oldest_value end
  elseif first then
    for j = 1, #all, 2 do
      local idx = tonumber(all[j])
      if idx and idx >= first and idx <= current then
        local value = tonumber(all[j + 1])
        if value > 0 then
          state[#state + 1] = idx
          state[#state + 1] = value
        end
      end
    end
  end
  plans[i] = {field = field, finish = finish, amount = amount, stale = stale,
              metric = ARGV[base + 5]}
  states[i] = state
end

if consume then
  local held = {}
  for i = 1, n do
    local p = plans[i]
    if #p.stale > 0 then redis.call('HDEL', KEYS[i], unpack(p.stale)) end
    if admitted == 1 and p.amount > 0 then
      local value = redis.call('HINCRBY', KEYS[i], p.field, int(p.amount))
      if value == p.amount then
        redis.call('EXPIRE', KEYS[i], p.finish - sec)  -- a new field: live as long as it counts
      else
        -- an earlier write to this field made the key live that long: no EXPIRE needed
        keep_until(KEYS[i], p.finish, sec)
      end
    end
    held[i] = {KEYS[i], p.field, p.metric, int(p.amount), int(p.finish)}
  end
  if admitted == 1 and hold_ttl > 0 then
    redis.call('SET', KEYS[n + 1], cjson.encode(held), 'EX', hold_ttl)
  end
  local usage_at = 4 + 5 * n
  if admitted == 1 and #ARGV >= usage_at + 4 then usage_request(ARGV, usage_at) end
end

return {sec, usec, admitted, unpack(states)}
