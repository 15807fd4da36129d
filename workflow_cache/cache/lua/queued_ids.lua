-- KEYS: the lists of one broker queue (one per priority step). ARGV: limit.
-- The task ids of the messages waiting in those lists (kombu's Redis transport stores a
-- message as JSON whose headers hold "id": "<task id>"), read only; {'?'} when the lists
-- hold more than limit messages in all (too many to read on one tick).
local limit = tonumber(ARGV[1])
local total = 0
for _, list in ipairs(KEYS) do
  total = total + redis.call('LLEN', list)
end
if total > limit then
  return {'?'}
end
local ids = {}
local chunk = 1000
for _, list in ipairs(KEYS) do
  local start = 0
  while true do
    local items = redis.call('LRANGE', list, start, start + chunk - 1)
    for _, item in ipairs(items) do
      local id = string.match(item, '"id": "([^"]+)"')
      if id then
        ids[#ids + 1] = id
      end
    end
    if #items < chunk then
      break
    end
    start = start + chunk
  end
end
return ids
