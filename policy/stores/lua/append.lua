-- Append one usage event on its own (events.lua is prepended when the script is loaded):
-- a decision with no counters to consume, in one round trip.
-- KEYS[1]: the stream.
-- ARGV[1..2]: the values of event_append (events.lua).
return event_append(KEYS[1], ARGV, 1)
