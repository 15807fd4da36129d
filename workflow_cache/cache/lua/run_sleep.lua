-- KEYS: run, pending, steps, indexes...
-- ARGV: run id, epoch, timer (step key), duration_ms, recheck_ms, number of history
--       entries, entries...
-- step.sleep in a workflow task. The timer's wake time is written once in the record
-- (``timer:<key>``), so a replay after the wake-up finds it passed: {'go'}. Otherwise
-- the run sleeps: a new batch that waits on nothing, due at the wake time (plus a
-- recheck, for the reconciler to send the resume if the timer's own message is lost),
-- and the reply carries the resume to send with a countdown:
-- {'sleep', batch, ms until the wake time, task, args, kwargs, queue}. {'fenced'} when
-- the caller's epoch no longer holds the run.
local run = KEYS[1]
local state = redis.call('HGET', run, 'state')
if not holds(run, ARGV[2]) or state ~= 'running' then
  return {'fenced'}
end
local now = now_ms()
local wake = once(run, 'timer:' .. ARGV[3], now, ARGV[4])
if wake <= now then
  return {'go'}
end
local batch = redis.call('HINCRBY', run, 'batch', 1)
enter(run, state, 'sleeping', now)
redis.call('DEL', KEYS[2], KEYS[3])
local n = tonumber(ARGV[6])
if n > 0 then
  redis.call('RPUSH', KEYS[3], unpack(ARGV, 7, 6 + n))
end
redis.call('HDEL', run, 'lease')
redis.call('HSET', run, 'checks', 0, 'wake', wake)
redis.call('ZADD', DUE, wake + tonumber(ARGV[5]), RUN_ID)
return {'sleep', batch, wake - now, redis.call('HGET', run, 'task'),
  redis.call('HGET', run, 'args'), redis.call('HGET', run, 'kwargs'),
  redis.call('HGET', run, 'queue')}
