-- Usage events (tollway.policy.stores.events_redis), as a Lua function concatenated into
-- the counter scripts, so that an event is appended in the same atomic step as the
-- counter change it records.
--
-- event_append(key, a, i) appends to the stream `key` (declared in the calling script's
-- KEYS, as every key a script touches) and reads 2 values a[i], a[i+1] (built by
-- RedisEventStream.append_args): the most entries the stream may hold, the event as JSON.
-- Returns 1 when appended, -1 when the stream is full (nothing appended: the caller
-- counts the event as dropped).
-- `text`, when given, replaces the event's JSON (the event with ledger entries added).
local function event_append(key, a, i, text)
  if redis.call('XLEN', key) >= tonumber(a[i]) then return -1 end
  redis.call('XADD', key, '*', 'e', text or a[i + 1])
  return 1
end
