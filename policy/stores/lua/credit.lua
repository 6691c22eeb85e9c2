-- credit.lua: add to one balance once per idempotency key, with its ledger event.
-- KEYS[1]     the balance hash {prefix}b:{balance}:{key}
-- KEYS[2]     the idempotency mark {prefix}c:{balance}:{key}:{ref}
-- KEYS[3]     {prefix}bl, the mark that the balances are loaded
-- KEYS[4]     the usage event stream, only when the event's values end ARGV
-- ARGV[1]     units to add (negative: a correction)
-- ARGV[2]     how long the idempotency mark is kept, seconds
-- then        optionally the 2 values of event_append (lua/events.lua): the ledger event
-- Returns 1 applied, 0 seen before, -1 the balances are not loaded (nothing written).
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HINCRBY', KEYS[1], 'bal', ARGV[1])
redis.call('SET', KEYS[2], '1', 'EX', tonumber(ARGV[2]))
if #KEYS == 4 then event_append(KEYS[4], ARGV, 3) end
return 1
