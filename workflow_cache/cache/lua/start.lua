-- KEYS: out, lock, epoch, queued[, by]
-- ARGV: owner, lease_ms, epoch_ttl_ms, task_id[, presence ('' = none), channel]
-- With a presence, the claim is announced on the channel ("s<presence> <token>"), so
-- producers waiting on the step learn at once which process to watch.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'done'}
end
local holder = redis.call('GET', KEYS[2])
if holder then
  local mine = 'parked:' .. ARGV[4] .. '|'
  if string.sub(holder, 1, #mine) ~= mine then
    local by = KEYS[5] and redis.call('GET', KEYS[5]) or ''
    return {'running', holder, redis.call('PTTL', KEYS[2]), by or ''}
  end
end
local epoch = redis.call('INCR', KEYS[3])
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
local token = ARGV[1] .. '|' .. epoch
redis.call('SET', KEYS[2], token, 'PX', ARGV[2])
if KEYS[5] then
  if ARGV[5] and ARGV[5] ~= '' then
    redis.call('SET', KEYS[5], ARGV[5], 'PX', ARGV[2])
    if ARGV[6] then
      redis.call('PUBLISH', ARGV[6], 's' .. ARGV[5] .. ' ' .. token)
    end
  else
    redis.call('DEL', KEYS[5])
  end
end
redis.call('DEL', KEYS[4])
return {'claimed', token, epoch}
