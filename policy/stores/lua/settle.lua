-- settle.lua: the parts of a settled reservation that report.lua could not reach (their
-- counters were not among the keys the report declared), each with its key declared now.
-- KEYS[1..n]  the counters
-- ARGV[1]     the clock: '', 'D<deadline µs>' or a unix second (now_parts, common.lua)
-- ARGV[2..]   3 values per counter: field, delta units, finish (unix second)
-- Returns 1, or 'late' (Redis's clock was past the deadline: nothing was written).
local sec, _, late = now_parts(ARGV[1])
if late then return 'late' end
for i = 1, #KEYS do
  local err = need_hash(KEYS[i])
  if err then return err end
end
for i = 1, #KEYS do
  local base = 1 + (i - 1) * 3
  settle_part(KEYS[i], ARGV[base + 1], tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), sec)
end
return 1
