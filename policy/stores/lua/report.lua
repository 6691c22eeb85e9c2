-- report.lua: apply one usage report, once per request_id of its reporter.
-- KEYS[1]     report marker {prefix}r:{reporter}:{request_id}
-- KEYS[2]     reservation record {prefix}h:{hold_id}, only when ARGV[3] ~= ''
-- KEYS[..]    fallback counter hashes, after those
-- KEYS[last]  the usage event stream, only when the event's values end ARGV
-- ARGV[1]     the clock: '', 'D<deadline µs>' or a unix second (now_parts, common.lua)
-- ARGV[2]     marker TTL in seconds (how long a request_id is remembered)
-- ARGV[3]     '' without a reservation record; else the owner key the report names,
--             which must be the one the reservation was made for
-- ARGV[4]     m, then m pairs: metric, actual units
-- then        3 values per fallback counter: window code, bucket seconds, amount units
-- then        optionally the 2 values of event_append (lua/events.lua): the report's usage
--             event, appended in this same atomic step, so a duplicate appends nothing
-- Returns {outcome, event[, parts]}: parts, when present, is JSON of the reserved counters
-- this call did not declare, [[key, field, delta, finish], ...], for settle.lua; outcome 'duplicate', 'settled' (the reservation was replaced
-- by the actuals), 'added' (no live reservation: the fallback amounts were added),
-- 'foreign' (the reservation was made for someone else: nothing was written) or 'late'
-- (Redis's clock was past the deadline in ARGV[1]: nothing was written); event 1
-- appended, -1 dropped (the stream is full), 0 none.
local sec, _, late = now_parts(ARGV[1])
if late then return {'late', 0} end  -- past the caller's deadline: nothing written
if redis.call('EXISTS', KEYS[1]) == 1 then return {'duplicate', 0} end
local has_hold = ARGV[3] ~= ''
local m = tonumber(ARGV[4])
local actual = {}
for j = 1, m do actual[ARGV[3 + 2 * j]] = tonumber(ARGV[4 + 2 * j]) end
local first_counter = has_hold and 3 or 2
-- the spending variant (balances.lua): ARGV end with 6 values per fallback balance, the
-- hold id, the ledger ref of a report without reservation and the number of balances;
-- KEYS with the balances and {prefix}bl before the stream
local nb = spending and tonumber(ARGV[#ARGV]) or 0
local tail = spending and 6 * nb + 3 or 0
-- ARGV holds 4 values, 2 per metric, 3 per fallback counter, then 2 when there is an event
local has_event = (#ARGV - tail - 4 - 2 * m) % 3 == 2
local last_counter = #KEYS - (has_event and 1 or 0) - (spending and nb + 1 or 0)

-- Reads first (the record and the type of every key to write), then writes.
local held, parts = nil, nil
if has_hold then
  local raw = redis.call('GET', KEYS[2])
  if raw then
    local record = cjson.decode(raw)
    if record.o ~= ARGV[3] then return {'foreign', 0} end
    held, parts = record.c, record.b
  end
end
local bdeclared = {}
if spending then
  for j = 1, nb do bdeclared[KEYS[last_counter + j]] = true end
  if not held and nb > 0 and redis.call('EXISTS', KEYS[last_counter + nb + 1]) == 0 then
    return {'unloaded', 0}
  end
end
-- A held counter this call did not declare is not touched here: it comes back to the
-- caller, which settles it with its key declared (settle.lua).
local declared = {}
for i = first_counter, last_counter do declared[KEYS[i]] = true end
if held then
  for _, h in ipairs(held) do
    if declared[h[1]] then
      local err = need_hash(h[1])
      if err then return err end
    end
  end
else
  for i = first_counter, last_counter do
    local err = need_hash(KEYS[i])
    if err then return err end
  end
end

redis.call('SET', KEYS[1], '1', 'EX', tonumber(ARGV[2]))
-- balances first: what they were charged rides the report's event
local ledger, shares = {}, {}
if spending and held and parts then
  shares = settle_balances(parts, held, actual, bdeclared, ARGV[#ARGV - 2], ledger)
elseif spending and not held then
  local base = #ARGV - tail
  for j = 1, nb do
    local amount, after, _, name, scope = balance_args(ARGV, base, j)
    if after == 0 and amount > 0 then
      redis.call('HINCRBY', KEYS[last_counter + j], 'bal', int(-amount))
      ledger[#ledger + 1] = {name, scope, int(-amount), 'spend', '', ARGV[#ARGV - 1]}
    end
  end
end
local appended = 0
if has_event then
  local at = 5 + 2 * m + 3 * (last_counter - first_counter + 1)
  appended = event_append(KEYS[#KEYS], ARGV, at, spending and with_ledger(ARGV[at + 1], ledger) or nil)
end
if held then
  redis.call('DEL', KEYS[2])
  local elsewhere = {}
  for idx, h in ipairs(held) do
    local key, field, metric = h[1], h[2], h[3]
    local reserved, finish = tonumber(h[4]), tonumber(h[5])
    -- A metric the report does not mention keeps its reservation; an expired bucket is left.
    if actual[metric] ~= nil and sec < finish then
      local delta = (shares[idx] or actual[metric]) - reserved
      if not declared[key] then
        elsewhere[#elsewhere + 1] = {key, field, int(delta), int(finish)}
      else
        settle_part(key, field, delta, finish, sec)
      end
    end
  end
  if #elsewhere > 0 then return {'settled', appended, cjson.encode(elsewhere)} end
  return {'settled', appended}
end

local base = 4 + 2 * m
for i = first_counter, last_counter do
  local code, bucket = ARGV[base + 1], tonumber(ARGV[base + 2])
  local amount = tonumber(ARGV[base + 3])
  base = base + 3
  if amount > 0 then
    local key = KEYS[i]
    local field, first, finish = slot(code, bucket, sec)
    if first then
      local t, lo, stale, changed = sliding_read(key, first, tonumber(field))
      if changed then sliding_store(key, t, lo, stale) end
      sliding_add(key, field, amount, t, lo, finish, sec)
    else
      -- Calendar counters only reports touch are pruned here, once they hold many periods.
      if redis.call('HLEN', key) > 64 then
        local stale = stale_fields(redis.call('HGETALL', key), field, first)
        if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
      end
      add(key, field, amount)
      keep_until(key, finish, sec)
    end
  end
end
return {'added', appended}
