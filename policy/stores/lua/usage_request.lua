-- Count one admitted request on its own (usage.lua is prepended when the script is loaded):
-- a decision with no counters to consume still counts, in one round trip.
-- KEYS: none (see usage.lua for the keys it builds from the prefix).
-- ARGV[1..5]: the values of usage_request (usage.lua), from usage_redis.request_args.
usage_request(ARGV, 1)
return 1
