-- KEYS: run, pending, given, indexes...
-- ARGV: run id, batch, step key, outcome ('' when it is stored), recheck_ms (0: due at
--       once, for a caller that cannot send the resume itself: the reconciler sends it)
-- A key the run waits on has committed. The caller whose arrival empties the pending set
-- of a suspended run gets "resume" and the message to send: exactly one per batch. The
-- run is then due for a recheck, so a resume lost on its way is sent again.
local run = KEYS[1]
local state = redis.call('HGET', run, 'state')
if redis.call('HGET', run, 'batch') ~= ARGV[2]
    or (not PARKED[state] and state ~= 'suspending') then
  return {'stale'}
end
local removed = redis.call('SREM', KEYS[2], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
end
if removed == 1 and PARKED[state] and redis.call('SCARD', KEYS[2]) == 0 then
  local now = now_ms()
  enter(run, state, 'resuming', now)
  redis.call('HSET', run, 'checks', 0)
  redis.call('ZADD', DUE, now + tonumber(ARGV[5]), RUN_ID)
  return {'resume', redis.call('HGET', run, 'task'), redis.call('HGET', run, 'args'),
    redis.call('HGET', run, 'kwargs'), redis.call('HGET', run, 'queue')}
end
return {'wait'}
