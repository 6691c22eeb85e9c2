-- Append one usage event on its own (events.lua is prepended when the script is loaded):
-- a decision with no counters to consume, in one round trip.
-- KEYS: none (the stream key is ARGV[1], see events.lua).
-- ARGV[1..3]: the values of event_append.
return event_append(ARGV, 1)
