-- KEYS: out, lock, queued, epoch, waiters
-- ARGV: task_id, queued_ttl_ms, member ("<run id>|<batch>"), waiters_ttl_ms,
--       send ('0': nothing to send, e.g. an event that only send_event commits)
-- enqueue for a suspending workflow: outcome stored -> done; otherwise the workflow joins
-- the key's waiter set in this same step (so the commit, which moves that set, cannot be
-- missed), and sends the message when nothing is queued or running yet.
local out = redis.call('GET', KEYS[1])
if out then
  return {'done', out}
end
redis.call('SADD', KEYS[5], ARGV[3])
redis.call('PEXPIRE', KEYS[5], ARGV[4])
if ARGV[5] == '0' then
  return {'busy', 'external'}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'busy', 'claimed'}
end
local queued = redis.call('GET', KEYS[3])
if queued then
  return {'busy', queued}
end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
return {'send', ARGV[1]}
