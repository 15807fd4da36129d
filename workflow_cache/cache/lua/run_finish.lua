-- KEYS: run, out, pending   ARGV: outcome, channel, ttl_ms (record and outcome)
-- The run is done: its outcome is stored under its own key and announced.
redis.call('HSET', KEYS[1], 'state', 'done')
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
redis.call('DEL', KEYS[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[2], 'o' .. ARGV[1])
return 1
