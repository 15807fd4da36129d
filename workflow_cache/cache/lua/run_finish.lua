-- KEYS: run, pending, steps, given, indexes...
-- ARGV: run id, epoch, outcome, retention_ms, recheck_ms
-- The delivery holding epoch ends the run: done, its outcome in the record, the record
-- kept for the retention. 0 when the delivery is fenced (a later delivery took the run,
-- or it was cancelled). The caller then writes ``run:<id>``; the run stays due once
-- more, so the reconciler writes it if the caller died first.
local run = KEYS[1]
local state = redis.call('HGET', run, 'state')
if not holds(run, ARGV[2]) or state ~= 'running' then
  return 0
end
local now = now_ms()
enter(run, state, 'done', now)
redis.call('HSET', run, 'outcome', ARGV[3])
redis.call('HDEL', run, 'lease')
redis.call('ZADD', DUE, now + tonumber(ARGV[5]), RUN_ID)
redis.call('DEL', KEYS[2])
for i = 1, 4 do
  redis.call('PEXPIRE', KEYS[i], ARGV[4])
end
return 1
