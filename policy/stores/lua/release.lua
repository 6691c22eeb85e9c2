-- release.lua: take back a reservation that consume.lua made in this slot, because the
-- same decision was refused (or could not be made) in another slot of a Redis Cluster.
-- KEYS[1]     reservation record {prefix}{tag}h:{hold_id}
-- KEYS[2..]   the counters of the decision in this slot
-- ARGV[1]     the clock: '', 'D<deadline µs>' or a unix second (now_parts, common.lua)
-- Each reserved amount is taken out of the bucket it went into (never below zero; a
-- bucket that left the window is left alone) and the record is deleted, so running it
-- twice, or where nothing was reserved, changes nothing.
-- Returns 1 (taken back), 0 (no reservation here) or 'late' (Redis's clock was past the
-- deadline: nothing was written).
local sec, _, late = now_parts(ARGV[1])
if late then return 'late' end
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local declared = {}
for i = 2, #KEYS do declared[KEYS[i]] = true end
local held = cjson.decode(raw).c
for _, h in ipairs(held) do
  if declared[h[1]] then
    local err = need_hash(h[1])
    if err then return err end
  end
end
redis.call('DEL', KEYS[1])
for _, h in ipairs(held) do
  if declared[h[1]] then settle_part(h[1], h[2], -tonumber(h[4]), tonumber(h[5]), sec) end
end
return 1
