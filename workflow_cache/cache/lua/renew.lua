-- KEYS: lock[, by]   ARGV: token, lease_ms[, presence]
-- Renewing also records the holder's presence id now (it changes when its process
-- reconnected): a waiter takes over only while "by" still names the id it saw gone.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if KEYS[2] and ARGV[3] and ARGV[3] ~= '' then
    redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
  end
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
