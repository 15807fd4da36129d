-- KEYS: indexes...   ARGV: run id, in_ms
-- Bring a due run's next look forward to in_ms from now (never later than it is, and
-- only while the run is in the due index): the reconciler saw what it waits for end then.
return redis.call('ZADD', DUE, 'XX', 'LT', 'CH', now_ms() + tonumber(ARGV[2]), RUN_ID)
