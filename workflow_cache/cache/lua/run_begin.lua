-- KEYS: run (hash), steps (list), given (hash), out
-- ARGV: batch of this delivery (0 = first), task, args, kwargs, queue, ttl_ms
-- A delivery of workflow run W starts: done -> its outcome; a delivery for an older
-- batch (a stale resume) -> stale; otherwise the run is "running" and its recorded
-- history comes back in the same reply.
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' then
  return {'done', redis.call('GET', KEYS[4]) or ''}
end
local batch = tonumber(redis.call('HGET', KEYS[1], 'batch') or '0')
local asked = tonumber(ARGV[1])
if state and asked ~= batch and state ~= 'suspending' then
  return {'stale', batch}
end
if not state then
  redis.call('HSET', KEYS[1], 'task', ARGV[2], 'args', ARGV[3], 'kwargs', ARGV[4],
    'queue', ARGV[5], 'batch', 0, 'replays', 0)
end
local replays = tonumber(redis.call('HGET', KEYS[1], 'replays') or '0')
if asked > 0 then
  replays = redis.call('HINCRBY', KEYS[1], 'replays', 1)
end
redis.call('HSET', KEYS[1], 'state', 'running')
for i = 1, 3 do
  redis.call('PEXPIRE', KEYS[i], ARGV[6])
end
return {'run', batch, replays, redis.call('LRANGE', KEYS[2], 0, -1),
  redis.call('HGETALL', KEYS[3])}
