-- KEYS: handoff   The workflows a commit handed over, taken by exactly one caller.
local members = redis.call('SMEMBERS', KEYS[1])
if #members > 0 then
  redis.call('DEL', KEYS[1])
end
return members
