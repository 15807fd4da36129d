-- KEYS: out, lock, epoch, last[, waiters, handoff[, by]]
-- ARGV: token, epoch, outcome, ttl_ms (0 = none), keep (1/0), channel, last_ttl_ms[, take]
-- take = '1': a committer that resumes the handed-over runs itself takes the handoff set
-- here too ({2, members}), saving the round trip of take_handoff.
local holder = redis.call('GET', KEYS[2])
if holder then
  if holder ~= ARGV[1] then
    return 0
  end
elseif redis.call('EXISTS', KEYS[1]) == 1 or redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return 0
end
if ARGV[5] == '1' then
  if tonumber(ARGV[4]) > 0 then
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  else
    redis.call('SET', KEYS[1], ARGV[3])
  end
  -- Nobody can claim while the outcome is stored: the epoch is not needed until it
  -- expires, and then a fresh claim restarts at 1 with a new owner in its token.
  redis.call('DEL', KEYS[3])
else
  redis.call('SET', KEYS[4], ARGV[2] .. '|' .. ARGV[3], 'PX', ARGV[7])
end
if holder then
  redis.call('DEL', KEYS[2])
  if KEYS[7] then
    redis.call('DEL', KEYS[7])
  end
end
if KEYS[6] and redis.call('EXISTS', KEYS[5]) == 1 then
  -- workflows suspended on this key: handed over with the outcome, in the same step
  redis.call('SUNIONSTORE', KEYS[6], KEYS[6], KEYS[5])
  redis.call('DEL', KEYS[5])
  redis.call('PEXPIRE', KEYS[6], 604800000)
end
redis.call('PUBLISH', ARGV[6], 'o' .. ARGV[3])
if KEYS[6] and redis.call('EXISTS', KEYS[6]) == 1 then
  if ARGV[8] == '1' then
    local members = redis.call('SMEMBERS', KEYS[6])
    redis.call('DEL', KEYS[6])
    return {2, members}
  end
  return 2  -- committed, and workflows wait in the handoff set for their resume
end
return 1
