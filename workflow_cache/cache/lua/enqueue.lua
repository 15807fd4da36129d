-- KEYS: out, lock, queued, epoch, last[, by]
-- ARGV: task_id, queued_ttl_ms, since ('' = new caller)
-- Replies carry "since": the lowest epoch of an execution this caller may take the
-- outcome of (the running one's, or the next one's when nothing runs yet). A busy claim
-- also carries the lock's token and the holder's presence id ('' if none), for a waiter
-- that checks the holder is alive (protocol.py).
local out = redis.call('GET', KEYS[1])
if out then
  return {'done', out}
end
if ARGV[3] ~= '' then
  local last = redis.call('GET', KEYS[5])
  if last then
    local bar = string.find(last, '|', 1, true)
    if bar and tonumber(string.sub(last, 1, bar - 1)) >= tonumber(ARGV[3]) then
      return {'done', string.sub(last, bar + 1)}
    end
  end
end
local epoch = tonumber(redis.call('GET', KEYS[4]) or '0')
local holder = redis.call('GET', KEYS[2])
if holder then
  local by = KEYS[6] and redis.call('GET', KEYS[6]) or ''
  return {'busy', 'claimed', epoch, holder, by or ''}
end
local queued = redis.call('GET', KEYS[3])
if queued then
  return {'busy', queued, epoch + 1}
end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
return {'send', ARGV[1], epoch + 1}
