-- KEYS: out, lock, epoch   ARGV: owner, lease_ms, epoch_ttl_ms (0 = no expiry)
local out = redis.call('GET', KEYS[1])
if out then
  return {'done', out}
end
local holder = redis.call('GET', KEYS[2])
if holder then
  return {'running', holder, redis.call('PTTL', KEYS[2])}
end
local epoch = redis.call('INCR', KEYS[3])
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
local token = ARGV[1] .. '|' .. epoch
redis.call('SET', KEYS[2], token, 'PX', ARGV[2])
return {'claimed', token, epoch}
