-- KEYS: run, pending, indexes...   ARGV: run id, recheck_ms, max_recheck_ms
-- The reconciler looks at a run whose due time has come. A cancelled run is looked at
-- once (its task is sent a last time, to report the outcome), a done one once (its
-- outcome, for the reconciler to write under run:<id> if its finisher died before it
-- did: {'done', outcome}). A missing run leaves the due index ({'forget'}); a live lease puts it back at the lease's end
-- ({'wait'}); otherwise it is due again after a recheck delay that doubles with each
-- look (up to max_recheck_ms), and the reply carries what run_states.due_action needs:
-- {state, lease lapsed (0/1), batch, task, args, kwargs, queue, pending keys}.
local run = KEYS[1]
local state = redis.call('HGET', run, 'state')
if state == 'cancelled' then
  redis.call('ZREM', DUE, RUN_ID)
  return {state, 0, redis.call('HGET', run, 'batch') or '0',
    redis.call('HGET', run, 'task'), redis.call('HGET', run, 'args'),
    redis.call('HGET', run, 'kwargs'), redis.call('HGET', run, 'queue'), {}}
end
if state == 'done' then
  redis.call('ZREM', DUE, RUN_ID)
  return {'done', redis.call('HGET', run, 'outcome') or ''}
end
if not LIVE[state] then
  redis.call('ZREM', DUE, RUN_ID)
  return {'forget'}
end
local now = now_ms()
local lease = tonumber(redis.call('HGET', run, 'lease') or '0')
if LEASED[state] and lease > now then
  redis.call('ZADD', DUE, lease, RUN_ID)
  return {'wait'}
end
local checks = redis.call('HINCRBY', run, 'checks', 1)
local delay = math.min(tonumber(ARGV[2]) * 2 ^ math.min(checks - 1, 30), tonumber(ARGV[3]))
local deadline = tonumber(redis.call('HGET', run, 'deadline') or '0')
local due = now + delay
if state == 'waiting' and deadline > 0 then
  if deadline <= now then
    state = 'resuming'  -- its wait timed out: the replay says so
  else
    due = math.min(due, deadline)
  end
end
redis.call('ZADD', DUE, due, RUN_ID)
return {state, LEASED[state] and 1 or 0, redis.call('HGET', run, 'batch') or '0',
  redis.call('HGET', run, 'task'), redis.call('HGET', run, 'args'),
  redis.call('HGET', run, 'kwargs'), redis.call('HGET', run, 'queue'),
  redis.call('SMEMBERS', KEYS[2])}
