-- Balances, as Lua functions prepended to the scripts that spend from them (the spending
-- variants of consume.lua and report.lua) and to the balance scripts. Mirrors
-- tollway.policy.stores.spending. A balance is a hash {prefix}b:{balance}:{key}: field
-- 'bal' holds credits less settled spending, and each open reservation is a field
-- 'h:<hold_id>' = '<units>:<until second>' (dropped once past its second). The key
-- {prefix}bl exists while the balances loaded from the ledger are here: without it
-- nothing spends (Redis lost them).

-- A balance now: (bal, reserved, the reservation fields past their time).
local function balance_read(key, sec)
  local all = redis.call('HGETALL', key)
  local bal, reserved, stale = 0, 0, {}
  for j = 1, #all, 2 do
    local f = all[j]
    if f == 'bal' then
      bal = tonumber(all[j + 1])
    elseif string.sub(f, 1, 2) == 'h:' then
      local units, finish = string.match(all[j + 1], '^(%-?%d+):(%d+)$')
      if tonumber(finish) <= sec then
        stale[#stale + 1] = f
      else
        reserved = reserved + tonumber(units)
      end
    end
  end
  return bal, reserved, stale
end

local function chain_split(quota_amount, room, amount, ratio)
  local take = quota_amount
  if room < take then take = room end
  local rest = amount - take * ratio
  if rest < 0 then rest = 0 end
  return take, rest
end

local function fits_balance(need, available, covered)
  if need > 0 then return need <= available end
  return covered or available > 0
end

local function settle_split(actual, quota_held, balance_held, ratio)
  local by_quota = quota_held * ratio
  local share = actual
  if balance_held > 0 or actual <= by_quota then
    if by_quota < actual then share = by_quota end
  end
  return math.ceil(share / ratio), actual - share
end

-- The 6 values of balance j in `a` after index `base`: amount units, position of its
-- quota among the counters (0: alone), balance units per quota unit, name, scope key,
-- metric.
local function balance_args(a, base, j)
  local b = base + (j - 1) * 6
  return tonumber(a[b + 1]), tonumber(a[b + 2]), tonumber(a[b + 3]), a[b + 4], a[b + 5], a[b + 6]
end

-- Check the balances of one decision against the counters read into `plans` (each with
-- amount, limit, used, fits): a chained quota takes what room it has and its balance
-- the rest. Returns admitted (1/0) and the plan of each balance.
local function spend_check(plans, n, nb, a, base, kbase, sec)
  local spends = {}
  for j = 1, nb do
    local amount, after, ratio, name, scope, metric = balance_args(a, base, j)
    local key = KEYS[kbase + j]
    local bal, reserved, stale = balance_read(key, sec)
    local need, covered = amount, false
    if after > 0 then
      local p = plans[after]
      local room = p.limit - p.used
      if room < 0 then room = 0 end
      p.take, need = chain_split(p.amount, room, amount, ratio)
      covered = p.amount > 0 or p.used < p.limit
    end
    local fits = fits_balance(need, bal - reserved, covered)
    if after > 0 then
      -- the quota refuses only with its balance: its buckets come back only then
      plans[after].fits, plans[after].exceeded = fits, not fits
    end
    spends[j] = {key = key, need = need, fits = fits, bal = bal, reserved = reserved,
                 stale = stale, after = after, ratio = ratio, name = name, scope = scope,
                 metric = metric}
  end
  local admitted = 1
  for i = 1, n do
    if not plans[i].fits then admitted = 0 end
    if plans[i].take then plans[i].amount = plans[i].take end
  end
  for j = 1, nb do
    if not spends[j].fits then admitted = 0 end
  end
  return admitted, spends
end

-- Write what spend_check planned: the reservations of an admitted decision (spent at
-- once when there is no reservation record); returns the parts the record keeps.
local function spend_write(spends, admitted, hold_id, finish)
  local parts = {}
  for j = 1, #spends do
    local s = spends[j]
    if #s.stale > 0 then redis.call('HDEL', s.key, unpack(s.stale)) end
    if admitted == 1 then
      if hold_id ~= '' then
        if s.need > 0 then
          redis.call('HSET', s.key, 'h:' .. hold_id, int(s.need) .. ':' .. int(finish))
        end
        parts[#parts + 1] = {s.key, int(s.need), s.after, s.ratio, s.name, s.scope, s.metric}
      elseif s.need > 0 then
        redis.call('HINCRBY', s.key, 'bal', int(-s.need))
      end
    end
  end
  return parts
end

-- The reply's 4 values of each balance, after the counters': bal, reserved, what it
-- reserved, fits (1/0).
local function spend_states(spends, reply)
  for j = 1, #spends do
    local s = spends[j]
    reply[#reply + 1] = s.bal
    reply[#reply + 1] = s.reserved
    reply[#reply + 1] = s.need
    reply[#reply + 1] = s.fits and 1 or 0
  end
  return reply
end

-- An event's JSON with ledger entries added (usage.LedgerEntry.as_list: amounts as text).
local function with_ledger(event, ledger)
  if #ledger == 0 then return event end
  return string.sub(event, 1, -2) .. ',"ledger":' .. cjson.encode(ledger) .. '}'
end

-- Settle the balance parts of a reservation record against the actuals; parts whose
-- key this call did not declare are left (their reservation field expires). Returns the
-- units each chained quota keeps, by its position among the held counters.
local function settle_balances(parts, held, actual, declared, hold_id, ledger)
  local shares = {}
  for _, part in ipairs(parts) do
    local key, units, after, ratio = part[1], tonumber(part[2]), part[3], part[4]
    local name, scope, metric = part[5], part[6], part[7]
    if declared[key] and actual[metric .. '#b'] ~= nil then
      redis.call('HDEL', key, 'h:' .. hold_id)
      local amount = actual[metric .. '#b']
      local paid = amount
      if after > 0 then
        local quota_units
        quota_units, paid = settle_split(amount, tonumber(held[after][4]), units, ratio)
        shares[after] = quota_units
      end
      if paid ~= 0 then
        redis.call('HINCRBY', key, 'bal', int(-paid))
        ledger[#ledger + 1] = {name, scope, int(-paid), 'spend', '', hold_id}
      end
    end
  end
  return shares
end
