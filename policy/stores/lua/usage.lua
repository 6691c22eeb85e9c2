-- Usage accounting (tollway.policy.usage), as Lua functions meant to be concatenated into
-- the counter scripts, so that usage changes in the same atomic step as the counters:
--   usage_apply(ARGV, i)    a report, once it is known not to be a duplicate (report script)
--   usage_request(ARGV, i)  an admitted, consumed decision: one request (consume script)
-- This file is the one place that knows the usage key layout. Every name defined here
-- starts with `usage_`.
--
-- usage_apply(args, i) reads USAGE_ARGC = 14 consecutive values args[i] .. args[i+13]
-- (built by tollway.policy.stores.usage_redis.usage_args):
--   i+0  key prefix ("tollway:")         i+7  output tokens
--   i+1  user id ('' when none)          i+8  cost in nano-USD (integer)
--   i+2  group id ('' when none)         i+9  duration in microseconds (integer)
--   i+3  model                           i+10 the event as JSON (recent lists, activity)
--   i+4  time, unix microseconds         i+11 recent reports kept per entity (50)
--   i+5  '1' counts a request, '0' not   i+12 activity log: most events kept
--   i+6  input tokens                    i+13 activity log: oldest kept, milliseconds of age
--
-- usage_request(args, i) reads USAGE_REQUEST_ARGC = 5 values (usage_redis.request_args):
--   i+0  key prefix, i+1 user id ('' when none), i+2 group id ('' when none),
--   i+3  the served model, i+4 time, unix microseconds
-- It counts one request and widens first/last seen; no amounts, no recent report, no
-- activity entry (those are the report's).
--
-- Keys (built from the prefix, so not declared in KEYS: standalone or Sentinel Redis):
--   {p}usage:{user|group}:{id}             hash: request_count, first_seen, last_seen (us),
--                                          input_tokens, output_tokens, total_tokens,
--                                          cost (nano-USD), duration (us),
--                                          m:{model}:n, m:{model}:tokens, m:{model}:cost
--   {p}usage:{users|groups}:by:{field}     sorted set of ids per sort field
--   {p}usage:recent:{user|group}:{id}      list of event JSON, newest first
--   {p}usage:activity                      stream, ID = event ms, field e = event JSON

-- Integers as Redis arguments: tostring() would print 1e+15 for large doubles.
local function usage_int(n)
  return string.format('%d', n)
end

-- An entity's hash, and the prefix of its kind's sort indexes (append the sort field).
local function usage_keys(p, kind, id)
  return p .. 'usage:' .. kind .. ':' .. id, p .. 'usage:' .. kind .. 's:by:'
end

-- Widen the entity's first/last seen to `t` (unix microseconds, a string); true when the
-- entity had never been seen (so it is not in any sort index yet).
local function usage_seen(key, idx, id, t)
  local tn = tonumber(t)
  local seen = redis.call('HMGET', key, 'first_seen', 'last_seen')
  local first, last = seen[1], seen[2]
  if not first or tn < tonumber(first) then
    redis.call('HSET', key, 'first_seen', t)
    redis.call('ZADD', idx .. 'first_seen', t, id)
  end
  if not last or tn > tonumber(last) then
    redis.call('HSET', key, 'last_seen', t)
    redis.call('ZADD', idx .. 'last_seen', t, id)
  end
  return not first
end

-- One request for the entity and for `model`.
local function usage_count(key, idx, id, model)
  local count = redis.call('HINCRBY', key, 'request_count', 1)
  redis.call('ZADD', idx .. 'request_count', usage_int(count), id)
  redis.call('HINCRBY', key, 'm:' .. model .. ':n', 1)
end

local function usage_entity(p, kind, id, a, i)
  local model, t = a[i + 3], a[i + 4]
  local cost = a[i + 8]
  local key, idx = usage_keys(p, kind, id)
  local new = usage_seen(key, idx, id, t)
  if a[i + 5] == '1' then
    usage_count(key, idx, id, model)
  elseif new then
    redis.call('ZADD', idx .. 'request_count', 0, id)
  end
  redis.call('HINCRBY', key, 'input_tokens', a[i + 6])
  redis.call('HINCRBY', key, 'output_tokens', a[i + 7])
  local tokens = usage_int(tonumber(a[i + 6]) + tonumber(a[i + 7]))
  local total = redis.call('HINCRBY', key, 'total_tokens', tokens)
  redis.call('ZADD', idx .. 'total_tokens', usage_int(total), id)
  local spent = redis.call('HINCRBY', key, 'cost', cost)
  redis.call('ZADD', idx .. 'total_cost', usage_int(spent), id)
  redis.call('HINCRBY', key, 'duration', a[i + 9])
  local m = 'm:' .. model .. ':'
  redis.call('HINCRBY', key, m .. 'tokens', tokens)
  redis.call('HINCRBY', key, m .. 'cost', cost)
  local recent = p .. 'usage:recent:' .. kind .. ':' .. id
  redis.call('LPUSH', recent, a[i + 10])
  redis.call('LTRIM', recent, 0, tonumber(a[i + 11]) - 1)
end

-- One admitted request of one entity: the request side only.
local function usage_request_entity(p, kind, id, model, t)
  local key, idx = usage_keys(p, kind, id)
  if usage_seen(key, idx, id, t) then
    -- a new entity enters the amount orders too, at zero, so every listing shows it
    redis.call('ZADD', idx .. 'total_cost', 'NX', 0, id)
    redis.call('ZADD', idx .. 'total_tokens', 'NX', 0, id)
  end
  usage_count(key, idx, id, model)
end

-- The stream's newest ID in milliseconds (even when every entry was trimmed away).
local function usage_last_ms(key)
  local info = redis.call('XINFO', 'STREAM', key)
  for j = 1, #info, 2 do
    if info[j] == 'last-generated-id' then
      return string.match(info[j + 1], '^(%d+)-')
    end
  end
  return '0'
end

local function usage_log(p, a, i)
  local key = p .. 'usage:activity'
  local ms = math.floor(tonumber(a[i + 4]) / 1000)
  local max_n = a[i + 12]
  local added = redis.pcall('XADD', key, 'MAXLEN', '=', max_n, usage_int(ms) .. '-*',
    'e', a[i + 10])
  if type(added) == 'table' and added.err then
    -- older than the newest entry (clocks of replicas differ): file it after the newest,
    -- so the log stays in arrival order; readers filter on the event's own time
    redis.call('XADD', key, 'MAXLEN', '=', max_n, usage_last_ms(key) .. '-*', 'e', a[i + 10])
  end
  local horizon = ms - tonumber(a[i + 13])
  if horizon > 0 then
    redis.call('XTRIM', key, 'MINID', '=', usage_int(horizon))
  end
end

local function usage_request(a, i)
  local p, model, t = a[i], a[i + 3], a[i + 4]
  if a[i + 1] ~= '' then usage_request_entity(p, 'user', a[i + 1], model, t) end
  if a[i + 2] ~= '' then usage_request_entity(p, 'group', a[i + 2], model, t) end
end

local function usage_apply(a, i)
  local p = a[i]
  if a[i + 1] ~= '' then usage_entity(p, 'user', a[i + 1], a, i) end
  if a[i + 2] ~= '' then usage_entity(p, 'group', a[i + 2], a, i) end
  usage_log(p, a, i)
end
