-- consume.lua: check every counter of one decision, then add all amounts or none.
-- KEYS[1..n]  counter hashes {prefix}q:{quota}:{key} (fields: bucket index or period label)
-- KEYS[n+1]   reservation record {prefix}h:{hold_id}, only when ARGV[3] ~= '0'
-- ARGV[1]     '' to use Redis TIME, or a unix second (test-only override)
-- ARGV[2]     '1' to consume, '0' to only read (explain, dry runs)
-- ARGV[3]     reservation TTL in seconds, '0' for no reservation
-- ARGV[4..]   5 values per counter: window code, bucket seconds, limit units,
--             amount units, metric
-- Returns {sec, usec, admitted (1/0), per counter {used, idx, units, idx, units, ...}}:
-- the counted buckets come back so that the caller computes retry_after and resets_at
-- with the same code as the memory store.
local sec, usec = now_parts(ARGV[1])
local consume = ARGV[2] == '1'
local hold_ttl = tonumber(ARGV[3])
local n = #KEYS
if hold_ttl > 0 then n = n - 1 end

-- Reads first: a WRONGTYPE error stops the script before anything was written.
local plans, states = {}, {}
local admitted = 1
for i = 1, n do
  local base = 3 + (i - 1) * 5
  local field, first, finish = slot(ARGV[base + 1], tonumber(ARGV[base + 2]), sec)
  local limit, amount = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local all = redis.call('HGETALL', KEYS[i])
  local current = tonumber(field)
  local used, state = 0, {0}
  for j = 1, #all, 2 do
    local value = tonumber(all[j + 1])
    if first then
      local idx = tonumber(all[j])
      if idx and idx >= first and idx <= current then
        used = used + value
        state[#state + 1] = idx
        state[#state + 1] = value
      end
    elseif all[j] == field then
      used = used + value
    end
  end
  state[1] = used
  if (amount == 0 and used >= limit) or (amount > 0 and used + amount > limit) then
    admitted = 0
  end
  plans[i] = {field = field, first = first, finish = finish, amount = amount, all = all,
              metric = ARGV[base + 5]}
  states[i] = state
end

if consume then
  local held = {}
  for i = 1, n do
    local p = plans[i]
    local stale = stale_fields(p.all, p.field, p.first)
    if #stale > 0 then redis.call('HDEL', KEYS[i], unpack(stale)) end
    if admitted == 1 and p.amount > 0 then
      redis.call('HINCRBY', KEYS[i], p.field, int(p.amount))
      redis.call('EXPIRE', KEYS[i], p.finish - sec)
    end
    held[i] = {KEYS[i], p.field, p.metric, int(p.amount), int(p.finish)}
  end
  if admitted == 1 and hold_ttl > 0 then
    redis.call('SET', KEYS[n + 1], cjson.encode(held), 'EX', hold_ttl)
  end
end

return {sec, usec, admitted, unpack(states)}
