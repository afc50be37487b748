"""Lua scripts for every job state change: atomic with its event, guarded by state and fencing token."""

# A job counts against its owner's quota from SUBMIT until its terminal state: the job hash names the owner's
# active set ('active'); every terminal transition takes the job out of it (in the same atomic step).
RELEASE_ACTIVE = """
local function release_active(job_key)
  local active = redis.call('HGET', job_key, 'active')
  if active then redis.call('SREM', active, redis.call('HGET', job_key, 'id') or '') end
end
"""

# KEYS: idem, job, request, queue(zset), stream, events, seq, owner_jobs, idem payload hash, owner active set
# ARGV: job_id, max_queue, request_bytes, idem_ttl, now, use_idem(0/1), enqueue(0/1), to_stream(0/1),
#       payload_hash, max_active (0 = none), job key prefix, field, value, ...
# -> {1, job, position} created | {0, job, 0} the same request again | {-1, '', depth} queue full |
#    {-2, '', active} the owner's quota is full | {-3, job, 0} request_id already used with another payload
SUBMIT = """
if ARGV[6] == '1' then
  local existing = redis.call('GET', KEYS[1])
  if existing then
    local hash = redis.call('GET', KEYS[9])
    if hash and hash ~= '' and ARGV[9] ~= '' and hash ~= ARGV[9] then return {-3, existing, 0} end
    return {0, existing, 0}
  end
end
local max_active = tonumber(ARGV[10])
if max_active > 0 then
  local active = redis.call('SCARD', KEYS[10])
  if active >= max_active then
    -- Self-healing: drop members whose job is gone or already terminal (a flushed or restored Redis).
    for _, id in ipairs(redis.call('SMEMBERS', KEYS[10])) do
      local st = redis.call('HGET', ARGV[11] .. id, 'state')
      if st ~= 'QUEUED' and st ~= 'RUNNING' then redis.call('SREM', KEYS[10], id) end
    end
    active = redis.call('SCARD', KEYS[10])
    if active >= max_active then return {-2, '', active} end
  end
end
local enqueue = ARGV[7] == '1'
if enqueue then
  local depth = redis.call('ZCARD', KEYS[4])
  if tonumber(ARGV[2]) > 0 and depth >= tonumber(ARGV[2]) then return {-1, '', depth} end
end
local seq = redis.call('INCR', KEYS[7])
local fields = {}
for i = 12, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], 'seq', seq, 'active', KEYS[10], unpack(fields))
redis.call('SADD', KEYS[10], ARGV[1])
redis.call('SET', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[8], ARGV[5], ARGV[1])
local pos = 0
if enqueue then
  redis.call('ZADD', KEYS[4], seq, ARGV[1])
  if ARGV[8] == '1' then redis.call('XADD', KEYS[5], '*', 'job', ARGV[1]) end
  pos = redis.call('ZRANK', KEYS[4], ARGV[1]) + 1
end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', 10000, '*', 'kind', 'queued', 'state', 'QUEUED', 'position', pos,
           'time', ARGV[5])
if ARGV[6] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
  redis.call('SET', KEYS[9], ARGV[9], 'EX', ARGV[4])
end
return {1, ARGV[1], pos}
"""

# Epoch seconds -> "YYYY-MM-DDTHH:MM:SS.mmmZ" (Redis's Lua has no os.date; civil-from-days arithmetic).
ISO_UTC = """
local function iso(t)
  t = tonumber(t)
  local ms = math.floor((t % 1) * 1000)
  local s = math.floor(t)
  local days, rem = math.floor(s / 86400), s % 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, m, d, math.floor(rem / 3600),
                       math.floor(rem % 3600 / 60), rem % 60, ms)
end
"""

# KEYS: job, queue(zset), events, dead
# ARGV: job_id, token, now, max_attempts, ttl
# -> {outcome, attempts}; outcome: RUNNING (run it), EXPIRED / DEAD (made terminal here), a terminal state
#    (nothing to do), or MISSING.
CLAIM = RELEASE_ACTIVE + ISO_UTC + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'MISSING', 0} end
if state ~= 'QUEUED' and state ~= 'RUNNING' then return {state, 0} end
redis.call('ZREM', KEYS[2], ARGV[1])
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
local function finish(st, code, reason)
  redis.call('HSET', KEYS[1], 'state', st, 'error_code', code, 'reason', reason, 'finished_at', ARGV[3])
  redis.call('HDEL', KEYS[1], 'worker')
  release_active(KEYS[1])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'kind', 'terminal', 'state', st, 'time', ARGV[3])
  for _, k in ipairs({KEYS[1], KEYS[3]}) do redis.call('EXPIRE', k, ARGV[5]) end
