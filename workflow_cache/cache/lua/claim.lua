-- KEYS: out, lock, epoch[, by]   ARGV: owner, lease_ms, epoch_ttl_ms (0 = no expiry)[, presence]
-- "by" holds the presence id (CLIENT ID) of the holder's process, while it holds the lock.
local out = redis.call('GET', KEYS[1])
if out then
  return {'done', out}
end
local holder = redis.call('GET', KEYS[2])
if holder then
  local by = KEYS[4] and redis.call('GET', KEYS[4]) or ''
  return {'running', holder, redis.call('PTTL', KEYS[2]), by or ''}
end
local epoch = redis.call('INCR', KEYS[3])
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
local token = ARGV[1] .. '|' .. epoch
redis.call('SET', KEYS[2], token, 'PX', ARGV[2])
if KEYS[4] then
  if ARGV[4] and ARGV[4] ~= '' then
    redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[2])
  else
    redis.call('DEL', KEYS[4])
  end
end
return {'claimed', token, epoch}
