-- balance_load.lua: set the balances from the ledger's totals, unless they are here.
-- KEYS[1]     {prefix}bl, the mark that the balances are loaded
-- KEYS[2..]   balance hashes {prefix}b:{balance}:{key}
-- ARGV[1..]   the units of each balance, in the order of KEYS[2..]
-- Returns 1 when loaded now, 0 when they were loaded already (nothing written).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #KEYS do
  redis.call('HSET', KEYS[i], 'bal', ARGV[i - 1])
end
redis.call('SET', KEYS[1], '1')
return 1
