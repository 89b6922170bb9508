-- The circuit state machine of llm_circuit_breaker/_state.py, run atomically inside Redis.
-- Every admit / record / snapshot / control is one call of this script (one round trip).
--
-- KEYS[1] state hash, KEYS[2] in-flight permits (zset: permit -> admitted at),
-- KEYS[3] failure-rate window (hash: "<bucket>:c" / "<bucket>:f" -> count)
-- ARGV: op, now ("" = the server's TIME), ttl, failure_threshold, reset_timeout,
--       success_threshold, half_open_max_calls, half_open_probe_timeout,
--       slow_call_duration, failure_rate_threshold, window, minimum_calls ("" = off), then
--       record: permit, outcome, open_for ("" = none), why;  control: action.
-- Reply: {result, state, failure_count, success_count, opened_at, retry_after, repaired,
--         clean, old1, new1, reason1, old2, ...}; floats travel as strings.

local H, INFLIGHT, WIN = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
-- 'admit+write': an admission that also writes, sent while the store checks that Redis takes
-- writes again (reads alone succeed on a full or read-only Redis, where reports would fail)
local must_write = op == 'admit+write'
if must_write then op = 'admit' end
local now = tonumber(ARGV[2])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local ttl = tonumber(ARGV[3])
local threshold = tonumber(ARGV[4])
local reset_timeout = tonumber(ARGV[5])
local success_threshold = tonumber(ARGV[6])
local max_calls = tonumber(ARGV[7])
local probe_timeout = tonumber(ARGV[8])
local slow = tonumber(ARGV[9])
local rate = tonumber(ARGV[10])
local window = tonumber(ARGV[11])
local minimum = tonumber(ARGV[12])
local BUCKETS = 20

local transitions = {}
local repaired = 0

local function num(x) return string.format('%.17g', x) end

local function fresh()
  return {state = 'CLOSED', gen = 0, seq = 0, fc = 0, sc = 0, opened_at = nil, open_until = nil, held = false,
          new = true}
end

-- Every field read back is checked: garbage (gen=-1, 1e300, open_until=nan/inf/1e18 ...)
-- would otherwise refuse calls forever. A bad field makes the circuit a fresh CLOSED one.
local function counter(x)
  return x ~= nil and x == x and x >= 0 and x < 9007199254740992 and x == math.floor(x)
end

local YEAR = 366 * 24 * 3600
local function moment(x)  -- a time stamp within a year of now, finite
  return x ~= nil and x == x and x > now - 10 * YEAR and x < now + YEAR
end

local function load()
  for _, key in ipairs({H, INFLIGHT, WIN}) do
    local kind = redis.call('TYPE', key)['ok']
    local want = (key == INFLIGHT) and 'zset' or 'hash'
    if kind ~= 'none' and kind ~= want then
      redis.call('DEL', H, INFLIGHT, WIN)
      repaired = 1
      return fresh()
    end
  end
  local v = redis.call('HMGET', H, 'state', 'gen', 'seq', 'fc', 'sc', 'opened_at', 'open_until', 'held')
  if not v[1] then return fresh() end
  local s = {state = v[1], gen = tonumber(v[2]), seq = tonumber(v[3]), fc = tonumber(v[4]),
             sc = tonumber(v[5]), opened_at = tonumber(v[6] or ''), open_until = tonumber(v[7] or ''),
             held = v[8] == '1'}
  local known = s.state == 'CLOSED' or s.state == 'OPEN' or s.state == 'HALF_OPEN'
  if not known or not counter(s.gen) or not counter(s.seq) or not counter(s.fc)
      or not counter(s.sc) or s.gen > s.seq or (s.opened_at and not moment(s.opened_at))
      or (s.state == 'OPEN' and not (s.open_until and moment(s.open_until))) then
    redis.call('DEL', H, INFLIGHT, WIN)
    repaired = 1
    return fresh()
  end
  return s
end

local function signature(s)
  return table.concat({s.state, s.gen, s.seq, s.fc, s.sc, tostring(s.opened_at), tostring(s.open_until),
                       tostring(s.held)}, '|')
end

local function save(s)
  redis.call('HSET', H, 'state', s.state, 'gen', s.gen, 'seq', s.seq, 'fc', s.fc, 'sc', s.sc,
             'opened_at', s.opened_at and num(s.opened_at) or '',
             'open_until', s.open_until and num(s.open_until) or '', 'held', s.held and '1' or '0')
  for _, key in ipairs({H, INFLIGHT, WIN}) do redis.call('EXPIRE', key, ttl) end
end

local function move(s, new, reason)
  table.insert(transitions, s.state)
  table.insert(transitions, new)
  table.insert(transitions, reason)
  s.state = new
  s.seq = s.seq + 1
  s.gen = s.seq
  redis.call('DEL', INFLIGHT, WIN)
  s.sc = 0
  s.held = false
  if new ~= 'OPEN' then
    s.fc = 0
    s.opened_at = nil
    s.open_until = nil
  end
end

local function open(s, duration, reason)
  move(s, 'OPEN', reason)
  s.opened_at = now
  s.open_until = now + duration
end

local function advance(s)
  if s.state == 'OPEN' and not s.held and now >= s.open_until then
    move(s, 'HALF_OPEN', 'reset timeout elapsed')
  end
end

local function retry_after(s)
  advance(s)
  if s.state == 'OPEN' then
    if s.held then return nil end
    return math.max(0, s.open_until - now)
  end
  if s.state == 'HALF_OPEN' and redis.call('ZCARD', INFLIGHT) >= max_calls then
    local oldest = redis.call('ZRANGE', INFLIGHT, 0, 0, 'WITHSCORES')
    return math.max(0, tonumber(oldest[2]) + probe_timeout - now)
  end
  return 0
end

-- the failure-rate window: calls and failures per bucket of window/BUCKETS seconds
local function window_totals(index)
  local calls, failures = 0, 0
  local fields = redis.call('HGETALL', WIN)
  for i = 1, #fields, 2 do
    local bucket, kind = string.match(fields[i], '^(-?%d+):(%a)$')
    bucket = tonumber(bucket)
    if bucket == nil or bucket <= index - BUCKETS then
      redis.call('HDEL', WIN, fields[i])
    elseif kind == 'c' then
      calls = calls + tonumber(fields[i + 1])
    else
      failures = failures + tonumber(fields[i + 1])
    end
  end
  return calls, failures
end

local function record_closed(s, ok, open_for, why)
  local calls, failures = 0, 0
  if rate then
    local index = math.floor(now / (window / BUCKETS))
    redis.call('HINCRBY', WIN, index .. ':c', 1)
    if not ok then redis.call('HINCRBY', WIN, index .. ':f', 1) end
    calls, failures = window_totals(index)
  end
  if ok then
    s.fc = 0
    return
  end
  s.fc = s.fc + 1
  if open_for then
    if why == '' then why = string.format('server asked to wait %gs', open_for) end
    open(s, open_for, why)
  elseif s.fc >= threshold then
    open(s, reset_timeout, s.fc .. ' consecutive failures')
  elseif rate and calls >= minimum and failures / calls >= rate then
    open(s, reset_timeout, string.format('failure rate %d%% over %d calls in %gs',
         math.floor(failures / calls * 100 + 0.5), calls, window))
  end
end

local function record_probe(s, ok, open_for, why)
  if ok then
    s.sc = s.sc + 1
    if s.sc >= success_threshold then move(s, 'CLOSED', s.sc .. ' probe successes') end
    return
  end
  local reason = 'probe failed'
  if why ~= '' then reason = reason .. ': ' .. why end
  open(s, math.max(reset_timeout, open_for or 0), reason)
end

local s = load()
local loaded = signature(s)
local result = 0

if op == 'admit' then
  advance(s)
  if s.state == 'CLOSED' then
    if slow then
      s.seq = s.seq + 1
      redis.call('ZADD', INFLIGHT, now, s.seq)
      result = s.seq
    else
      result = s.gen
    end
  elseif s.state == 'OPEN' then
    result = -1
  else
    -- leases run out after probe_timeout; one stamped in the future is garbage
    redis.call('ZREMRANGEBYSCORE', INFLIGHT, '-inf', now - probe_timeout)
    redis.call('ZREMRANGEBYSCORE', INFLIGHT, '(' .. num(now + 1), '+inf')
    if redis.call('ZCARD', INFLIGHT) >= max_calls then
      result = -1
    else
      s.seq = s.seq + 1
      redis.call('ZADD', INFLIGHT, now, s.seq)
      result = s.seq
    end
  end
elseif op == 'record' then
  local permit = tonumber(ARGV[13])
  local outcome = ARGV[14]
  local open_for = tonumber(ARGV[15])
  local why = ARGV[16]
  local started = tonumber(redis.call('ZSCORE', INFLIGHT, permit) or '')
  if started then redis.call('ZREM', INFLIGHT, permit) end
  if started or (s.state == 'CLOSED' and permit == s.gen) then
    if outcome == 'success' and slow and started and now - started > slow then
      outcome = 'failure'
      why = string.format('slow call (%.3fs > %gs)', now - started, slow)
    end
    if outcome ~= 'ignored' and outcome ~= 'throttled' then
      if s.state == 'HALF_OPEN' then
        record_probe(s, outcome == 'success', open_for, why)
      else
        record_closed(s, outcome == 'success', open_for, why)
      end
    end
  end
  result = outcome
elseif op == 'control' then
  local action = ARGV[13]
  if action == 'force_open' then
    open(s, 0, 'forced open')
    s.held = true
  else
    if s.state ~= 'CLOSED' then move(s, 'CLOSED', action == 'reset' and 'reset' or 'forced closed') end
    s.fc = 0
    redis.call('DEL', WIN)
  end
elseif op ~= 'snapshot' then
  return redis.error_reply('unknown op ' .. tostring(op))
end

local wait = retry_after(s)
-- Reports and controls always write (refreshing the TTLs); an admission or a snapshot writes
-- only what it changed (and a circuit's first appearance, so that `status` lists it): admitting
-- into a quiet CLOSED circuit is read-only.
if must_write or op == 'record' or op == 'control' or signature(s) ~= loaded or s.new then
  save(s)
end
local clean = (s.state == 'CLOSED' and s.fc == 0 and not slow and not rate) and 1 or 0
local reply = {result, s.state, s.fc, s.sc, s.opened_at and num(s.opened_at) or '',
               wait and num(wait) or '', repaired, clean}
for _, item in ipairs(transitions) do table.insert(reply, item) end
return reply
