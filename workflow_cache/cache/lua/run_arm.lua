-- KEYS: run, pending   ARGV: batch, keys found done while joining...
-- The workflow has joined every waiter set: drop '' and the keys already done. Empty ->
-- "go" (everything committed meanwhile: carry on in place); else "wait" (suspended: the
-- commit that empties the set resumes it).
if redis.call('HGET', KEYS[1], 'batch') ~= ARGV[1] then
  return 'stale'
end
redis.call('SREM', KEYS[2], '')
if #ARGV > 1 then
  redis.call('SREM', KEYS[2], unpack(ARGV, 2, #ARGV))
end
if redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[1], 'state', 'running')
  return 'go'
end
redis.call('HSET', KEYS[1], 'state', 'suspended')
return 'wait'
