-- KEYS: run, started set of the task, indexes...
-- ARGV: run id, task, args, kwargs, queue, recheck_ms
-- A producer sends a run's first message: the run is recorded before any worker has it,
-- as a run sent but not begun (resuming, batch 0), due for a recheck. A message lost
-- with the worker that held it (killed before the delivery began) is then sent again
-- by the reconciler. A run already recorded (the same task id sent again) is left alone.
local run = KEYS[1]
if redis.call('EXISTS', run) == 1 then
  return 0
end
local now = now_ms()
redis.call('HSET', run, 'task', ARGV[2], 'args', ARGV[3], 'kwargs', ARGV[4],
  'queue', ARGV[5], 'batch', 0, 'replays', 0, 'epoch', 0, 'started', now, 'checks', 0)
redis.call('ZADD', STARTED, now, RUN_ID)
redis.call('ZADD', KEYS[2], now, RUN_ID)
redis.call('HSET', TASK_OF, RUN_ID, ARGV[2])
enter(run, nil, 'resuming', now)
redis.call('ZADD', DUE, now + tonumber(ARGV[6]), RUN_ID)
return 1
