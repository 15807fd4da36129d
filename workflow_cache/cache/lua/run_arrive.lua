-- KEYS: run, pending, given   ARGV: batch, step key, outcome ('' when it is stored), ttl_ms
-- A key the run waits on has committed. The caller whose arrival empties the pending set
-- of a suspended run gets "resume" and the message to send: exactly one per batch.
local state = redis.call('HGET', KEYS[1], 'state')
if redis.call('HGET', KEYS[1], 'batch') ~= ARGV[1]
    or (state ~= 'suspended' and state ~= 'suspending') then
  return {'stale'}
end
local removed = redis.call('SREM', KEYS[2], ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
if removed == 1 and state == 'suspended' and redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[1], 'state', 'resuming')
  return {'resume', redis.call('HGET', KEYS[1], 'task'), redis.call('HGET', KEYS[1], 'args'),
    redis.call('HGET', KEYS[1], 'kwargs'), redis.call('HGET', KEYS[1], 'queue')}
end
return {'wait'}
