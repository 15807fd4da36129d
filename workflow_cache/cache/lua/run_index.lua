-- Prepended to every run script (runs.py). The last 11 KEYS are the run indexes of the
-- namespace: one sorted set per state (run_states.STATES order, scored by when the run
-- entered it), the due set (scored by when the reconciler must look at the run), the
-- started set (scored by when the run started) and the hash of each indexed run's task
-- (which per-task started set to leave once the run is forgotten).
-- ARGV[1] is always the run id, the member of those sets.
local STATE_NAMES = {'running', 'suspending', 'suspended', 'sleeping', 'waiting', 'resuming',
  'done', 'cancelled'}
local INDEX = {}
for i, name in ipairs(STATE_NAMES) do
  INDEX[name] = KEYS[#KEYS - #STATE_NAMES - 3 + i]
end
local DUE = KEYS[#KEYS - 2]
local STARTED = KEYS[#KEYS - 1]
local TASK_OF = KEYS[#KEYS]
local RUN_ID = ARGV[1]
local LIVE = {running = true, suspending = true, suspended = true, sleeping = true,
  waiting = true, resuming = true}
local PARKED = {suspended = true, waiting = true}
local LEASED = {running = true, suspending = true}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- the run enters state `to` (from `from`, or from nothing): record and indexes at once
local function enter(run, from, to, now)
  if from and INDEX[from] and from ~= to then
    redis.call('ZREM', INDEX[from], RUN_ID)
  end
  redis.call('ZADD', INDEX[to], now, RUN_ID)
  redis.call('HSET', run, 'state', to, 'since', now)
end

-- a time written once in the record (a timer's wake-up, an event's deadline): the first
-- ask sets it `ms` from now, every replay reads the same
local function once(run, field, now, ms)
  local at = tonumber(redis.call('HGET', run, field) or '0')
  if at == 0 then
    at = now + tonumber(ms)
    redis.call('HSET', run, field, at)
  end
  return at
end

local function holds(run, epoch)
  return redis.call('HGET', run, 'epoch') == epoch
end

-- a delivery takes the run (from run_begin, or from the arrival that completes its batch
-- for a committer that carries it on): a new epoch, which fences every earlier one, a
-- lease, the run running, and its history in the same reply
local function take(run, steps, given, pending, state, now, lease_ms, resumed)
  local replays = tonumber(redis.call('HGET', run, 'replays') or '0')
  if resumed then
    replays = redis.call('HINCRBY', run, 'replays', 1)
  end
  local epoch = redis.call('HINCRBY', run, 'epoch', 1)
  local lease = now + tonumber(lease_ms)
  redis.call('HSET', run, 'lease', lease, 'checks', 0)
  enter(run, state, 'running', now)
  redis.call('ZADD', DUE, lease, RUN_ID)
  for _, key in ipairs({run, steps, given, pending}) do
    redis.call('PERSIST', key)
  end
  return {'run', tonumber(redis.call('HGET', run, 'batch') or '0'), replays,
    redis.call('LRANGE', steps, 0, -1), redis.call('HGETALL', given), epoch}
end
