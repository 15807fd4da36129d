-- KEYS: queued, by   ARGV: task_id
-- The message of task_id died with the worker that received it: its queued marker goes
-- (only if it is still that message's), so the step can be sent again.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
