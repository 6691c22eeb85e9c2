-- Usage events (tollway.policy.stores.events_redis), as a Lua function concatenated into
-- the counter scripts, so that an event is appended in the same atomic step as the
-- counter change it records.
--
-- event_append(args, i) reads 3 values args[i] .. args[i+2] (built by
-- RedisEventStream.append_args): the stream key, the most entries it may hold, the event
-- as JSON. Returns 1 when appended, -1 when the stream is full (nothing appended: the
-- caller counts the event as dropped).
local function event_append(a, i)
  if redis.call('XLEN', a[i]) >= tonumber(a[i + 1]) then return -1 end
  redis.call('XADD', a[i], '*', 'e', a[i + 2])
  return 1
end
