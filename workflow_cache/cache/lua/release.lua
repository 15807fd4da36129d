-- KEYS: lock[, by]   ARGV: token, channel
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if KEYS[2] then
    redis.call('DEL', KEYS[2])
  end
  redis.call('PUBLISH', ARGV[2], 'r')
  return 1
end
return 0
