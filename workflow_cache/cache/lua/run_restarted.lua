-- KEYS: server (hash), indexes...   ARGV: the server's run_id (INFO), its uptime in ms
-- The reconciler's look at the server its runs live on. The same run_id as last time:
-- nothing happened ({0, restarted}). None known yet (the namespace's first look): it is
-- remembered, nothing can be said of what came before ({0, 0}). Another one: the server
-- restarted, and a step message it held on its way to a worker may be lost (popped by
-- a BRPOP whose reply died with the connection, or held unacknowledged by a consumer
-- that reconnected without it). The restart time is remembered and every suspended run
-- is due now, for the reconciler to look at their keys: {made due, restarted}. Costs
-- the number of suspended runs, once per restart.
local now = now_ms()
local known = redis.call('HGET', KEYS[1], 'run_id')
if known == ARGV[1] then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'restarted') or '0')}
end
if not known then
  redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'restarted', 0)
  return {0, 0}
end
-- INFO's uptime counts whole seconds between whole-second clocks: the start lies up to
-- a second after now - uptime. The latest it can be is kept, so that no run suspended
-- just before the restart is taken for one suspended after it.
local restarted = now - tonumber(ARGV[2]) + 1000
redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'restarted', restarted)
local ids = redis.call('ZRANGE', INDEX['suspended'], 0, -1)
for _, id in ipairs(ids) do
  redis.call('ZADD', DUE, now, id)
end
return {#ids, restarted}
