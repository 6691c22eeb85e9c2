-- Apply one usage event on its own (usage.lua is prepended when the script is loaded).
-- KEYS: none (see usage.lua for the keys it builds from the prefix).
-- ARGV[1..14]: the values of usage_apply (usage.lua), from usage_redis.usage_args.
usage_apply(ARGV, 1)
return 1
