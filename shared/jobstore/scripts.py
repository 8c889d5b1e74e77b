"""The job store's Lua scripts: each change to a job is one atomic script run in Redis."""

# KEYS: job hash, its event stream, the active jobs, the predict answers stream, the predict
# texts pending, the predict texts answered. ARGV: events kept per stream, ttl of an ended job,
# new status ("" keeps it), answers kept, number of hash field pairs, the pairs, then (type, data)
# pairs of events. Returns the last event's id, or an error reply naming why nothing was written.
#
# A job that has ended is never touched again: its terminal event is its last. A predict job has
# no stream of its own: that it ended goes to the answers stream every gateway follows (its
# answer stays in its record), and it lets go of its texts; its record keeps the expiry its
# creation set.
EMIT = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return redis.error_reply('missing') end
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  return redis.error_reply('ended:' .. status)
end
local predict = redis.call('HGET', KEYS[1], 'type') == 'predict'
local new_status = ARGV[3]
local ending = new_status == 'succeeded' or new_status == 'failed' or new_status == 'cancelled'
local n_fields = tonumber(ARGV[5])
local i = 6
for _ = 1, n_fields do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
if new_status ~= '' then redis.call('HSET', KEYS[1], 'status', new_status) end
local last = ''
while i < #ARGV do
  local kind, data = ARGV[i], ARGV[i + 1]
  if not predict then
    last = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'type', kind, 'data', data)
  elseif ending and (kind == 'result' or kind == 'error') then
    local job = redis.call('HGET', KEYS[1], 'id')
    last = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'job', job, 'type', kind)
  end
  i = i + 2
end
if ending then
  if predict then
    local texts = tonumber(redis.call('HGET', KEYS[1], 'texts') or '0')
    redis.call('HDEL', KEYS[1], 'params', 'progress', 'task', 'heartbeat_at', 'running_call',
      'updated_at', 'deliveries:agnews.predict')
    redis.call('DECRBY', KEYS[5], texts)
    redis.call('INCRBY', KEYS[6], texts)
  else
    redis.call('EXPIRE', KEYS[1], ARGV[2])
    redis.call('EXPIRE', KEYS[2], ARGV[2])
  end
  redis.call('ZREM', KEYS[3], KEYS[1])
end
return last
"""

# KEYS: one job index. ARGV: job key prefix, type ("" any), status ("" any), limit, most entries
# to scan, owner ("" any). The newest matching jobs' hashes, flattened; entries of jobs that
# expired are dropped.
RECENT = """
local prefix, want_type, want_status, want_owner = ARGV[1], ARGV[2], ARGV[3], ARGV[6]
local limit, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local found, start, scanned = {}, 0, 0
while #found < limit and scanned < budget do
  local ids = redis.call('ZREVRANGE', KEYS[1], start, start + 4 * limit - 1)
  if #ids == 0 then break end
  scanned = scanned + #ids
  start = start + #ids
  for _, id in ipairs(ids) do
    local kind = redis.call('HMGET', prefix .. id, 'type', 'status', 'owner')
    if not kind[1] then
      redis.call('ZREM', KEYS[1], id)
      start = start - 1
    elseif (want_type == '' or kind[1] == want_type)
        and (want_status == '' or kind[2] == want_status)
        and (want_owner == '' or kind[3] == want_owner) and #found < limit then
      found[#found + 1] = redis.call('HGETALL', prefix .. id)
    end
  end
end
return found
"""

# KEYS: job hash. ARGV: "incr" or "set", field, value. A worker's bookkeeping on a job that has
# not ended: count a delivery (returns the count) or set a field such as the heartbeat (returns 0).
# Returns -1, writing nothing, for a job that has expired or ended: no hash is ever recreated.
TOUCH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  return -1
end
if ARGV[1] == 'incr' then return redis.call('HINCRBY', KEYS[1], ARGV[2], 1) end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 0
"""

# KEYS: one job index. ARGV: job key prefix, entries to check. The oldest entries whose jobs
# have expired are dropped; returns how many.
SWEEP = """
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local dropped = 0
for _, id in ipairs(ids) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then
    redis.call('ZREM', KEYS[1], id)
    dropped = dropped + 1
  end
end
return dropped
"""
