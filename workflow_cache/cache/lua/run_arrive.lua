-- KEYS: run, pending, given, steps, indexes...
-- ARGV: run id, batch, step key, outcome ('' when it is stored), recheck_ms (0: due at
--       once, for a caller that cannot send the resume itself: the reconciler sends it),
--       lease_ms, n, then n workflow task names and the queues a caller could carry on
-- A key the run waits on has committed. The caller whose arrival empties the pending set
-- of a suspended run gets "resume" and the message to send: exactly one per batch. The
-- run is then due for a recheck, so a resume lost on its way is sent again. When the
-- run's task and queue are among those the caller named, the caller takes the run
-- instead (a suspended run only), as run_begin would for the resume's delivery, and gets
-- "carry", the resume and run_begin's reply: it replays the run itself, no message sent.
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
  local task, queue = redis.call('HGET', run, 'task'), redis.call('HGET', run, 'queue')
  local resume = {task, redis.call('HGET', run, 'args'), redis.call('HGET', run, 'kwargs'),
    queue}
  local n = tonumber(ARGV[7] or '0')
  local task_ok, queue_ok = false, false
  for i = 8, 7 + n do
    task_ok = task_ok or ARGV[i] == task
  end
  for i = 8 + n, #ARGV do
    queue_ok = queue_ok or ARGV[i] == queue
  end
  if task_ok and queue_ok and state == 'suspended' then
    return {'carry', resume, take(run, KEYS[4], KEYS[3], KEYS[2], state, now, ARGV[6], true)}
  end
  enter(run, state, 'resuming', now)
  redis.call('HSET', run, 'checks', 0)
  redis.call('ZADD', DUE, now + tonumber(ARGV[5]), RUN_ID)
  return {'resume', unpack(resume)}
end
return {'wait'}
