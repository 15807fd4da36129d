-- KEYS: run, pending, steps, given, indexes...   ARGV: run id, outcome, retention_ms
-- cancel_run: a live run ends as cancelled with the given (err) outcome; a new epoch
-- fences the delivery in progress, if any (its renewal, batches and finish are refused,
-- so it stops at its next step); later commits find it not suspended and resume nothing.
-- The run stays due once, at once: the reconciler sends its task a last time so that
-- the result backend gets the outcome too (run_due). 0 for a finished or unknown run,
-- which stays as it is.
local run = KEYS[1]
local state = redis.call('HGET', run, 'state')
if not LIVE[state] then
  return 0
end
redis.call('HINCRBY', run, 'epoch', 1)
local now = now_ms()
enter(run, state, 'cancelled', now)
redis.call('HSET', run, 'outcome', ARGV[2])
redis.call('HDEL', run, 'lease')
redis.call('ZADD', DUE, now, RUN_ID)
redis.call('DEL', KEYS[2])
for i = 1, 4 do
  redis.call('PEXPIRE', KEYS[i], ARGV[3])
end
return 1
