-- KEYS: run (hash), steps (list), given (hash), pending (set), started set of the task,
--       indexes...
-- ARGV: run id, batch of this delivery (0 = first), task, args, kwargs, queue, lease_ms
-- A delivery of run W starts. Finished (done or cancelled) -> its outcome; a delivery for
-- an older batch (a stale resume) -> stale; another delivery holds a live lease -> busy.
-- Otherwise this delivery takes the run (`take`; its lease is renewed by run_renew).
local run = KEYS[1]
local state = redis.call('HGET', run, 'state')
if state == 'done' or state == 'cancelled' then
  return {'done', redis.call('HGET', run, 'outcome') or ''}
end
local batch = tonumber(redis.call('HGET', run, 'batch') or '0')
local asked = tonumber(ARGV[2])
if state and asked ~= batch and state ~= 'suspending' then
  return {'stale', batch}
end
local now = now_ms()
if LEASED[state] and tonumber(redis.call('HGET', run, 'lease') or '0') > now then
  return {'busy', batch}
end
if not state then
  redis.call('HSET', run, 'task', ARGV[3], 'args', ARGV[4], 'kwargs', ARGV[5],
    'queue', ARGV[6], 'batch', 0, 'replays', 0, 'epoch', 0, 'started', now)
  redis.call('ZADD', STARTED, now, RUN_ID)
  redis.call('ZADD', KEYS[5], now, RUN_ID)
  redis.call('HSET', TASK_OF, RUN_ID, ARGV[3])
end
return take(run, KEYS[2], KEYS[3], KEYS[4], state, now, ARGV[7], asked > 0)
