-- KEYS: out   ARGV: the exact bytes read
-- Removes a refused outcome only if nobody replaced it since it was read.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
