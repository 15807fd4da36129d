-- KEYS: run, indexes...   ARGV: run id, epoch, lease_ms
-- The delivery holding epoch renews the run's lease; 0 when it no longer holds the run
-- (superseded after its lease lapsed, cancelled, or suspended meanwhile).
local run = KEYS[1]
if not holds(run, ARGV[2]) or not LEASED[redis.call('HGET', run, 'state')] then
  return 0
end
local lease = now_ms() + tonumber(ARGV[3])
redis.call('HSET', run, 'lease', lease)
redis.call('ZADD', DUE, lease, RUN_ID)
return 1
