-- KEYS: done set, cancelled set, started set, task_of hash, then per run: its record and
--       its task's started set
-- ARGV: before_ms, run ids (one per record/task pair of KEYS)
-- Finished and cancelled runs whose retention ended leave every index. A run that
-- started again since (its record live once more) keeps its started entries.
local before = tonumber(ARGV[1])
local gone = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local run, task = KEYS[3 + 2 * (i - 1)], KEYS[4 + 2 * (i - 1)]
  local finished = false
  for s = 1, 2 do
    local score = redis.call('ZSCORE', KEYS[s], id)
    if score and tonumber(score) <= before then
      redis.call('ZREM', KEYS[s], id)
      finished = true
    end
  end
  if finished then
    gone = gone + 1
    local state = redis.call('HGET', run, 'state')
    if not state or state == 'done' or state == 'cancelled' then
      redis.call('ZREM', KEYS[3], id)
      redis.call('ZREM', task, id)
      redis.call('HDEL', KEYS[4], id)
    end
  end
end
return gone
