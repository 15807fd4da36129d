-- KEYS: lock, by   ARGV: token, presence, channel
-- A waiter found the holder's presence gone (its process died): end its claim now,
-- only if the lock is still that claim and its presence still the one seen gone.
-- The next claim takes a new epoch, so the dead holder's commit stays refused.
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('PUBLISH', ARGV[3], 'r')
  return 1
end
return 0
