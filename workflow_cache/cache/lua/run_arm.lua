-- KEYS: run, pending, indexes...   ARGV: run id, epoch, batch, recheck_ms, keys done...
-- The workflow has joined every waiter set: drop '' and the keys already done. Empty ->
-- "go" (everything committed meanwhile: carry on in place, still leased); else "wait"
-- (suspended: the lease ends, and the run is due for a recheck by the reconciler in
-- case the commit that empties the set never resumes it). "fenced": another delivery
-- holds the run; "stale": a later batch of this delivery replaced this one (concurrent
-- steps of an async workflow), which suspends the run itself.
local run = KEYS[1]
local state = redis.call('HGET', run, 'state')
if not holds(run, ARGV[2]) then
  return 'fenced'
end
if redis.call('HGET', run, 'batch') ~= ARGV[3] or state ~= 'suspending' then
  return 'stale'
end
redis.call('SREM', KEYS[2], '')
if #ARGV > 4 then
  redis.call('SREM', KEYS[2], unpack(ARGV, 5, #ARGV))
end
local now = now_ms()
if redis.call('SCARD', KEYS[2]) == 0 then
  enter(run, state, 'running', now)
  return 'go'
end
enter(run, state, 'suspended', now)
redis.call('HDEL', run, 'lease')
redis.call('HSET', run, 'checks', 0)
redis.call('ZADD', DUE, now + tonumber(ARGV[4]), RUN_ID)
return 'wait'
