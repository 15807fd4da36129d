-- KEYS: queued   ARGV: task_id, queued_ttl_ms
-- The message of task_id was handed to the broker: its marker, set short-lived by
-- enqueue, now lasts as long as a message may wait in its queue. A marker that is not
-- this task's any more (expired, taken by a worker) is left alone.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
