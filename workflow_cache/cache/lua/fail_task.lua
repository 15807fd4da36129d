-- KEYS: out, lock, queued, epoch, last[, waiters, handoff[, by]]
-- ARGV: owner prefix, outcome, ttl_ms (0 = none), keep (1/0), channel, task_id, last_ttl_ms
local holder = redis.call('GET', KEYS[2])
local epoch
if holder then
  if string.sub(holder, 1, #ARGV[1]) ~= ARGV[1] then
    return 0
  end
  epoch = tonumber(string.sub(holder, string.find(holder, '|[^|]*$') + 1))
elseif redis.call('EXISTS', KEYS[1]) == 1 or redis.call('GET', KEYS[3]) ~= ARGV[6] then
  return 0
else
  epoch = tonumber(redis.call('GET', KEYS[4]) or '0') + 1  -- the claim it never took
end
if ARGV[4] == '1' then
  if tonumber(ARGV[3]) > 0 then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  else
    redis.call('SET', KEYS[1], ARGV[2])
  end
else
  redis.call('SET', KEYS[5], epoch .. '|' .. ARGV[2], 'PX', ARGV[7])
end
redis.call('DEL', KEYS[2], KEYS[3])
if KEYS[8] then
  redis.call('DEL', KEYS[8])
end
if KEYS[7] and redis.call('EXISTS', KEYS[6]) == 1 then
  redis.call('SUNIONSTORE', KEYS[7], KEYS[7], KEYS[6])
  redis.call('DEL', KEYS[6])
  redis.call('PEXPIRE', KEYS[7], 604800000)
end
redis.call('PUBLISH', ARGV[5], 'o' .. ARGV[2])
return 1
