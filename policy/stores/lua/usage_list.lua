-- A filtered page of a usage listing (search and/or start/end), in one round trip.
-- Walks the sort index in order, 1000 ids at a time: O(n) in the entities of the kind,
-- run inside Redis (about 50 ms per 100,000 ids), which blocks other commands that long.
-- KEYS[1] the sort index ({p}usage:users:by:total_cost…), KEYS[2] the first_seen index,
-- KEYS[3] the last_seen index.
-- ARGV[1] '1' for descending, ARGV[2] search text lower-cased ('' for none),
-- ARGV[3] start in unix microseconds ('' for none), ARGV[4] end ('' for none),
-- ARGV[5] offset, ARGV[6] limit.
-- Returns {count of matches, {ids of the page}}.
local desc = ARGV[1] == '1'
local needle = ARGV[2]
local start = tonumber(ARGV[3])
local finish = tonumber(ARGV[4])
local offset = tonumber(ARGV[5])
local limit = tonumber(ARGV[6])
local total = redis.call('ZCARD', KEYS[1])
local count = 0
local page = {}
local chunk = 1000
local pos = 0
while pos < total do
  local ids
  if desc then
    ids = redis.call('ZREVRANGE', KEYS[1], pos, pos + chunk - 1)
  else
    ids = redis.call('ZRANGE', KEYS[1], pos, pos + chunk - 1)
  end
  for _, id in ipairs(ids) do
    local ok = needle == '' or string.find(string.lower(id), needle, 1, true) ~= nil
    if ok and start then
      ok = tonumber(redis.call('ZSCORE', KEYS[3], id)) >= start
    end
    if ok and finish then
      ok = tonumber(redis.call('ZSCORE', KEYS[2], id)) < finish
    end
    if ok then
      if count >= offset and count < offset + limit then
        page[#page + 1] = id
      end
      count = count + 1
    end
  end
  pos = pos + chunk
end
return {count, page}
