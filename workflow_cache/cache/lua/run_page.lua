-- KEYS: run records   ARGV: the largest outcome read whole (bytes)
-- A page of runs in one call (read only): per record, its state, since, started, batch,
-- replays, task, and the head of its outcome (enough for its status). An outcome larger
-- than ARGV[1] is not copied: its length alone comes back, and the caller reads the
-- head of the run's stored outcome instead. A record gone meanwhile is {}; a key of
-- another type where a record should be is {'wrongtype'}.
local limit = tonumber(ARGV[1])
local rows = {}
for i, run in ipairs(KEYS) do
  local kind = redis.call('TYPE', run)['ok']
  if kind == 'hash' then
    local row = redis.call('HMGET', run, 'state', 'since', 'started', 'batch', 'replays',
      'task')
    local size = redis.call('HSTRLEN', run, 'outcome')
    local head = ''
    if size > 0 and size <= limit then
      head = string.sub(redis.call('HGET', run, 'outcome'), 1, 256)
    end
    row[7] = head
    row[8] = size
    rows[i] = row
  elseif kind == 'none' then
    rows[i] = {}
  else
    rows[i] = {'wrongtype'}
  end
end
return rows
