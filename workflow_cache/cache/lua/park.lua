-- KEYS: lock[, by]   ARGV: token, parked value, px
-- A parked claim waits for the retried message, not for this process: no presence.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  if KEYS[2] then
    redis.call('DEL', KEYS[2])
  end
  return 1
end
return 0
