-- KEYS: queued, by   ARGV: task_id, presence, least_ms
-- A worker's main process received the message of task_id: while that message is still
-- the step's queued one, remember who holds it ("<task id>|<presence id>") for as long
-- as the marker may live (a marker not yet confirmed sent is extended later: at least
-- least_ms). If that process dies before starting the step, the reconciler knows the
-- message is lost (the broker gives it back only after its visibility timeout).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1] .. '|' .. ARGV[2], 'PX', math.max(ttl, tonumber(ARGV[3])))
return 1