end
local deadline = tonumber(redis.call('HGET', KEYS[1], 'deadline') or '0')
if deadline > 0 and tonumber(ARGV[3]) > deadline then
  -- Honest: "not run" only when no attempt ever started; otherwise say which attempt the deadline cut short.
  local started = redis.call('HGET', KEYS[1], 'attempt_started_at')
  if attempts == 0 or not started then
    finish('FAILED', 'DEADLINE_EXCEEDED', 'its deadline passed before a worker could run it; it was not run')
  else
    finish('FAILED', 'DEADLINE_EXCEEDED', 'attempt ' .. attempts .. ' started at ' .. iso(started) ..
           '; its deadline (' .. iso(deadline) .. ') passed during the run, before it could finish')
  end
  return {'EXPIRED', attempts}
end
-- attempts counts the times a worker took the job; the next take would be one too many: dead letter.
if attempts >= tonumber(ARGV[4]) then
  local code = redis.call('HGET', KEYS[1], 'last_error_code') or 'INTERNAL'
  local last = redis.call('HGET', KEYS[1], 'last_error') or 'its worker stopped answering'
  finish('FAILED', code, 'failed ' .. attempts .. ' deliveries; last error: ' .. last)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 10000, '*', 'job', ARGV[1], 'time', ARGV[3])
  return {'DEAD', attempts}
end
attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', 'RUNNING', 'worker', ARGV[2], 'attempt_started_at', ARGV[3])
if redis.call('HEXISTS', KEYS[1], 'started_at') == 0 then redis.call('HSET', KEYS[1], 'started_at', ARGV[3]) end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'kind', 'running', 'state', 'RUNNING', 'time', ARGV[3],
           'message', 'attempt ' .. attempts)
return {'RUNNING', attempts}
"""

# KEYS: job, events, request
# ARGV: token, state, now, error_code, reason, ttl, field, value, ...
# -> 1 when this worker's result was recorded, 0 when the job is no longer this worker's (fencing).
FINISH = RELEASE_ACTIVE + """
if redis.call('HGET', KEYS[1], 'state') ~= 'RUNNING' or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then
  return 0
end
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'finished_at', ARGV[3], 'error_code', ARGV[4], 'reason', ARGV[5])
if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
redis.call('HDEL', KEYS[1], 'worker')
release_active(KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, '*', 'kind', 'terminal', 'state', ARGV[2], 'time', ARGV[3])
for _, k in ipairs(KEYS) do redis.call('EXPIRE', k, ARGV[6]) end
return 1
"""

# KEYS: job, queue(zset), events, request
# ARGV: job_id, now, ttl -> the state after the call (CANCELLED at once when queued; RUNNING = requested)
CANCEL = RELEASE_ACTIVE + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'MISSING' end
if state == 'QUEUED' then
  redis.call('HSET', KEYS[1], 'state', 'CANCELLED', 'error_code', 'CANCELLED', 'reason', 'cancelled while queued',
             'finished_at', ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[1])
  release_active(KEYS[1])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'kind', 'terminal', 'state', 'CANCELLED', 'time', ARGV[2])
  for _, k in ipairs({KEYS[1], KEYS[3], KEYS[4]}) do redis.call('EXPIRE', k, ARGV[3]) end
  return 'CANCELLED'
end
if state == 'RUNNING' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  return 'RUNNING'
end
return state
"""

# KEYS: job, events; ARGV: token, now, field, value, ... -> 1 if still this worker's job (progress recorded)
PROGRESS = """
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then return 0 end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, '*', unpack(fields))
return 1
"""

# KEYS: job; ARGV: token, field, value, ... -> 1 if still this worker's job (fields set)
UPDATE = """
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then return 0 end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
return 1
"""

# KEYS: job, events; ARGV: token, field, value, ... (the event) -> 1 if paused. A RUNNING job hands itself
# back (its worker shuts down at a checkpoint): the attempt is given back and counted as a pause, with its
# event, in one step.
PAUSE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'RUNNING' or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HINCRBY', KEYS[1], 'pauses', 1)
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, '*', unpack(fields))
return 1
"""
