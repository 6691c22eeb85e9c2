-- balance_read.lua: one balance now.
-- KEYS[1]     the balance hash {prefix}b:{balance}:{key}
-- KEYS[2]     {prefix}bl, the mark that the balances are loaded
-- Returns {loaded (1/0), bal, reserved} (reservations past their second left out).
local tm = redis.call('TIME')
if redis.call('EXISTS', KEYS[2]) == 0 then return {0, 0, 0} end
local bal, reserved = balance_read(KEYS[1], tonumber(tm[1]))
return {1, int(bal), int(reserved)}
