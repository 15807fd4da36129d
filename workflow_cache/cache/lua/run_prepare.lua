-- KEYS: run, pending, steps   ARGV: ttl_ms, number of history entries, entries..., keys...
-- Before a workflow joins the waiter sets of its pending keys: a new batch number, the
-- pending set (the keys, plus '' that only run_arm removes, so no commit can resume the
-- run before it has finished suspending) and the history of the steps it asked for.
local batch = redis.call('HINCRBY', KEYS[1], 'batch', 1)
redis.call('HSET', KEYS[1], 'state', 'suspending')
redis.call('DEL', KEYS[2], KEYS[3])
local n = tonumber(ARGV[2])
if n > 0 then
  redis.call('RPUSH', KEYS[3], unpack(ARGV, 3, 2 + n))
end
redis.call('SADD', KEYS[2], '')
if #ARGV > 2 + n then
  redis.call('SADD', KEYS[2], unpack(ARGV, 3 + n, #ARGV))
end
for i = 1, 3 do
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
return batch
