-- KEYS: run, pending, steps, indexes...
-- ARGV: run id, epoch, number of history entries, entries..., keys...
-- Before a workflow joins the waiter sets of its pending keys: a new batch number, the
-- pending set (the keys, plus '' that only run_arm removes, so no commit can resume the
-- run before it has finished suspending) and the history of the steps it asked for.
-- -1 when the caller's epoch no longer holds the run (it is fenced).
local run = KEYS[1]
local state = redis.call('HGET', run, 'state')
if not holds(run, ARGV[2]) or state ~= 'running' then
  return -1
end
local batch = redis.call('HINCRBY', run, 'batch', 1)
enter(run, state, 'suspending', now_ms())
redis.call('DEL', KEYS[2], KEYS[3])
local n = tonumber(ARGV[3])
if n > 0 then
  redis.call('RPUSH', KEYS[3], unpack(ARGV, 4, 3 + n))
end
redis.call('SADD', KEYS[2], '')
if #ARGV > 3 + n then
  redis.call('SADD', KEYS[2], unpack(ARGV, 4 + n, #ARGV))
end
return batch
